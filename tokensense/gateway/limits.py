"""Rate-limit and budget counters: in-process for one instance, Redis for several.

Both stores make the same decisions:

- Rate limits are sliding one-minute windows of (request, tokens) entries. A
  request is admitted if the window has fewer than RPM requests and its
  estimated tokens fit under TPM; `retry_after` is the time until the oldest
  entries leave the window and make room. When the call ends its estimated
  tokens are replaced by the real count.
- Budgets hold, per key and period window, what was spent (settled) and what
  the calls in flight have reserved (the largest cost each can have, see
  `tokensense/gateway/reservation.py`). A call is admitted only while
  spent + reserved + its own reservation fits in the budget; when it ends the
  reservation is released and the real cost added. So parallel calls cannot
  overspend when the provider honours the output cap. A refused call learns
  why: the budget is spent, it is held by calls in flight (retry soon), or this
  call's largest cost does not fit in what is left.

`ResilientCounters` wraps the Redis store for Redis outages: short timeouts, then
either in-process counters (limits per instance, one warning a minute) or a 503
(`TOKENSENSE_LIMITS_ON_OUTAGE=local|closed`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

WINDOW = 60.0


@dataclass(slots=True)
class RateDecision:
    allowed: bool
    rpm: int | None
    tpm: int | None
    remaining_requests: int | None
    remaining_tokens: int | None
    reset_requests: float  # seconds until the window frees a request slot
    reset_tokens: float
    retry_after: float | None = None  # set when not allowed
    limited_by: str | None = None  # "requests" or "tokens" when not allowed

    def headers(self) -> dict[str, str]:
        """OpenAI-style `x-ratelimit-*` headers."""
        out: dict[str, str] = {}
        if self.rpm is not None:
            out["x-ratelimit-limit-requests"] = str(self.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(self.remaining_requests or 0, 0))
            out["x-ratelimit-reset-requests"] = format_duration(self.reset_requests)
        if self.tpm is not None:
            out["x-ratelimit-limit-tokens"] = str(self.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(self.remaining_tokens or 0, 0))
            out["x-ratelimit-reset-tokens"] = format_duration(self.reset_tokens)
        if self.retry_after is not None:
            out["retry-after"] = str(max(1, int(-(-self.retry_after // 1))))
        return out


@dataclass(slots=True)
class BudgetDecision:
    allowed: bool
    spent: float  # settled spend in the window
    reserved: float  # held by calls in flight (this one included when allowed)
    amount: float = 0.0  # this call's reservation
    reason: str | None = None  # when refused: "spent", "reserved" (by calls in flight) or "insufficient"


def budget_decision(budget: float, spent: float, reserved: float, amount: float) -> BudgetDecision:
    """Admit a reservation of `amount` only if spent + reserved + amount fits in `budget` (never once spent)."""
    if spent < budget and spent + reserved + amount <= budget:
        return BudgetDecision(True, spent, reserved + amount, amount)
    if spent >= budget:
        reason = "spent"
    elif spent + amount <= budget:
        reason = "reserved"  # fits once the calls in flight settle
    else:
        reason = "insufficient"
    return BudgetDecision(False, spent, reserved, amount, reason)


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `250ms`."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    minutes, secs = divmod(int(-(-seconds // 1)), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def decide(entries: list[tuple[float, int]], now: float, rpm: int | None, tpm: int | None,
           tokens: int) -> RateDecision:
    """The rate decision for a window of (time, tokens) entries (oldest first, all within the window)."""
    count = len(entries)
    used = sum(t for _, t in entries)
    reset_requests = (entries[0][0] + WINDOW - now) if entries else 0.0
    over_requests = rpm is not None and count >= rpm
    over_tokens = tpm is not None and used > 0 and used + tokens > tpm
    reset_tokens = 0.0
    if tpm is not None and entries:
        freed = 0
        for ts, t in entries:
            freed += t
            reset_tokens = ts + WINDOW - now
            if used - freed + tokens <= tpm:
                break
    allowed = not (over_requests or over_tokens)
    retry_after = None
    if not allowed:
        waits = [0.001]
        if over_requests and rpm is not None:
            # The slot frees when enough of the oldest entries leave: count - rpm + 1 of them.
            waits.append(entries[count - rpm][0] + WINDOW - now if rpm > 0 else WINDOW)
        if over_tokens:
            waits.append(reset_tokens)
        retry_after = max(waits)
    return RateDecision(
        allowed=allowed, rpm=rpm, tpm=tpm,
        remaining_requests=None if rpm is None else rpm - count - (1 if allowed else 0),
        remaining_tokens=None if tpm is None else tpm - used - (tokens if allowed else 0),
        reset_requests=max(reset_requests, 0.0), reset_tokens=max(reset_tokens, 0.0), retry_after=retry_after,
        limited_by="requests" if over_requests else "tokens" if over_tokens else None,
    )


class CounterStore(Protocol):
    async def acquire_rate(self, key_id: str, request_id: str, rpm: int | None, tpm: int | None,
                           tokens: int) -> RateDecision: ...

    async def settle_tokens(self, key_id: str, request_id: str, tokens: int) -> None: ...

    async def reserve_budget(self, key_id: str, window: str, budget: float, amount: float,
                             load_spent: Callable[[], float], ttl: float | None) -> BudgetDecision: ...

    async def settle_budget(self, key_id: str, window: str, reserved: float, actual: float) -> None: ...

    async def close(self) -> None: ...


class MemoryCounters:
    """Counters in this process. Decisions run on the event loop without awaiting, so they are atomic."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._windows: dict[str, list[list]] = {}  # key_id -> [[ts, tokens, request_id], ...]
        self._budgets: dict[tuple[str, str], list[float]] = {}  # (key, window) -> [spent, reserved]
        self._init_locks: dict[tuple[str, str], asyncio.Lock] = {}

    def _window(self, key_id: str, now: float) -> list[list]:
        entries = self._windows.setdefault(key_id, [])
        cut = 0
        while cut < len(entries) and entries[cut][0] <= now - WINDOW:
            cut += 1
        if cut:
            del entries[:cut]
        return entries

    async def acquire_rate(self, key_id: str, request_id: str, rpm: int | None, tpm: int | None,
                           tokens: int) -> RateDecision:
        now = self.clock()
        entries = self._window(key_id, now)
        decision = decide([(e[0], e[1]) for e in entries], now, rpm, tpm, tokens)
        if decision.allowed:
            entries.append([now, tokens, request_id])
        return decision

    async def settle_tokens(self, key_id: str, request_id: str, tokens: int) -> None:
        for entry in self._windows.get(key_id, ()):
            if entry[2] == request_id:
                entry[1] = tokens
                return

    async def reserve_budget(self, key_id: str, window: str, budget: float, amount: float,
                             load_spent: Callable[[], float], ttl: float | None) -> BudgetDecision:
        slot = (key_id, window)
        if slot not in self._budgets:
            lock = self._init_locks.setdefault(slot, asyncio.Lock())
            async with lock:
                if slot not in self._budgets:
                    spent = await asyncio.to_thread(load_spent)
                    # Drop the windows of earlier periods of this key.
                    for old in [s for s in self._budgets if s[0] == key_id]:
                        self._budgets.pop(old, None)
                    self._budgets[slot] = [spent, 0.0]
        counter = self._budgets[slot]
        decision = budget_decision(budget, counter[0], counter[1], amount)
        if decision.allowed:
            counter[1] += amount
        return decision

    async def settle_budget(self, key_id: str, window: str, reserved: float, actual: float) -> None:
        counter = self._budgets.get((key_id, window))
        if counter is not None:
            counter[1] = max(counter[1] - reserved, 0.0)
            counter[0] += actual

    async def close(self) -> None:
        return None


_RATE_LUA = """
local zkey, hkey = KEYS[1], KEYS[2]
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local rpm, tpm, tokens, rid = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - window)
for _, m in ipairs(old) do redis.call('HDEL', hkey, m) end
redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now - window)
local live = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  local t = redis.call('HGET', hkey, live[i]) or '0'
  table.insert(out, live[i + 1])
  table.insert(out, t)
end
local count, used = #live / 2, 0
for i = 2, #out, 2 do used = used + tonumber(out[i]) end
local allowed = 1
if rpm >= 0 and count >= rpm then allowed = 0 end
if tpm >= 0 and used > 0 and used + tokens > tpm then allowed = 0 end
if allowed == 1 then
  redis.call('ZADD', zkey, now, rid)
  redis.call('HSET', hkey, rid, tokens)
end
redis.call('PEXPIRE', zkey, math.floor(window * 1000) + 1000)
redis.call('PEXPIRE', hkey, math.floor(window * 1000) + 1000)
return out
"""

_RESERVE_LUA = """
local key = KEYS[1]
local budget, amount, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
local reserved = tonumber(redis.call('HGET', key, 'reserved') or '0')
if reserved < 0 then reserved = 0 end
if spent >= budget or spent + reserved + amount > budget then
  return {0, tostring(spent), tostring(reserved)}
end
reserved = tonumber(redis.call('HINCRBYFLOAT', key, 'reserved', amount))
if ttl > 0 then redis.call('EXPIRE', key, ttl) end
return {1, tostring(spent), tostring(reserved)}
"""

_SETTLE_LUA = """
local key = KEYS[1]
local reserved, actual = tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('EXISTS', key) == 0 then return 0 end
local left = tonumber(redis.call('HINCRBYFLOAT', key, 'reserved', -reserved))
if left < 0 then redis.call('HSET', key, 'reserved', 0) end
redis.call('HINCRBYFLOAT', key, 'spent', actual)
return 1
"""


class RedisCounters:
    """Counters in Redis, shared by every instance; each decision is one atomic Lua script."""

    def __init__(self, url: str, prefix: str = "tokensense", timeout: float | None = None) -> None:
        import redis.asyncio as redis

        options: dict = {}
        if timeout is not None:
            # A frozen Redis costs a call at most `timeout` (no retry: the caller falls back).
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
        self.redis = redis.Redis.from_url(url, decode_responses=True, **options)
        self.prefix = prefix
        self._rate = self.redis.register_script(_RATE_LUA)
        self._reserve = self.redis.register_script(_RESERVE_LUA)
        self._settle = self.redis.register_script(_SETTLE_LUA)
        self._init_locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def acquire_rate(self, key_id: str, request_id: str, rpm: int | None, tpm: int | None,
                           tokens: int) -> RateDecision:
        now = time.time()
        raw = await self._rate(keys=[f"{self.prefix}:rl:{key_id}", f"{self.prefix}:rlt:{key_id}"],
                               args=[now, WINDOW, -1 if rpm is None else rpm, -1 if tpm is None else tpm,
                                     tokens, request_id])
        entries = [(float(raw[i]), int(float(raw[i + 1]))) for i in range(0, len(raw), 2)]
        return decide(entries, now, rpm, tpm, tokens)

    async def settle_tokens(self, key_id: str, request_id: str, tokens: int) -> None:
        hkey = f"{self.prefix}:rlt:{key_id}"
        if await self.redis.hexists(hkey, request_id):
            await self.redis.hset(hkey, request_id, tokens)

    async def reserve_budget(self, key_id: str, window: str, budget: float, amount: float,
                             load_spent: Callable[[], float], ttl: float | None) -> BudgetDecision:
        key = f"{self.prefix}:budget:{key_id}:{window}"
        slot = (key_id, window)
        if not await self.redis.hexists(key, "spent"):
            lock = self._init_locks.setdefault(slot, asyncio.Lock())
            async with lock:
                if not await self.redis.hexists(key, "spent"):
                    spent = await asyncio.to_thread(load_spent)
                    # HSETNX: if another instance initialised it meanwhile, its value stands.
                    await self.redis.hsetnx(key, "spent", repr(spent))
        allowed, spent, reserved = await self._reserve(keys=[key], args=[budget, amount, int(ttl or 0)])
        if int(allowed):
            return BudgetDecision(True, float(spent), float(reserved), amount)
        # Refused: the same reasoning as the script, on the numbers it saw.
        return budget_decision(budget, float(spent), float(reserved), amount)

    async def settle_budget(self, key_id: str, window: str, reserved: float, actual: float) -> None:
        await self._settle(keys=[f"{self.prefix}:budget:{key_id}:{window}"], args=[reserved, actual])

    async def close(self) -> None:
        await self.redis.aclose()


class CountersUnavailable(RuntimeError):
    """Redis is unreachable and TOKENSENSE_LIMITS_ON_OUTAGE=closed: the call is refused with a 503."""


class ResilientCounters:
    """A shared store (Redis) with a policy for its outages.

    Each call to the shared store is bounded by its client's short timeouts. When
    it fails, the store is left alone for `retry_after` seconds (so a frozen Redis
    delays one call, not every call), and meanwhile:
    - `local`: decisions come from in-process counters (`MemoryCounters`), so
      limits hold per instance; one warning a minute says so;
    - `closed`: `CountersUnavailable` is raised, and the call is refused (503).
    What was counted locally is settled locally; settled spend is also added to
    the shared store once it answers again (best effort).
    """

    def __init__(self, shared: CounterStore, *, on_outage: str = "local", retry_after: float = 5.0,
                 warn_every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if on_outage not in ("local", "closed"):
            raise ValueError(f"TOKENSENSE_LIMITS_ON_OUTAGE must be local or closed, not {on_outage!r}")
        self.shared = shared
        self.local = MemoryCounters()
        self.on_outage = on_outage
        self.retry_after = retry_after
        self.warn_every = warn_every
        self.clock = clock
        self._down_until = 0.0
        self._last_warning = -float("inf")
        self.outages = 0  # calls decided without the shared store
        self._local_requests: set[str] = set()
        self._local_reservations: dict[tuple[str, str], list[float]] = {}
        self._postponed: list[tuple[str, str, float, float]] = []  # Redis settles that waited for it

    @property
    def shared_down(self) -> bool:
        return self.clock() < self._down_until

    def status(self) -> str:
        if not self.shared_down:
            return "ok"
        return "local (Redis unreachable)" if self.on_outage == "local" else "refusing (Redis unreachable)"

    def _failed(self, error: BaseException | None) -> MemoryCounters:
        now = self.clock()
        if error is not None:
            self._down_until = now + self.retry_after
        self.outages += 1
        if now - self._last_warning >= self.warn_every:
            self._last_warning = now
            what = "per-instance counters" if self.on_outage == "local" else "refusing calls with 503"
            log.warning("rate-limit and budget counters unavailable (%s): %s until it answers "
                        "(TOKENSENSE_LIMITS_ON_OUTAGE=%s; %d calls so far)",
                        type(error).__name__ if error else "Redis down", what, self.on_outage, self.outages)
        if self.on_outage == "closed":
            raise CountersUnavailable("the rate-limit and budget counters are unavailable")
        return self.local

    async def acquire_rate(self, key_id: str, request_id: str, rpm: int | None, tpm: int | None,
                           tokens: int) -> RateDecision:
        if not self.shared_down:
            try:
                return await self.shared.acquire_rate(key_id, request_id, rpm, tpm, tokens)
            except Exception as e:
                local = self._failed(e)
        else:
            local = self._failed(None)
        self._local_requests.add(request_id)
        return await local.acquire_rate(key_id, request_id, rpm, tpm, tokens)

    async def settle_tokens(self, key_id: str, request_id: str, tokens: int) -> None:
        if request_id in self._local_requests:
            self._local_requests.discard(request_id)
            await self.local.settle_tokens(key_id, request_id, tokens)
            return
        if not self.shared_down:
            try:
                await self.shared.settle_tokens(key_id, request_id, tokens)
            except Exception as e:  # the window forgets the estimate within a minute anyway
                self._failed_quietly(e)

    async def reserve_budget(self, key_id: str, window: str, budget: float, amount: float,
                             load_spent: Callable[[], float], ttl: float | None) -> BudgetDecision:
        if not self.shared_down:
            try:
                if self._postponed:
                    await self._settle_postponed()
                return await self.shared.reserve_budget(key_id, window, budget, amount, load_spent, ttl)
            except Exception as e:
                local = self._failed(e)
        else:
            local = self._failed(None)
        decision = await local.reserve_budget(key_id, window, budget, amount, load_spent, ttl)
        if decision.allowed:
            self._local_reservations.setdefault((key_id, window), []).append(amount)
        return decision

    async def settle_budget(self, key_id: str, window: str, reserved: float, actual: float) -> None:
        held = self._local_reservations.get((key_id, window))
        if held and reserved in held:
            held.remove(reserved)
            await self.local.settle_budget(key_id, window, reserved, actual)
            if not self.shared_down:
                try:  # the spend counts in the shared window too; its reservation was never there
                    await self.shared.settle_budget(key_id, window, 0.0, actual)
                except Exception:
                    pass
            return
        if not self.shared_down:
            try:
                await self.shared.settle_budget(key_id, window, reserved, actual)
                await self._settle_postponed()
                return
            except Exception as e:
                self._failed_quietly(e)
        # Reserved in Redis, which does not answer now: settled there once it does, or
        # the reservation would hold the budget until the window expires.
        if len(self._postponed) < 100_000:
            self._postponed.append((key_id, window, reserved, actual))

    def _failed_quietly(self, error: BaseException) -> None:
        self._down_until = self.clock() + self.retry_after

    async def _settle_postponed(self) -> None:
        while self._postponed and not self.shared_down:
            key_id, window, reserved, actual = self._postponed[0]
            try:
                await self.shared.settle_budget(key_id, window, reserved, actual)
            except Exception as e:
                self._failed_quietly(e)
                return
            self._postponed.pop(0)

    async def close(self) -> None:
        await self.shared.close()


def make_counters(redis_url: str | None, settings: object | None = None) -> CounterStore:
    """Redis (with its outage policy) when configured; else the supervisor's shared counters in a worker of
    `serve --workers N`; else this process's."""
    if redis_url:
        shared = RedisCounters(redis_url, timeout=getattr(settings, "redis_timeout", None))
        return ResilientCounters(shared, on_outage=getattr(settings, "limits_on_outage", "local"))
    from tokensense.gateway.shared_counters import SharedCounters, hub_socket_from_env

    hub = hub_socket_from_env()
    return SharedCounters(hub) if hub else MemoryCounters()

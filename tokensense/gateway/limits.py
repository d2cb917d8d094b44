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

Budget counters start from the settled spend (`load_spent`: the database's sum
plus the records not written yet, `Runtime.spent_since`) whenever they start: a
window's first use in a process, every fall back to local counters, every
return of Redis (and a Redis restarted empty or from an old snapshot). Rate
windows (RPM/TPM) are not seeded: they last a minute and start afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

WINDOW = 60.0
IDLE_FORGET = 3600.0  # seconds: an in-process budget window unused this long is dropped (and seeded if used again)
IDLE_SWEEP_MIN = 10_000  # windows held before the first look for idle ones (then twice as many as were kept)


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


@dataclass(frozen=True, slots=True)
class BudgetAsk:
    """One budget a call asks to reserve in (`ResilientCounters.reserve_all`): its counter and window, its limit,
    how to read its settled spend to seed it, and how long its window is kept."""

    key_id: str
    window: str
    budget: float
    load_spent: Callable[[], float]
    ttl: float | None


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
        self._window_of: dict[str, str] = {}  # key -> its current window (earlier ones are dropped when it moves)
        self._used: dict[tuple[str, str], float] = {}  # window -> when a call last reserved in it
        self._sweep_at = IDLE_SWEEP_MIN

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
                    self.seed_budget(key_id, window, await asyncio.to_thread(load_spent), 0.0)
        counter = self._budgets[slot]
        decision = budget_decision(budget, counter[0], counter[1], amount)
        if decision.allowed:
            counter[1] += amount
        self._used[slot] = self.clock()
        return decision

    def seed_budget(self, key_id: str, window: str, spent: float, reserved: float) -> None:
        """Start the window's counter at `spent` settled and `reserved` in flight; earlier windows of the key go."""
        earlier = self._window_of.get(key_id)
        if earlier is not None and earlier != window:
            self._budgets.pop((key_id, earlier), None)
            self._used.pop((key_id, earlier), None)
            self._init_locks.pop((key_id, earlier), None)
        self._window_of[key_id] = window
        self._budgets[(key_id, window)] = [spent, reserved]
        self._used[(key_id, window)] = self.clock()
        if len(self._budgets) >= self._sweep_at:
            self._forget_idle()

    def _forget_idle(self) -> None:
        """Drop the windows no call has reserved in for `IDLE_FORGET` seconds and none holds (one per
        execution with each-execution budgets): seeded again from the settled spend if used again."""
        cut = self.clock() - IDLE_FORGET
        for slot in [s for s, at in self._used.items() if at < cut and self._budgets.get(s, (0.0, 0.0))[1] <= 1e-12]:
            self._budgets.pop(slot, None)
            self._used.pop(slot, None)
            self._init_locks.pop(slot, None)
            if self._window_of.get(slot[0]) == slot[1]:
                del self._window_of[slot[0]]
        self._sweep_at = max(IDLE_SWEEP_MIN, 2 * len(self._budgets))

    def held(self, key_id: str, window: str) -> float:
        """What calls in flight of this process reserve in a budget counter (0: none, or not seeded here)."""
        counter = self._budgets.get((key_id, window))
        return 0.0 if counter is None else max(counter[1], 0.0)

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

# A budget window is one hash: `spent` (settled) and one `r:<instance>` field per instance holding what that
# instance's calls in flight reserved, so each instance can restate its own share exactly (after Redis restarts)
# without touching the others'. No decision is taken on a hash without `spent`: the caller seeds it first (-1).
# (The single `reserved` field of earlier versions is ignored: nothing would ever release what it holds.)
_RESERVE_LUA = """
local key = KEYS[1]
local budget, amount, ttl, mine = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local fields = redis.call('HGETALL', key)
local spent, reserved = nil, 0
for i = 1, #fields, 2 do
  local name, value = fields[i], tonumber(fields[i + 1]) or 0
  if name == 'spent' then spent = value
  elseif string.sub(name, 1, 2) == 'r:' and value > 0 then reserved = reserved + value end
end
if spent == nil then return {-1, '0', '0'} end
if spent >= budget or spent + reserved + amount > budget then
  return {0, tostring(spent), tostring(reserved)}
end
redis.call('HINCRBYFLOAT', key, 'r:' .. mine, amount)
if ttl > 0 then redis.call('EXPIRE', key, ttl) end
return {1, tostring(spent), tostring(reserved + amount)}
"""

# Every budget of one call at once (all or none): each window's hash is read as `_RESERVE_LUA` reads it; only
# if every one holds `spent` (else -1: seeded first) and admits `amount` is it reserved in all of them.
# ARGV: amount, this instance's field, then each budget's limit and ttl. Returns 1 (reserved) or 0, then
# (status, spent, reserved) per budget: 1 admits, 0 refuses, -1 not seeded.
_RESERVE_ALL_LUA = """
local amount, mine = tonumber(ARGV[1]), ARGV[2]
local out, admitted = {0}, true
for k = 1, #KEYS do
  local budget = tonumber(ARGV[1 + 2 * k])
  local fields = redis.call('HGETALL', KEYS[k])
  local spent, reserved = nil, 0
  for i = 1, #fields, 2 do
    local name, value = fields[i], tonumber(fields[i + 1]) or 0
    if name == 'spent' then spent = value
    elseif string.sub(name, 1, 2) == 'r:' and value > 0 then reserved = reserved + value end
  end
  if spent == nil then
    admitted = false
    table.insert(out, -1); table.insert(out, '0'); table.insert(out, '0')
  elseif spent >= budget or spent + reserved + amount > budget then
    admitted = false
    table.insert(out, 0); table.insert(out, tostring(spent)); table.insert(out, tostring(reserved))
  else
    table.insert(out, 1); table.insert(out, tostring(spent)); table.insert(out, tostring(reserved))
  end
end
if not admitted then return out end
for k = 1, #KEYS do
  redis.call('HINCRBYFLOAT', KEYS[k], 'r:' .. mine, amount)
  local ttl = tonumber(ARGV[2 + 2 * k])
  if ttl > 0 then redis.call('EXPIRE', KEYS[k], ttl) end
  out[3 + 3 * (k - 1) + 1] = tostring(tonumber(out[3 + 3 * (k - 1) + 1]) + amount)
end
out[1] = 1
return out
"""

_SETTLE_LUA = """
local key = KEYS[1]
local reserved, actual, mine = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if redis.call('HEXISTS', key, 'spent') == 0 then return 0 end
if reserved > 0 then
  local left = tonumber(redis.call('HINCRBYFLOAT', key, 'r:' .. mine, -reserved))
  if left <= 1e-12 then redis.call('HDEL', key, 'r:' .. mine) end
end
if actual ~= 0 then redis.call('HINCRBYFLOAT', key, 'spent', actual) end
return 1
"""

# Seeding: `spent` becomes the larger of what Redis holds and the settled spend (a Redis restarted empty or from
# an old snapshot holds less; one that stayed up may hold spend the database has not been written yet), and this
# instance's reservations in flight are stated anew.
_RECONCILE_LUA = """
local key = KEYS[1]
local seed, held, ttl, mine = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local spent = tonumber(redis.call('HGET', key, 'spent') or '-1')
if spent < seed then
  redis.call('HSET', key, 'spent', ARGV[1])
  spent = seed
end
if held == nil then
elseif held > 0 then redis.call('HSET', key, 'r:' .. mine, ARGV[2])
else redis.call('HDEL', key, 'r:' .. mine) end
if ttl > 0 then redis.call('EXPIRE', key, ttl) end
return tostring(spent)
"""

# This instance's reservations in flight, restated after Redis came back (its own field only; `spent` untouched).
_HOLD_LUA = """
local key = KEYS[1]
local held, ttl, mine = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if held > 0 then
  redis.call('HSET', key, 'r:' .. mine, ARGV[1])
  if ttl > 0 and redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ttl) end
else
  redis.call('HDEL', key, 'r:' .. mine)
end
return 1
"""


def shared_redis(url: str, timeout: float | None, **options: Any) -> Any:
    """The asyncio Redis client of what instances share (counters, the loop guard, output histories).

    A frozen Redis costs a call at most `timeout` (a timeout is not retried: the caller falls back). A
    broken connection is retried once, at once, on a new one: after a Redis restart the pool's
    connections are dead, and the first command on one must not send this instance to local counts.
    """
    import redis.asyncio as redis

    if timeout is not None:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        options.update(socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    return redis.Redis.from_url(url, decode_responses=True, **options)


class RedisCounters:
    """Counters in Redis, shared by every instance; each decision is one atomic Lua script."""

    def __init__(self, url: str, prefix: str = "tokensense", timeout: float | None = None) -> None:
        # Every new connection reads the server's run id: a Redis that restarted (empty, or from an old
        # snapshot) is known before the first command on it answers, even when redis-py reconnects silently.
        self.run_id: str | None = None
        self.redis = shared_redis(url, timeout, redis_connect_func=self._on_connect)
        self.prefix = prefix
        self.instance = uuid.uuid4().hex[:16]  # this store's field for its reservations in flight
        self._rate = self.redis.register_script(_RATE_LUA)
        self._reserve = self.redis.register_script(_RESERVE_LUA)
        self._reserve_all = self.redis.register_script(_RESERVE_ALL_LUA)
        self._settle = self.redis.register_script(_SETTLE_LUA)
        self._reconcile = self.redis.register_script(_RECONCILE_LUA)
        self._hold = self.redis.register_script(_HOLD_LUA)
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

    def _budget_key(self, key_id: str, window: str) -> str:
        return f"{self.prefix}:budget:{key_id}:{window}"

    async def reserve_budget(self, key_id: str, window: str, budget: float, amount: float,
                             load_spent: Callable[[], float], ttl: float | None) -> BudgetDecision:
        """Reserve in Redis; a window Redis does not hold (first use, expired, Redis restarted empty) is seeded."""
        decision = await self.try_reserve(key_id, window, budget, amount, ttl)
        if decision is None:
            slot = (key_id, window)
            async with self._init_locks.setdefault(slot, asyncio.Lock()):
                decision = await self.try_reserve(key_id, window, budget, amount, ttl)
                if decision is None:
                    spent = await asyncio.to_thread(load_spent)
                    await self.reconcile_budget(key_id, window, spent, None, ttl)
                    decision = await self.try_reserve(key_id, window, budget, amount, ttl)
            if decision is None:
                raise RuntimeError("the budget window vanished from Redis while it was seeded")
        return decision

    async def try_reserve(self, key_id: str, window: str, budget: float, amount: float,
                          ttl: float | None) -> BudgetDecision | None:
        """The decision, or None when Redis holds no settled spend for the window (it must be seeded first)."""
        allowed, spent, reserved = await self._reserve(keys=[self._budget_key(key_id, window)],
                                                       args=[budget, amount, int(ttl or 0), self.instance])
        if int(allowed) < 0:
            return None
        if int(allowed):
            return BudgetDecision(True, float(spent), float(reserved), amount)
        # Refused: the same reasoning as the script, on the numbers it saw.
        return budget_decision(budget, float(spent), float(reserved), amount)

    async def try_reserve_all(self, asks: Sequence[BudgetAsk], amount: float) -> tuple[bool, list[BudgetDecision | None]]:
        """Reserve `amount` in every budget of `asks` or in none, in one atomic script (one round trip): whether
        it was reserved, and each budget's decision (None: Redis holds no settled spend for it; seed it first).
        When it was not, the decisions that say allowed only mean that budget alone would have admitted it."""
        args: list[Any] = [repr(float(amount)), self.instance]
        for ask in asks:
            args += [repr(float(ask.budget)), int(ask.ttl or 0)]
        raw = await self._reserve_all(keys=[self._budget_key(ask.key_id, ask.window) for ask in asks], args=args)
        decisions: list[BudgetDecision | None] = []
        for i, ask in enumerate(asks):
            status, spent, reserved = int(raw[1 + 3 * i]), float(raw[2 + 3 * i]), float(raw[3 + 3 * i])
            if status < 0:
                decisions.append(None)
            elif status:
                decisions.append(BudgetDecision(True, spent, reserved, amount))
            else:  # refused: the script's reasoning on the numbers it saw (rounded as text: refused all the same)
                decision = budget_decision(ask.budget, spent, reserved, amount)
                if decision.allowed:
                    decision = BudgetDecision(False, spent, reserved, amount, "reserved")
                decisions.append(decision)
        return bool(int(raw[0])), decisions

    async def reconcile_budget(self, key_id: str, window: str, spent: float, held: float | None,
                               ttl: float | None) -> float:
        """Seed the window: `spent` = max(Redis's, `spent`); this store's reservations in flight = `held`
        (None: leave them). Returns the settled spend Redis holds now."""
        return float(await self._reconcile(keys=[self._budget_key(key_id, window)],
                                           args=[repr(float(spent)), "" if held is None else repr(float(held)),
                                                 int(ttl or 0), self.instance]))

    async def hold_budget(self, key_id: str, window: str, held: float, ttl: float | None) -> None:
        """State this store's reservations in flight for the window (after Redis came back)."""
        await self._hold(keys=[self._budget_key(key_id, window)], args=[repr(float(held)), int(ttl or 0),
                                                                        self.instance])

    async def settle_budget(self, key_id: str, window: str, reserved: float, actual: float) -> None:
        await self._settle(keys=[self._budget_key(key_id, window)], args=[reserved, actual, self.instance])

    async def _on_connect(self, connection) -> None:
        await connection.on_connect()
        await connection.send_command("INFO", "server")
        info = await connection.read_response()
        text = info.decode() if isinstance(info, bytes) else str(info)
        for line in text.splitlines():
            if line.startswith("run_id:"):
                self.run_id = line.partition(":")[2].strip()

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()


class CountersUnavailable(RuntimeError):
    """Redis is unreachable and TOKENSENSE_LIMITS_ON_OUTAGE=closed: the call is refused with a 503."""


class SeedUnavailable(RuntimeError):
    """The settled spend could not be read (database unreachable): a budget cannot be seeded, the call is refused."""


class ResilientCounters:
    """A shared store (Redis) with a policy for its outages, and budget counters seeded from the settled spend.

    Each call to the shared store is bounded by its client's short timeouts. When
    it fails, the store is left alone for `retry_after` seconds (so a frozen Redis
    delays one call, not every call), and meanwhile:
    - `local`: decisions come from in-process counters (`MemoryCounters`), so
      limits hold per instance; one warning a minute says so;
    - `closed`: `CountersUnavailable` is raised, and the call is refused (503).

    Budget seeding. Counters start from the settled spend (`load_spent`, read in
    a thread): each budget window is seeded on its first use in each *epoch* of a
    store. The shared store's epoch starts with the process and moves on each time
    Redis answers again after a failure, or answers with another run id (it
    restarted, empty or from an old snapshot): the window's `spent` in Redis
    becomes max(Redis's, settled). The local store's epoch moves on at each failed
    attempt to reach Redis (the first of an outage, then one per `retry_after`):
    its windows start from the settled spend, never from what an earlier outage
    left, and follow what other instances record during a long one. A window
    that cannot be seeded (database unreachable too) is refused
    (`SeedUnavailable`), unless Redis still holds it.

    Reservations. This instance knows its calls in flight in each store (by
    amount; a call settles with the amount it reserved). At an outage, those in
    Redis are carried into the local store's seed (and released there as they
    settle); when Redis answers again, those made locally join this instance's
    share in Redis (`r:<instance>`), which it restates for every window with calls
    in flight: a Redis that restarted holds them again, and a settle never
    releases another instance's. The spend of calls settled while Redis was away
    reaches it through the seed (the calls are recorded), not by replay.
    """

    def __init__(self, shared: RedisCounters, *, on_outage: str = "local", retry_after: float = 5.0,
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
        self._broken = False  # the shared store failed since it was last seen answering
        self.shared_epoch = 0
        self.local_epoch = 0
        self._server_id: str | None = None  # the run id of the Redis the current shared epoch is on
        self._shared_seeded: dict[tuple[str, str], int] = {}  # window -> the shared epoch it was seeded in
        self._local_seeded: dict[tuple[str, str], int] = {}
        self._shared_held: dict[tuple[str, str], list[float]] = {}  # this instance's reservations in flight
        self._local_held: dict[tuple[str, str], list[float]] = {}
        self._carried: dict[tuple[str, str], list[float]] = {}  # Redis reservations the local seed holds too
        self._ttls: dict[tuple[str, str], float | None] = {}
        self._seed_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._seed_retry_at: dict[tuple[str, str], float] = {}
        self._windows: dict[str, str] = {}  # key -> its latest budget window
        self._used: dict[tuple[str, str], float] = {}  # window -> when a call last reserved in it
        self._sweep_at = IDLE_SWEEP_MIN

    @property
    def shared_down(self) -> bool:
        return self.clock() < self._down_until

    def status(self) -> str:
        if not self.shared_down:
            return "ok"
        return "local (Redis unreachable)" if self.on_outage == "local" else "refusing (Redis unreachable)"

    def _note_failure(self) -> None:
        """The shared store failed: leave it alone for a while. Each failed attempt (at most one per
        `retry_after`) starts a local epoch: local windows are seeded anew at each outage, and every
        `retry_after` during a long one (what other instances spent meanwhile is in the database by then)."""
        self._broken = True
        self.local_epoch += 1
        self._down_until = self.clock() + self.retry_after

    def _failed(self, error: BaseException | None) -> MemoryCounters:
        now = self.clock()
        if error is not None:
            self._note_failure()
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
            except Exception:  # the window forgets the estimate within a minute anyway
                self._note_failure()

    # --- budgets ------------------------------------------------------------------------

    def _note_use(self, slot: tuple[str, str], ttl: float | None) -> None:
        key_id, window = slot
        if self._windows.get(key_id) != window:
            self._forget_earlier_windows(key_id, window)
            if len(self._windows) >= self._sweep_at:
                self._forget_idle()
        self._ttls[slot] = ttl
        self._used[slot] = self.clock()

    async def reserve_all(self, asks: Sequence[BudgetAsk], amount: float) -> list[BudgetDecision]:
        """Reserve `amount` in every budget of `asks` or in none: in Redis, one atomic script for all of them (one
        round trip once their windows are seeded); during an outage, in the local store (`limits_on_outage`).
        Every decision allowed: reserved in all; else reserved in none (the refusing decisions say why; an allowed
        one among them only says that budget alone would have admitted the call; the local store may stop at the
        first refusal: fewer decisions than asks)."""
        for ask in asks:
            self._note_use((ask.key_id, ask.window), ask.ttl)
        if not self.shared_down:
            try:
                decisions = await self._reserve_all_shared(asks, amount)
            except SeedUnavailable:
                raise
            except Exception as e:
                self._failed(e)
            else:
                if all(d.allowed for d in decisions):
                    for ask in asks:
                        self._shared_held.setdefault((ask.key_id, ask.window), []).append(amount)
                return decisions
        else:
            self._failed(None)
        decisions = []
        for ask in asks:  # on the event loop: nothing else reserves between these (but while a window is seeded)
            decision = await self._reserve_local((ask.key_id, ask.window), ask.budget, amount, ask.load_spent,
                                                 ask.ttl)
            decisions.append(decision)
            if not decision.allowed:
                break
        if not all(d.allowed for d in decisions):
            for ask, decision in zip(asks, decisions, strict=False):
                if decision.allowed:  # given back: reserved in none
                    await self.settle_budget(ask.key_id, ask.window, amount, 0.0)
        return decisions

    async def _reserve_all_shared(self, asks: Sequence[BudgetAsk], amount: float) -> list[BudgetDecision]:
        for _ in range(3):
            if self._broken:
                await self.shared.ping()
                await self._new_epoch("rate-limit and budget counters available again (Redis)")
            elif self._server_id is not None and self.shared.run_id != self._server_id:
                await self._new_epoch("Redis restarted (another run id)")
            run_id = self.shared.run_id
            for ask in asks:
                await self._seed_shared((ask.key_id, ask.window), ask.load_spent, ask.ttl)
            reserved, decisions = await self.shared.try_reserve_all(asks, amount)
            if run_id is not None and self.shared.run_id != run_id:
                # Redis restarted under this call: undone, and decided again in a new epoch.
                if reserved:
                    for ask in asks:
                        await self.shared.settle_budget(ask.key_id, ask.window, amount, 0.0)
                await self._new_epoch("Redis restarted (another run id)")
                continue
            self._server_id = self.shared.run_id
            missing = [ask for ask, decision in zip(asks, decisions, strict=True) if decision is None]
            if missing:  # Redis does not hold these windows (expired, or lost): seed them, then decide
                for ask in missing:
                    await self._reconcile((ask.key_id, ask.window), await _seed(ask.load_spent), ask.ttl)
                continue
            return [d for d in decisions if d is not None]
        raise ConnectionError("Redis restarted or lost the budget window while deciding, three times")

    async def _seed_shared(self, slot: tuple[str, str], load_spent: Callable[[], float], ttl: float | None) -> None:
        """Seed the window in Redis once per epoch (a database that cannot be read: decided on what Redis holds)."""
        if self._shared_seeded.get(slot) == self.shared_epoch:
            return
        async with self._seed_lock("shared", slot):
            if self._shared_seeded.get(slot) != self.shared_epoch and \
                    self.clock() >= self._seed_retry_at.get(slot, 0.0):
                try:
                    spent = await _seed(load_spent)
                except SeedUnavailable:
                    # Redis may still hold the window (it counted all along): decide on it, seed later.
                    self._seed_retry_at[slot] = self.clock() + self.retry_after
                else:
                    await self._reconcile(slot, spent, ttl)

    async def _reserve_local(self, slot: tuple[str, str], budget: float, amount: float,
                             load_spent: Callable[[], float], ttl: float | None) -> BudgetDecision:
        key_id, window = slot
        if self._local_seeded.get(slot) != self.local_epoch:
            async with self._seed_lock("local", slot):
                if self._local_seeded.get(slot) != self.local_epoch:
                    spent = await _seed(load_spent)
                    # Calls in flight hold the local budget too: this store's own, and those reserved in
                    # Redis before it failed (carried, released here as they settle).
                    carried = list(self._shared_held.get(slot, ()))
                    self._carried[slot] = carried
                    self.local.seed_budget(key_id, window, spent, sum(self._local_held.get(slot, ())) + sum(carried))
                    self._local_seeded[slot] = self.local_epoch
        decision = await self.local.reserve_budget(key_id, window, budget, amount, load_spent, ttl)
        if decision.allowed:
            self._local_held.setdefault(slot, []).append(amount)
        return decision

    async def reserve_budget(self, key_id: str, window: str, budget: float, amount: float,
                             load_spent: Callable[[], float], ttl: float | None) -> BudgetDecision:
        slot = (key_id, window)
        self._note_use(slot, ttl)
        if not self.shared_down:
            try:
                decision = await self._reserve_shared(slot, budget, amount, load_spent, ttl)
            except SeedUnavailable:
                raise
            except Exception as e:
                self._failed(e)
            else:
                if decision.allowed:
                    self._shared_held.setdefault(slot, []).append(amount)
                return decision
        else:
            self._failed(None)
        return await self._reserve_local(slot, budget, amount, load_spent, ttl)

    async def _reserve_shared(self, slot: tuple[str, str], budget: float, amount: float,
                              load_spent: Callable[[], float], ttl: float | None) -> BudgetDecision:
        key_id, window = slot
        for _ in range(3):
            if self._broken:
                await self.shared.ping()  # answers (or raises) on a new connection, which reads the run id
                await self._new_epoch("rate-limit and budget counters available again (Redis)")
            elif self._server_id is not None and self.shared.run_id != self._server_id:
                await self._new_epoch("Redis restarted (another run id)")
            run_id = self.shared.run_id
            await self._seed_shared(slot, load_spent, ttl)
            decision = await self.shared.try_reserve(key_id, window, budget, amount, ttl)
            if run_id is not None and self.shared.run_id != run_id:
                # Redis restarted under this call: the decision was taken on figures not seeded yet. Undone,
                # and taken again in a new epoch.
                if decision is not None and decision.allowed:
                    await self.shared.settle_budget(key_id, window, amount, 0.0)
                await self._new_epoch("Redis restarted (another run id)")
                continue
            self._server_id = self.shared.run_id
            if decision is None:  # Redis does not hold the window (expired, or lost): seed it, then decide
                await self._reconcile(slot, await _seed(load_spent), ttl)
                continue
            return decision
        raise ConnectionError("Redis restarted or lost the budget window while deciding, three times")

    async def _reconcile(self, slot: tuple[str, str], spent: float, ttl: float | None) -> None:
        await self.shared.reconcile_budget(slot[0], slot[1], spent, sum(self._shared_held.get(slot, ())), ttl)
        self._shared_seeded[slot] = self.shared_epoch
        self._seed_retry_at.pop(slot, None)

    async def _new_epoch(self, why: str) -> None:
        """Redis answers again, or restarted: every budget window is seeded anew on its next use, and this
        instance's reservations in flight are stated anew (a restarted Redis lost them; one that stayed up
        still holds those not settled meanwhile), with those made in the local store during the outage: they
        settle in Redis from now on. (The local store is seeded anew at the next outage.)"""
        for slot, held in list(self._local_held.items()):
            if held:
                self._shared_held.setdefault(slot, []).extend(held)
        self._local_held.clear()
        self._carried.clear()
        for slot, held in list(self._shared_held.items()):
            await self.shared.hold_budget(slot[0], slot[1], sum(held), self._ttls.get(slot))
            if not held:
                del self._shared_held[slot]
        self.shared_epoch += 1
        self._broken = False
        self._server_id = self.shared.run_id
        log.warning("%s; budgets are seeded anew from the settled spend", why)

    def _drop_slot(self, slot: tuple[str, str]) -> None:
        """Forget all that is kept for the window `slot` (a counter's id and window) but a seed lock in use."""
        for kept in (self._shared_seeded, self._local_seeded, self._ttls, self._seed_retry_at,
                     self._shared_held, self._local_held, self._carried, self._used):
            kept.pop(slot, None)
        for store in ("shared", "local"):
            lock = self._seed_locks.get((store, *slot))
            if lock is not None and not lock.locked():
                del self._seed_locks[(store, *slot)]

    def _forget_earlier_windows(self, key_id: str, window: str) -> None:
        """A key's new period began: drop what was kept for its earlier windows (but calls still in flight)."""
        earlier = self._windows.get(key_id)
        self._windows[key_id] = window
        if earlier is None:
            return
        slot = (key_id, earlier)
        if not self._shared_held.get(slot) and not self._local_held.get(slot):
            self._drop_slot(slot)

    def _forget_idle(self) -> None:
        """Forget the windows no call has reserved in for `IDLE_FORGET` seconds and none holds (one per execution
        with each-execution budgets): seeded again from the settled spend if used again."""
        cut = self.clock() - IDLE_FORGET
        for slot, at in list(self._used.items()):
            if at >= cut or self._shared_held.get(slot) or self._local_held.get(slot):
                continue
            self._drop_slot(slot)
            if self._windows.get(slot[0]) == slot[1]:
                del self._windows[slot[0]]
        self._sweep_at = max(IDLE_SWEEP_MIN, 2 * len(self._windows))

    def _seed_lock(self, store: str, slot: tuple[str, str]) -> asyncio.Lock:
        return self._seed_locks.setdefault((store, *slot), asyncio.Lock())

    async def settle_budget(self, key_id: str, window: str, reserved: float, actual: float) -> None:
        slot = (key_id, window)
        local_held = self._local_held.get(slot)
        if reserved > 0 and local_held and reserved in local_held:
            local_held.remove(reserved)
            await self.local.settle_budget(key_id, window, reserved, actual)
            if actual and not self.shared_down and not self._broken and \
                    self._shared_seeded.get(slot) == self.shared_epoch:
                # Redis was seeded before this call's record existed: the spend counts there too. (A window
                # seeded later has it already: the record is in the database or the recorder's queue.)
                try:
                    await self.shared.settle_budget(key_id, window, 0.0, actual)
                except Exception:
                    self._note_failure()
            return
        shared_held = self._shared_held.get(slot)
        mine = reserved > 0 and shared_held is not None and reserved in shared_held
        carried = self._carried.get(slot)
        in_local = mine and carried is not None and reserved in carried
        if mine:
            assert shared_held is not None
            shared_held.remove(reserved)
        if in_local:
            assert carried is not None
            carried.remove(reserved)
        if not self.shared_down:
            try:
                await self.shared.settle_budget(key_id, window, reserved if mine else 0.0, actual)
            except Exception:
                self._note_failure()
            else:
                if in_local:  # the stale local copy lets go of it too (the local store is seeded anew anyway)
                    await self.local.settle_budget(key_id, window, reserved, 0.0)
                return
        # Redis does not answer: the reservation left this instance's share (restated when Redis answers
        # again), and the spend reaches Redis through the seed of its next epoch (the call is recorded). The
        # local store, which held it through the outage, settles it.
        if in_local:
            await self.local.settle_budget(key_id, window, reserved, actual)

    async def close(self) -> None:
        await self.shared.close()


async def _seed(load_spent: Callable[[], float]) -> float:
    """The settled spend, read in a thread (never on the event loop)."""
    try:
        return float(await asyncio.to_thread(load_spent))
    except Exception as e:
        raise SeedUnavailable(f"the settled spend could not be read: {type(e).__name__}: {e}") from e

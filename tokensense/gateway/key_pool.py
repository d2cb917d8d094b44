"""Provider-key pools: round-robin over the usable keys, cool-down, take-out and a circuit breaker per key.

Each provider has a pool of keys (`KeyStore.credentials`). Every upstream answer
is reported back for the key that was used, and moves that key's health:

- **429**: the key cools down for the `Retry-After` the provider sent (or
  `PoolPolicy.cooldown`), then is used again.
- **401/403**: the key is taken out until an operator restores it
  (`tokensense providers restore`) or stores a new value under its name. The
  take-out is kept in the database (the gateway's `on_take_out` writes it), so
  every instance and every restart sees it.
- **5xx, 529, connection errors, timeouts**: `breaker_failures` in a row open
  the key's circuit for `breaker_cooldown` seconds; then it is half-open: one
  request (the probe) may use it; the probe's success closes the circuit, its
  failure opens it again.
- **Anything else** (2xx, 400, 404, ...) shows the key works: the failure streak
  ends. An answer whose headers came and whose body was then slow (a stream with
  slow chunks) is the key working too.

Cool-downs and circuits only steer: a resting key (cooling, open, or half-open
with its probe in flight) is passed over while another key of the pool, or a
fallback of the call, can serve. When nothing else can (`others_can_serve`
false), the pool still gives a key: the resting one usable soonest
(`Pick.resting`), so the provider's own answer reaches the client rather than a
429 of TokenSense's. Only a key taken out (or disabled) is never given.

The rules are pure functions of a `KeyHealth` and a clock reading (`key_state`,
`after`, `choose`). `KeyPools` holds the health of every key: in this process, or
in Redis when `TOKENSENSE_REDIS_URL` is set so that every instance shares
cool-downs and circuits. Redis gets short timeouts; when it fails the pools go on
with the state this process knows (every report is also applied locally).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import partial
from typing import Any, Protocol

log = logging.getLogger(__name__)

REDIS_TIMEOUT = 0.25  # seconds a Redis call may take before the pools use local state
REDIS_RETRY_AFTER = 5.0  # seconds local state is used after a Redis failure before Redis is tried again


class PooledKey(Protocol):
    """What the pools need to know of a provider key (`tokensense.gateway.keys.Credential` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def disabled(self) -> bool: ...


class Outcome(StrEnum):
    """What an upstream answer says about the key that was used."""

    OK = "ok"  # the provider answered and accepted the key (2xx, and client errors such as 400 or 404)
    RATE_LIMITED = "rate_limited"  # 429
    REFUSED = "refused"  # 401, 403: the provider does not accept this key
    FAILED = "failed"  # 5xx, 529, connection error, timeout: the provider is in trouble


class KeyState(StrEnum):
    READY = "ready"
    COOLING = "cooling"  # answered 429: unused until its Retry-After passed
    OPEN = "open"  # circuit open after a streak of failures: unused until the cool-down passed
    HALF_OPEN = "half-open"  # the cool-down passed: one probe request may use it
    OUT = "out"  # refused by the provider (401/403): unused until an operator restores it


def outcome_for(status: int | None) -> Outcome:
    """The outcome of an upstream answer with HTTP `status` (None: no answer, e.g. connection refused)."""
    if status is None or status >= 500:
        return Outcome.FAILED
    if status == 429:
        return Outcome.RATE_LIMITED
    if status in (401, 403):
        return Outcome.REFUSED
    return Outcome.OK


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    cooldown: float = 60.0  # seconds a key rests after a 429 without Retry-After
    max_cooldown: float = 3600.0  # a longer Retry-After is cut to this
    breaker_failures: int = 5  # failures in a row that open the circuit
    breaker_cooldown: float = 30.0  # seconds the circuit stays open before the half-open probe
    probe_timeout: float = 120.0  # a probe that never reported frees the half-open slot after this


@dataclass(frozen=True, slots=True)
class KeyHealth:
    """One key's health. Times are clock readings (seconds); 0 means "not set"."""

    cooling_until: float = 0.0
    failures: int = 0  # failures in a row
    open_until: float = 0.0  # the circuit opened and stays open until then; half-open afterwards
    probe_until: float = 0.0  # a half-open probe is in flight until then
    out_reason: str | None = None  # taken out here (the database write may not have come back yet)
    out_at: float = 0.0

    @property
    def clean(self) -> bool:
        return self == CLEAN


CLEAN = KeyHealth()


def key_state(health: KeyHealth, now: float) -> KeyState:
    if health.out_reason is not None:
        return KeyState.OUT
    if health.open_until:
        return KeyState.OPEN if now < health.open_until else KeyState.HALF_OPEN
    if now < health.cooling_until:
        return KeyState.COOLING
    return KeyState.READY


def usable(health: KeyHealth, now: float) -> bool:
    """Whether a request may use the key now (a half-open key only when no probe is in flight)."""
    state = key_state(health, now)
    return state is KeyState.READY or (state is KeyState.HALF_OPEN and now >= health.probe_until
                                       and now >= health.cooling_until)


def usable_in(health: KeyHealth, now: float) -> float | None:
    """Seconds until the key is usable without an operator (0: now; None: never, it is out)."""
    if health.out_reason is not None:
        return None
    until = max(health.cooling_until, health.open_until)
    if health.open_until and now >= health.open_until:
        until = max(until, health.probe_until)  # half-open, with a probe in flight
    return max(0.0, until - now)


def after(health: KeyHealth, outcome: Outcome, now: float, policy: PoolPolicy, *,
          retry_after: float | None = None, reason: str | None = None) -> KeyHealth:
    """The key's health once an answer with `outcome` came back at `now`."""
    if outcome is Outcome.REFUSED:
        if health.out_reason is not None:
            return health
        return replace(health, out_reason=reason or "refused by the provider", out_at=now)
    if outcome is Outcome.FAILED:
        failures = health.failures + 1
        half_open = health.open_until and now >= health.open_until
        if half_open or (not health.open_until and failures >= policy.breaker_failures):
            return replace(health, failures=failures, open_until=now + policy.breaker_cooldown, probe_until=0.0)
        return replace(health, failures=failures)
    # The provider answered: whatever the circuit said, it works.
    healed = replace(health, failures=0, open_until=0.0, probe_until=0.0)
    if outcome is Outcome.RATE_LIMITED:
        wait = policy.cooldown if retry_after is None else retry_after
        wait = min(max(wait, 0.0), policy.max_cooldown)
        return replace(healed, cooling_until=max(health.cooling_until, now + wait))
    return healed


@dataclass(frozen=True, slots=True)
class Pick:
    """The key chosen for an attempt, or why there is none."""

    key: Any | None  # a PooledKey (a Credential in the gateway)
    state: KeyState | None = None  # the chosen key's state (HALF_OPEN: this attempt is the probe)
    retry_after: float | None = None  # no key: seconds until one is usable (None: none without an operator)
    states: Mapping[str, KeyState] | None = None  # every key's state when none was chosen, for the error
    resting: bool = False  # every key rests and nothing else can serve the call: this one is tried anyway

    @property
    def probe(self) -> bool:
        return self.state is KeyState.HALF_OPEN and not self.resting


def choose(pool: Sequence[PooledKey], healths: Mapping[str, KeyHealth], counter: int, now: float,
           exclude: Iterable[str] = (), *, others_can_serve: bool = False) -> Pick:
    """Round-robin (`counter`) over the keys usable now, preferring those not in `exclude`
    (the keys this call already tried).

    When none is usable now: no key if `others_can_serve` (another model of the call's plan
    can take it), else the resting key usable soonest, so that the last key is always tried.
    """
    excluded = set(exclude)
    candidates = [k for k in pool if not k.disabled and usable(healths.get(k.name, CLEAN), now)]
    fresh = [k for k in candidates if k.name not in excluded] or candidates
    if fresh:
        key = fresh[counter % len(fresh)]
        return Pick(key, key_state(healths.get(key.name, CLEAN), now))
    if not others_can_serve:
        resting = [k for k in pool if not k.disabled and healths.get(k.name, CLEAN).out_reason is None]
        resting = [k for k in resting if k.name not in excluded] or resting
        if resting:
            key = min(resting, key=lambda k: usable_in(healths.get(k.name, CLEAN), now) or 0.0)
            return Pick(key, key_state(healths.get(key.name, CLEAN), now), resting=True)
    waits = [usable_in(healths.get(k.name, CLEAN), now) for k in pool if not k.disabled]
    known = [w for w in waits if w is not None]
    states = {k.name: KeyState.OUT if k.disabled else key_state(healths.get(k.name, CLEAN), now) for k in pool}
    return Pick(None, retry_after=min(known) if known else None, states=states)


# --- keeping the health ------------------------------------------------------------


class HealthStore(Protocol):
    async def read(self, provider: str, names: Sequence[str]) -> tuple[dict[str, KeyHealth], int]:
        """The keys' health and the provider's round-robin counter (incremented)."""
        ...

    async def claim_probe(self, provider: str, name: str, now: float, until: float) -> bool: ...

    async def report(self, provider: str, name: str, outcome: Outcome, now: float, policy: PoolPolicy,
                     retry_after: float | None) -> None: ...

    async def forget(self, provider: str, name: str) -> None: ...

    async def close(self) -> None: ...


class MemoryHealth:
    """The pools' state in this process (one instance). Runs on the event loop without awaiting: atomic."""

    def __init__(self) -> None:
        self.healths: dict[tuple[str, str], KeyHealth] = {}
        self.counters: dict[str, int] = {}

    def get(self, provider: str, name: str) -> KeyHealth:
        return self.healths.get((provider, name), CLEAN)

    def set(self, provider: str, name: str, health: KeyHealth) -> None:
        if health.clean:
            self.healths.pop((provider, name), None)
        else:
            self.healths[(provider, name)] = health

    async def read(self, provider: str, names: Sequence[str]) -> tuple[dict[str, KeyHealth], int]:
        counter = self.counters[provider] = self.counters.get(provider, -1) + 1
        return {name: self.get(provider, name) for name in names}, counter

    async def claim_probe(self, provider: str, name: str, now: float, until: float) -> bool:
        health = self.get(provider, name)
        if now < health.probe_until:
            return False
        self.set(provider, name, replace(health, probe_until=until))
        return True

    async def report(self, provider: str, name: str, outcome: Outcome, now: float, policy: PoolPolicy,
                     retry_after: float | None) -> None:
        self.set(provider, name, after(self.get(provider, name), outcome, now, policy, retry_after=retry_after))

    async def forget(self, provider: str, name: str) -> None:
        self.healths.pop((provider, name), None)

    async def close(self) -> None:
        return None


# The same transitions as `after` (OK, RATE_LIMITED and FAILED; take-outs live in the database),
# in one atomic script so that instances reporting at once do not lose a failure.
_REPORT_LUA = """
local k = KEYS[1]
local now, outcome, wait = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local threshold, cooldown, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local c = tonumber(redis.call('HGET', k, 'c') or '0')
local f = tonumber(redis.call('HGET', k, 'f') or '0')
local o = tonumber(redis.call('HGET', k, 'o') or '0')
if outcome == 'failed' then
  f = redis.call('HINCRBY', k, 'f', 1)
  if (o ~= 0 and now >= o) or (o == 0 and f >= threshold) then
    redis.call('HSET', k, 'o', tostring(now + cooldown), 'p', '0')
  end
else
  if f ~= 0 or o ~= 0 then redis.call('HSET', k, 'f', '0', 'o', '0', 'p', '0') end
  if outcome == 'rate_limited' and now + wait > c then redis.call('HSET', k, 'c', tostring(now + wait)) end
end
if redis.call('EXISTS', k) == 1 then redis.call('EXPIRE', k, ttl) end
return 1
"""

_READ_LUA = """
local out = {redis.call('INCR', KEYS[1])}
redis.call('EXPIRE', KEYS[1], 86400)
for i = 2, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'c', 'f', 'o', 'p')
  for j = 1, 4 do table.insert(out, h[j] or '0') end
end
return out
"""

_CLAIM_LUA = """
local p = tonumber(redis.call('HGET', KEYS[1], 'p') or '0')
if tonumber(ARGV[1]) < p then return 0 end
redis.call('HSET', KEYS[1], 'p', ARGV[2])
return 1
"""


def _health_from(fields: Sequence[Any]) -> KeyHealth:
    c, f, o, p = (float(x or 0) for x in fields)
    return KeyHealth(cooling_until=c, failures=int(f), open_until=o, probe_until=p)


class RedisHealth:
    """The pools' state in Redis, shared by every instance; each change is one atomic script."""

    def __init__(self, url: str, prefix: str = "tokensense", timeout: float = REDIS_TIMEOUT) -> None:
        import redis.asyncio as redis

        self.redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout,
                                          socket_connect_timeout=timeout)
        self.prefix = prefix
        self.timeout = timeout
        self._read = self.redis.register_script(_READ_LUA)
        self._report = self.redis.register_script(_REPORT_LUA)
        self._claim = self.redis.register_script(_CLAIM_LUA)

    def key(self, provider: str, name: str) -> str:
        return pool_key(self.prefix, provider, name)

    async def read(self, provider: str, names: Sequence[str]) -> tuple[dict[str, KeyHealth], int]:
        raw = await asyncio.wait_for(
            self._read(keys=[f"{self.prefix}:pool:{provider}:rr", *(self.key(provider, n) for n in names)]),
            self.timeout)
        healths = {name: _health_from(raw[1 + 4 * i: 5 + 4 * i]) for i, name in enumerate(names)}
        return healths, int(raw[0])

    async def claim_probe(self, provider: str, name: str, now: float, until: float) -> bool:
        return bool(int(await asyncio.wait_for(self._claim(keys=[self.key(provider, name)], args=[now, until]),
                                               self.timeout)))

    async def report(self, provider: str, name: str, outcome: Outcome, now: float, policy: PoolPolicy,
                     retry_after: float | None) -> None:
        if outcome is Outcome.REFUSED:
            return  # kept in the database
        wait = min(max(policy.cooldown if retry_after is None else retry_after, 0.0), policy.max_cooldown)
        ttl = int(max(wait, policy.breaker_cooldown, policy.probe_timeout) + 3600)
        await asyncio.wait_for(self._report(keys=[self.key(provider, name)], args=[
            now, outcome.value, wait, policy.breaker_failures, policy.breaker_cooldown, ttl]), self.timeout)

    async def forget(self, provider: str, name: str) -> None:
        await asyncio.wait_for(self.redis.delete(self.key(provider, name)), self.timeout)

    async def close(self) -> None:
        await self.redis.aclose()


def pool_key(prefix: str, provider: str, name: str) -> str:
    return f"{prefix}:pool:{provider}:{name}"


class KeyPools:
    """Chooses a key of a provider's pool for each attempt and learns from every answer.

    `on_take_out(provider, name, reason)` is called (on the event loop) when a key is
    refused; the gateway writes the take-out to the database from there, off the loop.
    """

    def __init__(self, policy: PoolPolicy | None = None, *, redis_url: str | None = None,
                 clock: Callable[[], float] = time.time,
                 on_take_out: Callable[[str, str, str], None] | None = None,
                 shared: HealthStore | None = None) -> None:
        self.policy = policy or PoolPolicy()
        self.clock = clock
        self.on_take_out = on_take_out
        self.local = MemoryHealth()
        self.shared: HealthStore | None = shared if shared is not None else (
            RedisHealth(redis_url) if redis_url else None)
        self._shared_down_until = 0.0

    # -- the shared store, with local state while it fails ---------------------------
    async def _with_shared(self, operation: Callable[[HealthStore], Any]) -> tuple[bool, Any]:
        if self.shared is None or time.monotonic() < self._shared_down_until:
            return False, None
        try:
            return True, await operation(self.shared)
        except Exception as e:
            self._shared_down_until = time.monotonic() + REDIS_RETRY_AFTER
            log.warning("provider-key pool state: Redis failed (%s: %s); using this instance's state for %gs",
                        type(e).__name__, e, REDIS_RETRY_AFTER)
            return False, None

    # -- choosing ------------------------------------------------------------------------
    async def pick(self, provider: str, pool: Sequence[PooledKey], exclude: Iterable[str] = (), *,
                   others_can_serve: bool = False) -> Pick:
        """A key for the next attempt on `provider`: round-robin over the usable ones.

        `others_can_serve`: another model of the call's plan (a fallback) can take the call, so a
        pool whose keys all rest gives no key; otherwise its resting key usable soonest is given
        (`Pick.resting`): a breaker steers calls, it never answers for the provider.
        """
        now = self.clock()
        names = [k.name for k in pool]
        self._forget_restored(provider, pool)
        shared_ok, shared = await self._with_shared(lambda store: store.read(provider, names))
        local, counter = await self.local.read(provider, names)
        healths = local
        if shared_ok:
            shared_healths, counter = shared
            # Take-outs are local until the database says so; the rest is shared. The local
            # copy follows what Redis said, for the reports and for when Redis fails.
            healths = {n: replace(shared_healths[n], out_reason=local[n].out_reason, out_at=local[n].out_at)
                       for n in names}
            for name, health in healths.items():
                self.local.set(provider, name, health)
        tried = set(exclude)
        while True:
            pick = choose(pool, healths, counter, now, tried, others_can_serve=others_can_serve)
            if pick.key is None or not pick.probe:
                return pick
            until = now + self.policy.probe_timeout
            key_name = pick.key.name
            ok, claimed = await self._with_shared(partial(_claim_probe, provider=provider, key=key_name, now=now,
                                                          until=until))
            if not ok:
                claimed = await self.local.claim_probe(provider, key_name, now, until)
            else:
                await self.local.claim_probe(provider, key_name, now, until)
            if claimed:
                return pick
            # Another request is probing that key: it is not usable for this one.
            healths = {**healths, pick.key.name: replace(healths[pick.key.name], probe_until=until)}

    def _forget_restored(self, provider: str, pool: Sequence[PooledKey]) -> None:
        """Drop local take-outs the database has overtaken (restored, replaced, or recorded there)."""
        for key in pool:
            health = self.local.get(provider, key.name)
            if health.out_reason is None:
                continue
            changed_at = getattr(key, "changed_at", None)
            if key.disabled or (changed_at is not None and changed_at.timestamp() > health.out_at):
                self.local.set(provider, key.name, replace(health, out_reason=None, out_at=0.0))

    # -- learning ------------------------------------------------------------------------
    async def report(self, provider: str, name: str, outcome: Outcome, *, retry_after: float | None = None,
                     reason: str | None = None) -> KeyState:
        """Record an answer for key `name` of `provider`; the key's new state (as this instance sees it)."""
        now = self.clock()
        before = self.local.get(provider, name)
        new = after(before, outcome, now, self.policy, retry_after=retry_after, reason=reason)
        self.local.set(provider, name, new)
        if new.open_until != before.open_until and new.open_until > now:
            log.warning("%s key %s: circuit open after %d failures in a row; it rests %gs while another key or a "
                        "fallback can serve (alone, it is still tried)", provider, name, new.failures,
                        self.policy.breaker_cooldown)
        if outcome is Outcome.REFUSED:
            if before.out_reason is None and self.on_take_out is not None:
                self.on_take_out(provider, name, new.out_reason or "refused")
        elif not (outcome is Outcome.OK and before.clean):
            # A success on a key known clean (as Redis said at the pick) needs no round trip to Redis.
            await self._with_shared(lambda store: store.report(provider, name, outcome, now, self.policy, retry_after))
        return key_state(new, now)

    def has_usable(self, provider: str, pool: Sequence[PooledKey], exclude: Iterable[str] = ()) -> bool:
        """Whether a key of the pool outside `exclude` is usable now, as this instance last saw it
        (no round-robin step, no probe claimed)."""
        now, excluded = self.clock(), set(exclude)
        return any(not k.disabled and k.name not in excluded and usable(self.local.get(provider, k.name), now)
                   for k in pool)

    async def restore(self, provider: str, name: str) -> None:
        """Forget everything about a key (an operator restored it)."""
        await self.local.forget(provider, name)
        await self._with_shared(lambda store: store.forget(provider, name))

    async def states(self, provider: str, pool: Sequence[PooledKey]) -> dict[str, tuple[KeyState, KeyHealth]]:
        """Every key's state and health, for `providers list` and the dashboard (no round-robin step)."""
        now = self.clock()
        names = [k.name for k in pool]
        healths = {n: self.local.get(provider, n) for n in names}
        ok, shared = await self._with_shared(lambda store: store.read(provider, names))
        if ok:
            healths = {n: replace(shared[0][n], out_reason=healths[n].out_reason, out_at=healths[n].out_at)
                       for n in names}
        return {k.name: (KeyState.OUT if k.disabled else key_state(healths[k.name], now), healths[k.name])
                for k in pool}

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()


def read_shared_states(redis_url: str, provider: str, names: Sequence[str], *, prefix: str = "tokensense",
                       now: float | None = None, timeout: float = 1.0) -> dict[str, tuple[KeyState, KeyHealth]]:
    """The keys' states as the gateways share them in Redis (for the command line; blocking)."""
    import redis

    client = redis.Redis.from_url(url=redis_url, decode_responses=True, socket_timeout=timeout,
                                  socket_connect_timeout=timeout)
    try:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hmget(pool_key(prefix, provider, name), "c", "f", "o", "p")
        rows = pipe.execute()
    finally:
        client.close()
    now = time.time() if now is None else now
    return {name: (key_state(health, now), health) for name, health in
            ((n, _health_from(row)) for n, row in zip(names, rows, strict=True))}


def forget_shared_state(redis_url: str, provider: str, name: str, *, prefix: str = "tokensense",
                        timeout: float = 1.0) -> None:
    """Clear a key's cool-down and circuit in Redis (`providers restore`; blocking)."""
    import redis

    client = redis.Redis.from_url(url=redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.delete(pool_key(prefix, provider, name))
    finally:
        client.close()


def _claim_probe(store: Any, *, provider: str, key: str, now: float, until: float) -> Any:
    return store.claim_probe(provider, key, now, until)

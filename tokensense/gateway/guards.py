"""Guards against runaway calls: a cost cap per call, and a loop guard per execution.

The cost cap (`x-tokensense-max-cost-usd`, a key's `max_call_usd`) is read here from
the request and checked by the police stage against the call's largest cost (its
budget reservation). The loop guard (`[guards]` in config.toml) counts, per key and
execution (`x-execution-id`, else the agent session the attribution reads), the calls
and the identical bodies in a window: in Redis when `TOKENSENSE_REDIS_URL` is set
(`SharedLoopCounts`: one atomic script per call, so every instance and worker counts the
same run), else in this process's memory (each instance counts the calls it serves).
While Redis does not answer, each process counts in its memory the calls it serves (one
warning a minute; Redis is tried again after `retry_after` seconds): the guard never
refuses a call because Redis is down.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tokensense.core.errors import GatewayError
from tokensense.gateway.limits import shared_redis

log = logging.getLogger(__name__)

MAX_COST_HEADER = "x-tokensense-max-cost-usd"
IDLE_EXECUTION_SECONDS = 3600.0  # an execution with no call for this long is forgotten (its counts start again)
_PRUNE_EVERY_SECONDS = 10.0


def take_max_cost_header(headers: Any) -> float | None:
    """Remove `x-tokensense-max-cost-usd` from `headers` (it is never forwarded); its value, or 400 if malformed."""
    if MAX_COST_HEADER not in headers:
        return None
    values = headers.get_all(MAX_COST_HEADER) if hasattr(headers, "get_all") else [headers[MAX_COST_HEADER]]
    del headers[MAX_COST_HEADER]
    text = ",".join(values).strip()
    try:
        cap = float(text)
    except ValueError:
        cap = math.nan
    if not (math.isfinite(cap) and cap > 0):
        raise GatewayError(400, f"The header {MAX_COST_HEADER} must be a positive number of US dollars "
                           f"(e.g. 0.05), not {text[:40]!r}.", code="invalid_max_cost")
    return cap


def call_cap(header_cap: float | None, key_cap: float | None) -> float | None:
    """The cap that applies to a call: the smaller of the header's and the key's (None: no cap)."""
    caps = [c for c in (header_cap, key_cap) if c is not None]
    return min(caps) if caps else None


def max_cost_refusal(estimate: float | None, cap: float, model: str) -> GatewayError:
    """The 402 for a call whose largest cost is above its cap (`estimate` None: the model has no known price)."""
    if estimate is None:
        return GatewayError(
            402, f"This call has a cost cap of ${cap:g}, and TokenSense knows no price for the model `{model}`: "
            "its cost cannot be bounded. Declare its prices under [models] in config.toml, or send it without a cap.",
            code="max_cost_exceeded")
    return GatewayError(
        402, f"This call can cost up to ${estimate:.6f} (its prompt and output cap at the model's price), more than "
        f"its cost cap of ${cap:g}; lower max_tokens or raise the cap.", code="max_cost_exceeded")


def body_hash(body: Mapping[str, Any]) -> str:
    """A hash of a parsed JSON body that does not depend on the order of its keys."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _max_calls_error(execution_id: str, limit: int) -> GatewayError:
    return GatewayError(429, f"The execution `{execution_id}` made its {limit} calls (max_calls_per_execution "
                        "in [guards] of config.toml): this one is refused as a runaway loop.", code="loop_detected")


def _repeat_error(execution_id: str, count: int, window_s: float) -> GatewayError:
    return GatewayError(429, f"The execution `{execution_id}` sent this same request {count} times in {window_s:g}s "
                        "(repeat_limit in [guards] of config.toml): this one is refused as a runaway loop.",
                        code="loop_detected")


@dataclass(frozen=True, slots=True)
class LoopAlert:
    """An execution the loop guard stopped: sent once per execution and window through the alert webhook."""

    key_id: str
    key_name: str
    execution_id: str
    reason: str  # "repeat": identical bodies; "max_calls": calls per execution
    limit: int
    window_s: float | None  # the repeat window (None for max_calls)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    test: bool = False


@dataclass(slots=True)
class _Execution:
    calls: int = 0
    last: float = 0.0
    bodies: dict[str, deque[float]] = field(default_factory=dict)


class LoopGuard:
    """The runaway guard: identical bodies per execution and window, and calls per execution, counted in memory."""

    def __init__(self, *, repeat_limit: int | None, repeat_window_s: float = 60.0,
                 max_calls_per_execution: int | None = None,
                 on_alert: Callable[[LoopAlert], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, shared: SharedLoopCounts | None = None) -> None:
        self.repeat_limit = repeat_limit
        self.repeat_window_s = repeat_window_s
        self.max_calls = max_calls_per_execution
        self.on_alert = on_alert
        self._clock = clock
        self.shared = shared  # Redis, when configured: the counts of every instance
        self._executions: dict[tuple[str, str], _Execution] = {}
        self._alerted: dict[tuple[str, str, str, int], float] = {}
        self._lock = threading.Lock()  # the guard is called on the event loop; the lock is never held across I/O
        self._pruned = clock()

    @property
    def active(self) -> bool:
        return self.repeat_limit is not None or self.max_calls is not None

    async def admit(self, key_id: str, key_name: str, execution_id: str | None,
                    body: Mapping[str, Any] | None) -> GatewayError | None:
        """`check`, counted in Redis when shared (every instance sees the same counts), else in memory."""
        if not execution_id or not self.active:
            return None
        shared = self.shared
        if shared is None or shared.down():
            return self.check(key_id, key_name, execution_id, body)
        digest = body_hash(body) if self.repeat_limit is not None and body is not None else None
        try:
            verdict, count, first = await shared.count(key_id, execution_id, digest, repeat_limit=self.repeat_limit,
                                                       window_s=self.repeat_window_s, max_calls=self.max_calls)
        except Exception as e:  # Redis unreachable: this process's counts until it answers again
            shared.failed(e)
            return self.check(key_id, key_name, execution_id, body)
        if verdict == "max_calls":
            assert self.max_calls is not None
            return self._refused(key_id, key_name, execution_id, "max_calls", self.max_calls, first,
                                 _max_calls_error(execution_id, self.max_calls))
        if verdict == "repeat":
            assert self.repeat_limit is not None
            return self._refused(key_id, key_name, execution_id, "repeat", self.repeat_limit, first,
                                 _repeat_error(execution_id, count, self.repeat_window_s))
        return None

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.close()

    def check(self, key_id: str, key_name: str, execution_id: str | None,
              body: Mapping[str, Any] | None) -> GatewayError | None:
        """Count this call of `execution_id`; the 429 `loop_detected` if it is one too many, else None.

        A call without an execution id is not guarded. A refused call is not counted.
        """
        if not execution_id or not self.active:
            return None
        digest = body_hash(body) if self.repeat_limit is not None and body is not None else None
        now = self._clock()
        with self._lock:
            self._prune(now)
            run = self._executions.setdefault((key_id, execution_id), _Execution())
            run.last = now
            if self.max_calls is not None and run.calls >= self.max_calls:
                return self._refuse(key_id, key_name, execution_id, "max_calls", self.max_calls, now,
                                    _max_calls_error(execution_id, self.max_calls))
            times = None
            if digest is not None:
                assert self.repeat_limit is not None
                times = run.bodies.setdefault(digest, deque())
                while times and now - times[0] >= self.repeat_window_s:
                    times.popleft()
                if len(times) >= self.repeat_limit:
                    return self._refuse(key_id, key_name, execution_id, "repeat", self.repeat_limit, now,
                                        _repeat_error(execution_id, len(times), self.repeat_window_s))
            run.calls += 1
            if times is not None:
                times.append(now)
        return None

    def _refuse(self, key_id: str, key_name: str, execution_id: str, reason: str, limit: int, now: float,
                error: GatewayError) -> GatewayError:
        window = int(now // self.repeat_window_s) if reason == "repeat" else 0
        claim = (key_id, execution_id, reason, window)
        first = claim not in self._alerted
        if first:
            self._alerted[claim] = now
        return self._refused(key_id, key_name, execution_id, reason, limit, first, error)

    def _refused(self, key_id: str, key_name: str, execution_id: str, reason: str, limit: int, first: bool,
                 error: GatewayError) -> GatewayError:
        """The refusal; the first of its execution, reason and window (across instances with Redis) alerts."""
        if first:
            log.warning("loop guard: key %s, execution %s refused (%s, limit %d)", key_name, execution_id[:80],
                        reason, limit)
            if self.on_alert is not None:
                try:
                    self.on_alert(LoopAlert(key_id=key_id, key_name=key_name, execution_id=execution_id,
                                            reason=reason, limit=limit,
                                            window_s=self.repeat_window_s if reason == "repeat" else None))
                except Exception as e:  # an alert that cannot be queued does not change the answer
                    log.warning("loop guard alert not sent: %s", type(e).__name__)
        return error

    def _prune(self, now: float) -> None:
        if now - self._pruned < _PRUNE_EVERY_SECONDS:
            return
        self._pruned = now
        idle = max(IDLE_EXECUTION_SECONDS, self.repeat_window_s)
        for name, run in list(self._executions.items()):
            if now - run.last >= idle:
                del self._executions[name]
                continue
            for digest, times in list(run.bodies.items()):
                if not times or now - times[-1] >= self.repeat_window_s:
                    del run.bodies[digest]
        for claim, at in list(self._alerted.items()):
            if now - at >= idle:
                del self._alerted[claim]


# One call of an execution, counted in Redis. KEYS: the execution's call count, the times of this body (a sorted
# set), the alert claims for max_calls and for this window's repeats. Refused calls are not counted; the first
# refusal of an execution (per reason and window) claims its alert, so one instance sends it.
_LOOP_LUA = """
local calls_key, times_key, max_alert, repeat_alert = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, window, repeat_limit, max_calls = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local member, idle = ARGV[5], tonumber(ARGV[6])
if max_calls >= 0 then
  local calls = tonumber(redis.call('GET', calls_key) or '0')
  if calls >= max_calls then
    local first = redis.call('SET', max_alert, '1', 'NX', 'EX', idle)
    return {1, calls, first and 1 or 0}
  end
end
if repeat_limit >= 0 then
  redis.call('ZREMRANGEBYSCORE', times_key, '-inf', now - window)
  local count = redis.call('ZCARD', times_key)
  if count >= repeat_limit then
    local first = redis.call('SET', repeat_alert, '1', 'NX', 'EX', math.ceil(window) + 1)
    return {2, count, first and 1 or 0}
  end
end
redis.call('INCR', calls_key)
redis.call('EXPIRE', calls_key, idle)
if repeat_limit >= 0 then
  redis.call('ZADD', times_key, now, member)
  redis.call('PEXPIRE', times_key, math.ceil(window * 1000) + 1000)
end
return {0, 0, 0}
"""


class SharedLoopCounts:
    """The loop guard's counts in Redis (`TOKENSENSE_REDIS_URL`), shared by every instance and worker.

    Each call is one atomic script (`_LOOP_LUA`), bounded by the client's short
    timeouts. After a failure Redis is left alone for `retry_after` seconds and the
    guard counts in memory (`down`, `failed`).
    """

    def __init__(self, url: str, *, prefix: str = "tokensense", timeout: float | None = None,
                 retry_after: float = 5.0, warn_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = shared_redis(url, timeout)
        self.prefix = prefix
        self.retry_after = retry_after
        self.warn_every = warn_every
        self._clock = clock
        self._down_until = -math.inf
        self._last_warning = -math.inf
        self._script = self.redis.register_script(_LOOP_LUA)

    def down(self) -> bool:
        return self._clock() < self._down_until

    def failed(self, error: BaseException) -> None:
        now = self._clock()
        self._down_until = now + self.retry_after
        if now - self._last_warning >= self.warn_every:
            self._last_warning = now
            log.warning("loop guard: Redis unavailable (%s), counting the calls of this process until it answers",
                        type(error).__name__)

    async def count(self, key_id: str, execution_id: str, digest: str | None, *, repeat_limit: int | None,
                    window_s: float, max_calls: int | None) -> tuple[str | None, int, bool]:
        """Count this call: (None, 0, False) if admitted, else ("max_calls" | "repeat", the count reached,
        whether this refusal is the first of its execution, reason and window: it sends the alert)."""
        now = time.time()
        run = hashlib.sha256(f"{key_id}\0{execution_id}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
        base = f"{self.prefix}:loop:{{{run}}}"  # one hash slot per execution (Redis Cluster)
        repeats = repeat_limit if repeat_limit is not None and digest is not None else -1
        keys = [f"{base}:calls", f"{base}:body:{digest if repeats >= 0 else '-'}", f"{base}:alert:max_calls",
                f"{base}:alert:repeat:{int(now // window_s)}"]
        verdict, count, first = await self._script(keys=keys, args=[
            repr(now), repr(float(window_s)), repeats,
            max_calls if max_calls is not None else -1, uuid.uuid4().hex, int(max(IDLE_EXECUTION_SECONDS, window_s))])
        return {0: None, 1: "max_calls", 2: "repeat"}[int(verdict)], int(count), bool(int(first))

    async def close(self) -> None:
        await self.redis.aclose()

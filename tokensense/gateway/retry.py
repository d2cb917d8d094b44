"""Retries and fallbacks: which (model, provider) to try for a call, in what order, and how long to wait.

Pure functions; the gateway drives them (`tokensense.gateway.attempts`).

- A call first tries the model the client asked for. A failed attempt is retried
  (`[routing] retries`, default 1) when it failed retryably: no answer (connection
  refused or reset, timeout before the first byte) or status 429, 500, 502, 503,
  504, 529. The wait before a retry is the provider's `Retry-After` when it sent
  one (a longer one than `[routing] max_retry_wait` is not waited for: the call
  moves on), else exponential backoff with jitter.
- Once a model's retries are used up, the next fallback is tried: the
  `x-tokensense-fallbacks` header's list if the request has one, else
  `[fallbacks]` for the model in `config.toml`. A fallback the endpoint cannot
  serve, or the key may not use, is skipped (and said in the log).
- A 401/403 means the provider key is bad, not the request: another key of the
  pool is tried at once, else the next fallback.
- Nothing is retried once the first byte of an answer went to the client.
"""

from __future__ import annotations

import fnmatch
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from tokensense.config import FileConfig, RoutingConfig, Timeouts
from tokensense.core.errors import GatewayError

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
KEY_REFUSED_STATUSES = frozenset({401, 403})
FALLBACKS_HEADER = "x-tokensense-fallbacks"
ATTEMPTS_HEADER = "x-tokensense-attempts"
SERVED_BY_HEADER = "x-tokensense-served-by"
MAX_HEADER_FALLBACKS = 5
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")


def is_retryable(status: int | None) -> bool:
    """Whether an attempt that ended with `status` (None: no answer at all) may be tried again."""
    return status is None or status in RETRYABLE_STATUSES


# --- what to try -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model to try, and the provider that serves it."""

    requested: str  # as the client, `[fallbacks]` or the header named it (`provider/model` included)
    model: str  # as the provider wants it
    provider: str
    fallback: int = 0  # 0: the client's own model; 1, 2, ...: the fallbacks in order

    @property
    def served_by(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class Skipped:
    requested: str
    reason: str  # "not served on /v1/messages", "not allowed for this key", ...


def parse_fallbacks_header(value: str | None) -> list[str]:
    """The models of an `x-tokensense-fallbacks: a,b` header, in order; a 400 when it is malformed."""
    if value is None:
        return []
    names = [name.strip() for name in value.split(",")]
    names = [name for name in names if name]
    bad = [name for name in names if not _MODEL_NAME.match(name)]
    if bad:
        raise GatewayError(400, f"The {FALLBACKS_HEADER} header names a model that is not a model name: "
                           f"{bad[0][:80]!r}. Give model names separated by commas.", code="invalid_fallbacks")
    if len(names) > MAX_HEADER_FALLBACKS:
        raise GatewayError(400, f"The {FALLBACKS_HEADER} header names {len(names)} models; at most "
                           f"{MAX_HEADER_FALLBACKS} are allowed.", code="invalid_fallbacks")
    return list(dict.fromkeys(names))


def fallback_models(config: FileConfig, requested: str, model: str, header: Sequence[str] | None) -> list[str]:
    """The fallbacks of a call: the header's list when the request has one, else `[fallbacks]` for the
    model as the client named it, else for the model's own name."""
    if header:
        return list(header)
    return list(config.fallbacks.get(requested) or config.fallbacks.get(model) or ())


def plan_candidates(first: Candidate, fallbacks: Iterable[str],
                    resolve: Callable[[str], Candidate | str]) -> tuple[list[Candidate], list[Skipped]]:
    """The models to try in order: `first`, then each fallback `resolve` accepts.

    `resolve(name)` gives the fallback's Candidate, or the reason it cannot be used
    (unknown model, not served on this endpoint, not allowed for the key, no provider key).
    A model already in the plan is not tried twice.
    """
    plan, skipped = [first], []
    for name in fallbacks:
        resolved = resolve(name)
        if isinstance(resolved, str):
            skipped.append(Skipped(name, resolved))
            continue
        if any((c.provider, c.model) == (resolved.provider, resolved.model) for c in plan):
            continue
        plan.append(Candidate(name, resolved.model, resolved.provider, fallback=len(plan)))
    return plan, skipped


# --- how long to wait --------------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds the provider asked to wait: `retry-after-ms`, else `retry-after` (seconds or an HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = -1.0
        if 0 <= ms < float("inf"):  # NaN compares false
            return ms / 1000
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            moment = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())
    return seconds if 0 <= seconds < float("inf") else None


def backoff_wait(retry: int, routing: RoutingConfig, rng: random.Random | None = None) -> float:
    """The wait before retry number `retry` (1, 2, ...) without a Retry-After: exponential, equal jitter.

    The ceiling doubles from `backoff` up to `max_backoff`; the wait is between half of it and all of it.
    """
    ceiling = min(routing.max_backoff, routing.backoff * 2 ** max(retry - 1, 0))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class Action(StrEnum):
    RETRY = "retry"  # the same model again (another key of the pool when one is usable)
    FALLBACK = "fallback"  # the next model of the plan
    GIVE_UP = "give_up"  # answer the client with this attempt's result


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    wait: float = 0.0  # seconds before the next attempt
    reason: str = ""
    uses_retry: bool = True  # whether the next attempt counts against `[routing] retries`


def next_step(*, status: int | None, retry_after: float | None, retries_used: int, routing: RoutingConfig,
              has_fallback: bool, other_key: bool, first_byte_sent: bool = False,
              rng: random.Random | None = None) -> Step:
    """What to do after an attempt of the current model failed with `status` (None: no answer).

    `retries_used`: retries of this model so far; `other_key`: whether another key of the
    provider's pool is usable now; `has_fallback`: whether a later model is in the plan.
    """
    if first_byte_sent:
        return Step(Action.GIVE_UP, reason="the answer had started reaching the client")
    move_on = Action.FALLBACK if has_fallback else Action.GIVE_UP
    if status in KEY_REFUSED_STATUSES:
        if other_key:
            return Step(Action.RETRY, reason=f"the provider refused the key ({status}); another key of the pool",
                        uses_retry=False)
        return Step(move_on, reason=f"the provider refused the key ({status})")
    if not is_retryable(status):
        return Step(Action.GIVE_UP, reason=f"status {status} is not retried")
    what = "no answer" if status is None else f"status {status}"
    if retries_used >= routing.retries:
        return Step(move_on, reason=f"{what}; retries used up ({routing.retries})")
    if status == 429 and other_key:
        return Step(Action.RETRY, reason="rate limited (429); another key of the pool")
    if retry_after is not None:
        if retry_after > routing.max_retry_wait:
            return Step(move_on, reason=f"{what}; Retry-After {retry_after:g}s is over max_retry_wait "
                                        f"({routing.max_retry_wait:g}s)")
        return Step(Action.RETRY, wait=retry_after, reason=f"{what}; Retry-After {retry_after:g}s")
    return Step(Action.RETRY, wait=backoff_wait(retries_used + 1, routing, rng), reason=f"{what}; backoff")


# --- timeouts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    first_byte: float | None  # seconds until the answer's headers (None: no limit)
    total: float | None  # seconds until the answer's last byte (None: no limit)


def timeouts_for(routing: RoutingConfig, provider: str, model: str, *,
                 default_first_byte: float | None) -> UpstreamTimeouts:
    """The timeouts of an attempt: the model's entry, else a matching pattern's, else the provider's,
    else the default (`TOKENSENSE_UPSTREAM_TIMEOUT` for the first byte, no total limit); field by field."""
    entries = routing.timeouts
    layers: list[Timeouts] = []
    if model in entries:
        layers.append(entries[model])
    patterns = sorted((p for p in entries if any(ch in p for ch in "*?[") and fnmatch.fnmatchcase(model, p)),
                      key=len, reverse=True)  # the longest pattern is the most specific
    layers.extend(entries[p] for p in patterns)
    if provider in entries:
        layers.append(entries[provider])
    first_byte = next((t.first_byte for t in layers if t.first_byte is not None), None)
    total = next((t.total for t in layers if t.total is not None), None)
    if first_byte is None:
        first_byte = default_first_byte if default_first_byte and default_first_byte > 0 else None
    if first_byte is not None and total is not None:
        first_byte = min(first_byte, total)
    return UpstreamTimeouts(first_byte, total)


def pool_policy(routing: RoutingConfig):  # type: ignore[no-untyped-def]
    """The provider-key pools' policy from `[routing]`."""
    from tokensense.gateway.key_pool import PoolPolicy

    return PoolPolicy(cooldown=routing.key_cooldown, breaker_failures=routing.breaker_failures,
                      breaker_cooldown=routing.breaker_cooldown)

"""The attempt loop of one call: candidates in order, keys from the pools, retries with their waits.

`run_attempts` drives the pure decisions of `tokensense.gateway.retry` and the key
pools of `tokensense.gateway.key_pool` over a plan of candidates. It knows nothing of
mitmproxy or HTTP clients: the gateway gives it

- `police(candidate)`: checks the key's policy for a fallback and reserves its
  budget; returns None when the candidate may be tried, else why not (skipped);
- `send(candidate, credential, timeouts)`: makes one upstream attempt and returns
  as soon as the answer's status and headers are in (before any byte went to the
  client), or when there was no answer (an answer whose headers came but whose
  body was too slow is no answer, with the headers' status in `header_status`:
  the key worked);
- `discard(outcome)`: closes a failed attempt's answer that will not be used.

It returns the answer to give the client (the first success, or the last failure)
and every attempt made, in order, for the records and the `x-tokensense-attempts`
header.

Every answer is reported to the key pools, which steer the next picks: a resting
key is passed over while another key or a later candidate can serve, and tried
anyway when nothing else can. So the client gets a provider's own answer (the
last attempt's, its status and body) whenever a key of the plan could be used;
TokenSense answers for a provider only when no key can be used at all (every key
taken out: 503) or no model of the plan may be used (403).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokensense.config import RoutingConfig
from tokensense.gateway.key_pool import KeyPools, KeyState, outcome_for
from tokensense.gateway.retry import Action, Candidate, Skipped, UpstreamTimeouts, next_step, parse_retry_after

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AttemptOutcome:
    """What one upstream attempt gave, up to the first byte of its answer."""

    status: int | None  # None: no answer (connection refused or reset, timeout before the first byte)
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None  # why there was no answer, or the provider's error message
    answer: Any = None  # the caller's handle on the answer (to forward or to discard)
    synthetic: bool = False  # made by the gateway: no key of the provider was usable, nothing was sent
    # No usable answer (`status` None), but the answer's headers came with this status before its body
    # failed (too slow for the total timeout): the provider accepted the key, which is not failing.
    header_status: int | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400


@dataclass(frozen=True, slots=True)
class MadeAttempt:
    """An attempt of the plan's first candidate made already (the gateway's native first attempt),
    with its answer already reported to the key pools."""

    key: Any  # the PooledKey it used
    outcome: AttemptOutcome
    state: KeyState  # the key's state after that answer
    probe: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """One upstream attempt: a usage record of its own, linked to the call by its request id."""

    number: int  # 1, 2, ... (the record's `attempt`)
    candidate: Candidate
    key_name: str
    status: int | None
    error: str | None
    waited: float  # seconds waited before it
    probe: bool  # the half-open probe of the key's circuit
    key_state: KeyState  # the key's state once this answer was reported

    @property
    def summary(self) -> str:
        """`openai/gpt-4o-mini:503` for the `x-tokensense-attempts` list."""
        return f"{self.candidate.served_by}:{self.status if self.status is not None else 'no-answer'}"


@dataclass(slots=True)
class AttemptsResult:
    outcome: AttemptOutcome  # what the client gets
    attempts: list[Attempt]
    skipped: list[Skipped]
    served_by: Candidate | None  # the candidate whose answer the client gets (None: no attempt was made)

    def headers(self) -> dict[str, str]:
        """`x-tokensense-attempts` (how many upstream attempts) and `x-tokensense-served-by: provider/model`."""
        out = {"x-tokensense-attempts": str(len(self.attempts))}
        if self.served_by is not None:
            out["x-tokensense-served-by"] = self.served_by.served_by
        return out


def _no_key(candidate: Candidate, retry_after: float | None, states: Mapping[str, KeyState] | None) -> AttemptOutcome:
    described = ", ".join(f"{name} {state.value}" for name, state in (states or {}).items()) or "none"
    if retry_after is not None:
        return AttemptOutcome(429, {"retry-after": str(max(1, int(-(-retry_after // 1))))},
                              f"every {candidate.provider} key is resting ({described}); one is usable again in "
                              f"{retry_after:.0f}s", synthetic=True)
    return AttemptOutcome(503, {}, f"no {candidate.provider} key can be used ({described}); "
                                   "`tokensense providers restore` puts a refused key back", synthetic=True)


async def run_attempts(
    plan: Sequence[Candidate],
    *,
    pools: KeyPools,
    routing: RoutingConfig,
    credentials: Callable[[str], Sequence[Any]],
    send: Callable[[Candidate, Any, UpstreamTimeouts], Awaitable[AttemptOutcome]],
    timeouts: Callable[[Candidate], UpstreamTimeouts],
    police: Callable[[Candidate], Awaitable[str | None]] | None = None,
    discard: Callable[[AttemptOutcome], Awaitable[None]] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    rng: random.Random | None = None,
    request_id: str = "",
    first: MadeAttempt | None = None,
) -> AttemptsResult:
    """Try the plan's candidates in order until one answers (see the module docstring).

    `first`: the first candidate's first attempt, made already by the caller; the loop
    goes on from its outcome (retry, other key, fallback or give up).

    Resting keys only steer: a candidate whose keys all rest is passed over while a later
    one may serve; the last candidate, and a passed-over one when no candidate got any
    answer from its provider, use their resting key (`KeyPools.pick`).
    """
    attempts: list[Attempt] = []
    skipped: list[Skipped] = []
    # The latest failed answer: the client's answer if nothing better comes, closed once replaced.
    last: AttemptOutcome | None = None
    last_candidate: Candidate | None = None
    passed_over: list[int] = []  # candidates whose keys all rested while a later one could serve

    async def replace_last(outcome: AttemptOutcome, candidate: Candidate | None) -> None:
        nonlocal last, last_candidate
        if last is not None and not last.synthetic and discard is not None:
            await discard(last)
        last, last_candidate = outcome, candidate

    async def try_candidate(index: int, candidate: Candidate, has_fallback: bool) -> AttemptsResult | None:
        """The attempts of one candidate: the call's result when it ends here, None to go on with the plan."""
        nonlocal last, last_candidate
        retries_used, wait = 0, 0.0
        tried: set[str] = set()
        while True:
            pool = credentials(candidate.provider)
            if first is not None and index == 0 and not attempts:
                key, probe, outcome = first.key, first.probe, first.outcome
                retry_after = parse_retry_after(outcome.headers) if outcome.status is not None else None
                state = first.state
            else:
                if wait:
                    await sleep(wait)
                pick = await pools.pick(candidate.provider, pool, exclude=tried, others_can_serve=has_fallback)
                if pick.key is None:
                    outcome = _no_key(candidate, pick.retry_after, pick.states)
                    log.info("request %s: %s", request_id, outcome.error)
                    if pick.retry_after is not None and index not in passed_over:
                        passed_over.append(index)
                    if last is None or last.synthetic:
                        last, last_candidate = outcome, None
                    return None
                if pick.resting:
                    log.info("request %s: every %s key rests; key %s is tried (%s), nothing else can serve the call",
                             request_id, candidate.provider, pick.key.name,
                             pick.state.value if pick.state else "resting")
                key, probe = pick.key, pick.probe
                outcome = await send(candidate, key, timeouts(candidate))
                retry_after = parse_retry_after(outcome.headers) if outcome.status is not None else None
                # An answer whose headers came before its body failed (too slow) shows the key works.
                answered = outcome.status if outcome.status is not None else outcome.header_status
                state = await pools.report(candidate.provider, key.name, outcome_for(answered),
                                           retry_after=retry_after,
                                           reason=f"{outcome.status}: {outcome.error or 'refused'}"[:300])
            attempts.append(Attempt(len(attempts) + 1, candidate, key.name, outcome.status, outcome.error,
                                    wait, probe, state))
            await replace_last(outcome, candidate)
            if outcome.ok:
                return AttemptsResult(outcome, attempts, skipped, candidate)
            tried.add(key.name)
            step = next_step(status=outcome.status, retry_after=retry_after, retries_used=retries_used,
                             routing=routing, has_fallback=has_fallback,
                             other_key=pools.has_usable(candidate.provider, pool, tried), rng=rng)
            log.info("request %s: attempt %d (%s, key %s) failed: %s; %s", request_id, len(attempts),
                     candidate.served_by, key.name, step.reason, step.action.value)
            if step.action is Action.GIVE_UP:
                return AttemptsResult(outcome, attempts, skipped, candidate)
            if step.action is Action.FALLBACK:
                return None
            if step.uses_retry:
                retries_used += 1
            wait = step.wait

    for index, candidate in enumerate(plan):
        if index and police is not None:
            refusal = await police(candidate)
            if refusal is not None:
                log.info("request %s: fallback %s skipped: %s", request_id, candidate.requested, refusal)
                skipped.append(Skipped(candidate.requested, refusal))
                continue
        result = await try_candidate(index, candidate, has_fallback=index < len(plan) - 1)
        if result is not None:
            return result
    if (last is None or last.synthetic) and passed_over:
        # No provider answered anything: the later candidates were skipped or had no key either.
        # The first one passed over tries its resting key rather than TokenSense answering for it.
        index = passed_over[0]
        result = await try_candidate(index, plan[index], has_fallback=False)
        if result is not None:
            return result
    if last is None:  # every candidate was skipped before any attempt
        last = AttemptOutcome(403, {}, "no model of the plan may be used with this key", synthetic=True)
    return AttemptsResult(last, attempts, skipped, last_candidate)

"""Settle stage: the one place where an attempt of a call becomes its usage record, exactly once per attempt.

`settle` writes the call's own record (its last attempt: the answer the client
got) and settles what the police stage reserved for it; `settle_failed` writes
the record of an earlier attempt that a retry or fallback followed. Both go
through `_write`: priced, queued to the recorder, handed to the observers.
Nothing else in the gateway builds or submits a usage record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from tokensense.core.endpoints import Endpoint
from tokensense.core.usage import TokenUsage
from tokensense.gateway.call import CallContext, Record
from tokensense.gateway.record import build_record
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.police import book_spend, settle_counters, spend_holds
from tokensense.gateway.typical_output import observe_output
from tokensense.metering.usage_extract import with_request_tier
from tokensense.providers import ProviderAdapter
from tokensense.storage.models import UsageCreate

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """An attempt a retry or fallback followed, as its record needs it."""

    number: int  # the record's `attempt`
    provider: ProviderAdapter | None
    model: str
    status: int  # the provider's status; 502/504 when there was no answer
    error: str | None
    started: float  # perf_counter when it was sent
    first_byte: float | None


def settle(runtime: Runtime, call: CallContext, status: int) -> UsageCreate | None:
    """Write the call's own record once (None if it is not due: written already, or not a provider call)."""
    if call.record_state not in (Record.DUE, Record.DEFERRED):
        return None
    call.record_state = Record.WRITTEN
    call.status = status
    if call.provider is not None:  # the answer's service tier, else the one the request asked for
        usage = call.usage or (call.stream_usage.result() if call.stream_usage else None)
        call.usage = with_request_tier(usage, call.sent_body)
    record = build_record(call, status=status, prices=runtime.prices)
    if call.policed is not None and call.policed.passed and call.policed.budgets:
        # `/v1/tokensense/requests/{id}` shows which budgets the call was counted against.
        record.details = {**(record.details or {}), "budgets": call.policed.budget_tags}
    settle_counters(runtime.counters, call, call.policed, tokens=record.input_tokens + record.output_tokens,
                    cost=record.cost_usd)
    if runtime.typical is not None:  # [budgets] reserve = "typical": the model's outputs seen
        observe_output(runtime.typical, call, record)
    _write(runtime, record, call.on_record)
    return record


def settle_failed(runtime: Runtime, call: CallContext, attempt: FailedAttempt) -> UsageCreate:
    """Write the record of a failed attempt of `call` (its status; a cost only if the provider billed it)."""
    snapshot = replace(call, provider=attempt.provider, model=attempt.model, usage=None, stream_usage=None,
                       translator=None, error=attempt.error, status=attempt.status, started=attempt.started,
                       first_byte=attempt.first_byte, first_token=None, media_cost=None, on_record=[],
                       on_attempt_record=[], watchdog=None, attempt=attempt.number)
    record = build_record(snapshot, status=attempt.status, prices=runtime.prices)
    _write(runtime, record, call.on_attempt_record)
    book_spend(runtime.counters, call.policed, record.cost_usd)  # its budgets (the call's), billed all the same
    return record


def settle_booking(runtime: Runtime, call: CallContext, *, request_id: str, endpoint: Endpoint, model: str | None,
                   attribution: dict[str, str | None], usage: TokenUsage, cost: float | None) -> UsageCreate:
    """Write the record of a job booked apart from the call that saw it finish (a video job, once, when an answer
    shows it completed), and charge its cost to every budget its key and attribution count in (`spend_holds`).

    Its request id is the job's id (with attempt 1: stored once, whichever instance writes it), its attribution the
    creating call's; `cost` None: unpriced.
    """
    snapshot = replace(call, request_id=request_id, attempt=1, route_endpoint=endpoint, model=model, usage=usage,
                       stream_usage=None, translator=None, media_cost=cost, usage_unknown=cost is None, free=False,
                       attribution=dict(attribution), error=None, status=200, stream=False, first_token=None,
                       on_record=[], on_attempt_record=[], watchdog=None)
    record = build_record(snapshot, status=200, prices=runtime.prices)
    _write(runtime, record, call.on_attempt_record)
    if record.cost_usd and call.key is not None and runtime.counters is not None:
        book_spend(runtime.counters, spend_holds(call.key, attribution, runtime.budgets), record.cost_usd)
    return record


def _write(runtime: Runtime, record: UsageCreate, observers: Iterable[Callable[[UsageCreate], None]]) -> None:
    if runtime.recorder is not None:
        runtime.recorder.submit(record)
    for observe in observers:
        try:
            observe(record)
        except Exception:
            log.exception("usage record callback failed")

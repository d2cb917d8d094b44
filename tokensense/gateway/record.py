"""Turning a finished call into its priced usage record."""

from __future__ import annotations

import time

from tokensense.core.usage import TokenUsage
from tokensense.gateway.call import CallContext
from tokensense.metering.pricing import PriceBook
from tokensense.metering.sanitize import MAX_ATTRIBUTE, MAX_ERROR, MAX_NAME, clean_text
from tokensense.storage.models import UsageCreate


def call_cost(prices: PriceBook, prices_id: str | None, model: str | None, usage: TokenUsage,
              media_cost: float | None) -> float | None:
    """What a call cost: its tokens (every counter, at its service tier) plus its media units.

    None when the call used tokens that no price covers (unpriced, not free).
    Live metering and `tokensense reprice` both price with this.
    """
    cost: float | None = 0.0
    if prices_id is not None and model and usage.has_tokens:
        cost = prices.cost(prices_id, model, usage)
    if cost is not None and media_cost:
        cost += media_cost
    return None if cost is None else round(cost, 10)


def build_record(call: CallContext, *, status: int, prices: PriceBook) -> UsageCreate:
    """The usage record for a finished call, priced (cost None: unpriced), with the full usage breakdown."""
    usage = call.usage or (call.stream_usage.result() if call.stream_usage else TokenUsage())
    cost = call_cost(prices, call.provider.prices_id if call.provider else None, call.model, usage,
                     call.media_cost)
    if call.free:  # count_tokens and the like: the provider charges nothing for them
        cost = 0.0
    elif call.usage_unknown:  # tokens were used but could not be counted: unpriced, never a silent $0
        cost = None
    details = {**(usage.details() or {}), "transport": call.transport} if call.transport else usage.details()
    if call.details:
        details = {**(details or {}), **call.details}
    end = time.perf_counter()
    first = call.first_token if call.stream else call.first_byte
    return UsageCreate(
        request_id=call.request_id,
        attempt=call.attempt,
        key_id=call.key.id if call.key else None,
        key_name=clean_text(call.key.name, MAX_NAME) if call.key else None,
        provider=call.provider.name if call.provider else None,
        # A refused call (404 unknown model, 403, 402, 429, 400) keeps the model the client asked for.
        model=clean_text(call.model or call.requested_model, MAX_NAME),
        endpoint=call.route_endpoint.value,
        status=status,
        error=clean_text(call.error, MAX_ERROR),
        stream=call.stream,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        images=usage.images,
        characters=usage.characters,
        seconds=usage.seconds,
        cost_usd=cost,
        details=details,
        latency_ms=round((end - call.started) * 1000, 3),
        ttft_ms=round((first - call.started) * 1000, 3) if first else None,
        # Every path that sets attribution goes through `attribution()`, but a record
        # must be storable whatever reached the call: cleaned again (cheap for clean text).
        **{name: clean_text(value, MAX_ATTRIBUTE) for name, value in call.attribution.items()},
    )

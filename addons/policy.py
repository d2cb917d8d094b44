"""Enforces each key's policies before a call goes upstream: 403 access, 429 rate limits, 402 budgets."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from mitmproxy import http

from addons.common import answer_error, get_call
from tokensense.core.errors import GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.gateway.call import CallContext
from tokensense.gateway.flowmeta import RATE
from tokensense.gateway.limits import RateDecision
from tokensense.gateway.policy import budget_window, check_access, estimate_cost, estimate_usage, limits_for
from tokensense.gateway.price_policy import unpriced_refusal
from tokensense.gateway.reservation import budget_refusal, call_reservation
from tokensense.gateway.routing import MEDIA_ENDPOINTS
from tokensense.gateway.runtime import Runtime
from tokensense.storage.models import UsageCreate

log = logging.getLogger(__name__)


_LIMITS_UNAVAILABLE = GatewayError(503, "TokenSense cannot check this key's limits right now; retry shortly.",
                                   code="limits_unavailable")


class Policy:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._tasks: set[asyncio.Task] = set()

    async def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.key is None or call.provider is None:
            return
        counters = self.runtime.counters
        assert counters is not None and call.model is not None
        key = call.key
        try:
            check_access(key, call.provider, call.model, call.requested_model)
        except GatewayError as e:
            answer_error(flow, call.fmt, e)
            return
        if call.route_endpoint not in MEDIA_ENDPOINTS and not call.free and (refusal := unpriced_refusal(
                key, self.runtime.prices, call.provider, call.model, call.requested_model)):
            answer_error(flow, call.fmt, refusal)
            return

        limits = limits_for(key)
        if limits.rpm is None and limits.tpm is None and key.budget_usd is None:
            call.policed = True
            return  # nothing to count for this key
        body = call.sent_body
        estimate = estimate_usage(body) if isinstance(body, dict) else TokenUsage()
        if limits.rpm is not None or limits.tpm is not None:
            tokens = estimate.input_tokens + estimate.output_tokens
            try:
                decision = await counters.acquire_rate(key.id, call.request_id, limits.rpm, limits.tpm, tokens)
            except Exception as e:  # counters unavailable: refuse rather than serve unchecked
                log.warning("rate-limit counters unavailable, refusing: %s", type(e).__name__)
                answer_error(flow, call.fmt, _LIMITS_UNAVAILABLE)
                return
            else:
                flow.metadata[RATE] = decision
                if not decision.allowed:
                    limit = f"{decision.rpm} requests" if decision.limited_by == "requests" else f"{decision.tpm} tokens"
                    answer_error(flow, call.fmt, GatewayError(
                        429, f"The key `{key.name}` reached its limit of {limit} per minute; "
                        f"retry after {decision.retry_after:.1f}s.", code="rate_limit_exceeded"),
                        headers=decision.headers())
                    return
                call.on_record.append(partial(self._settle_tokens, call))

        if key.budget_usd is not None and not call.free:  # a free call (count_tokens) spends nothing
            window, start, resets_in = budget_window(key.budget_period)
            # The largest cost the call can have: its output cap as sent upstream, else the model's maximum.
            reservation = call_reservation(call, body) if isinstance(body, dict) else estimate
            amount = estimate_cost(self.runtime.prices, call.provider, call.model, reservation)
            try:
                budget = await counters.reserve_budget(
                    key.id, window, key.budget_usd, amount,
                    lambda: self.runtime.spent_since(key.id, start), (resets_in or 0) + 3600)
            except Exception as e:
                log.warning("budget counters unavailable, refusing: %s", type(e).__name__)
                answer_error(flow, call.fmt, _LIMITS_UNAVAILABLE)
                return
            if not budget.allowed:  # 429 while held by calls in flight, 402 once spent
                error, headers = budget_refusal(key.name, key.budget_usd, key.budget_period, budget)
                answer_error(flow, call.fmt, error, headers={**_rate_headers(flow), **headers})
                return
            call.on_record.append(partial(self._settle_budget, call, window, amount))
        call.policed = True

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            flow.response.headers.update(_rate_headers(flow))

    def response(self, flow: http.HTTPFlow) -> None:
        # Answers TokenSense made itself (4xx before forwarding) get the headers here.
        if flow.response is not None and RATE in flow.metadata and \
                "x-ratelimit-limit-requests" not in flow.response.headers and \
                "x-ratelimit-limit-tokens" not in flow.response.headers:
            flow.response.headers.update(_rate_headers(flow))

    def _settle_tokens(self, call: CallContext, record: UsageCreate) -> None:
        assert call.key is not None and self.runtime.counters is not None
        self._spawn(self.runtime.counters.settle_tokens(call.key.id, call.request_id,
                                                        record.input_tokens + record.output_tokens))

    def _settle_budget(self, call: CallContext, window: str, reserved: float, record: UsageCreate) -> None:
        assert call.key is not None and self.runtime.counters is not None
        self._spawn(self.runtime.counters.settle_budget(call.key.id, window, reserved, record.cost_usd or 0.0))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("settling counters failed: %s", type(task.exception()).__name__)

    async def done(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


def _rate_headers(flow: http.HTTPFlow) -> dict[str, str]:
    decision: RateDecision | None = flow.metadata.get(RATE)
    if decision is None:
        return {}
    headers = decision.headers()
    if decision.allowed:
        headers.pop("retry-after", None)
    return headers

"""Police stage addon: runs `police` (gateway/stages/police.py) on the parsed call; 403, 429, 402 or on it goes."""

from __future__ import annotations

from mitmproxy import http

from addons.common import answer_error, get_call
from tokensense.gateway.flowmeta import RATE
from tokensense.gateway.limits import RateDecision
from tokensense.gateway.runtime import Runtime
from tokensense.gateway.stages.police import Refused, Target, drain, police


class Policy:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if flow.response or flow.error or call is None or call.key is None or call.provider is None:
            return
        if call.policed is not None:  # policed already by the addon that routed it (batch jobs and files)
            return
        target = Target(call.provider, call.model or "", call.requested_model,  # "": a passthrough naming no model
                        call.sent_body if isinstance(call.sent_body, dict) else None)
        runtime = self.runtime
        try:
            call.policed = await police(call, target, prices=runtime.prices, counters=runtime.counters,
                                        spent_since=runtime.spent_since, guard=runtime.guard,
                                        budgets=runtime.budgets, typical=runtime.typical)
        except Refused as refused:
            call.policed = refused.held  # a rate entry it took is settled with its record
            if refused.held is not None and refused.held.rate is not None:
                flow.metadata[RATE] = refused.held.rate
            answer_error(flow, call.fmt, refused.error, headers={**_rate_headers(flow), **refused.headers})
            return
        if call.policed.rate is not None:
            flow.metadata[RATE] = call.policed.rate

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            flow.response.headers.update(_rate_headers(flow))

    def response(self, flow: http.HTTPFlow) -> None:
        # Answers TokenSense made itself (4xx before forwarding) get the headers here.
        if flow.response is not None and RATE in flow.metadata and \
                "x-ratelimit-limit-requests" not in flow.response.headers and \
                "x-ratelimit-limit-tokens" not in flow.response.headers:
            flow.response.headers.update(_rate_headers(flow))

    async def done(self) -> None:
        await drain()


def _rate_headers(flow: http.HTTPFlow) -> dict[str, str]:
    decision: RateDecision | None = flow.metadata.get(RATE)
    if decision is None:
        return {}
    headers = decision.headers()
    if decision.allowed:
        headers.pop("retry-after", None)
    return headers

"""Retries and fallbacks stage: after a failed first attempt, the rest of the call's plan (see gateway/reliability.py).

Runs after the answer stages of the first attempt and before metering: the answer
it leaves on the flow (the native one, or the one of the attempt that succeeded)
is the one metered and recorded as the call's own; it records the failed attempts.
"""

from __future__ import annotations

from mitmproxy import http

from addons.common import get_call
from tokensense.gateway.flowmeta import NO_ANSWER
from tokensense.gateway.reliability import after_answer, after_no_answer, first_attempt_headers
from tokensense.gateway.runtime import Runtime


class Reliability:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        first_attempt_headers(flow)

    async def response(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is not None and call.provider_key is not None:
            await after_answer(self.runtime, flow, call)

    async def tokensense_upstream_failed(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is not None and call.provider_key is not None:
            await after_no_answer(self.runtime, flow, call, str(flow.metadata.get(NO_ANSWER, "no answer")))

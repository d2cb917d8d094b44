"""Forward stage: the upstream request is written to the flow in one step, and only after every gate passed.

Until this runs, a flow of the gateway points at the reverse-mode placeholder,
which nothing may reach: a call without a prepared upstream request, or one the
police stage did not pass, is answered with a JSON 500 instead (fail closed).
"""

from __future__ import annotations

from mitmproxy import http

from addons.common import answer_error, answer_internal_error, apply_upstream, get_call
from tokensense.core.errors import GatewayError
from tokensense.gateway.flowmeta import CALL
from tokensense.gateway.reliability import prepare_first_attempt, take_fallbacks_header
from tokensense.gateway.runtime import Runtime


class Forward:
    def __init__(self, runtime: Runtime | None = None) -> None:
        self.runtime = runtime  # None: the prepared credential goes as it is (no key pools, no fallbacks)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or CALL not in flow.metadata:
            return
        call = get_call(flow)
        if call is None:
            return  # intercept mode: not a provider call, TokenSense leaves it alone
        if call.forwarded and not call.intercepted:
            return  # an upload streamed to the provider: written in requestheaders, after its gates (addons/batches.py)
        if call.intercepted:
            # The client's own destination and key; only the gates can stop it.
            if call.key is not None and not call.may_send:
                answer_internal_error(flow)
                return
            call.forwarded = True
            return
        if call.pending is None or not call.may_send or call.key is None:
            answer_internal_error(flow)
            return
        if self.runtime is not None:
            try:
                take_fallbacks_header(call, flow.request)
                # The key of the provider's pool for the first attempt (no usable key: the call is answered here).
                if not await prepare_first_attempt(self.runtime, flow, call):
                    return
            except GatewayError as e:
                answer_error(flow, call.fmt, e)
                return
        apply_upstream(flow, call.pending)
        call.forwarded = True

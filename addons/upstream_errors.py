"""Deadlines per forwarded request: no response headers in time (first byte), or no whole answer in time (total).

mitmproxy has no per-request response timeout. A watchdog per forwarded request
cancels that upstream connection when the first-byte timeout passes without
response headers (`[routing.timeouts]` for the provider or model, else
`TOKENSENSE_UPSTREAM_TIMEOUT`), or when the total timeout passes before the answer
ended; the call may then be retried (no answer yet) or ends 504, and the error page
mitmproxy would send becomes JSON in the endpoint's shape (addons/mitmproxy_compat.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import ctx, http

from addons.common import get_call
from tokensense.gateway.call import CallContext
from tokensense.gateway.retry import UpstreamTimeouts, timeouts_for
from tokensense.gateway.runtime import Runtime

log = logging.getLogger(__name__)


class UpstreamErrors:
    def __init__(self, timeout: float, runtime: Runtime | None = None) -> None:
        self.timeout = timeout
        self.runtime = runtime  # its `[routing.timeouts]` (None: only the default first-byte timeout)
        self._default = UpstreamTimeouts(timeout if timeout > 0 else None, None)

    def _timeouts(self, call: CallContext) -> UpstreamTimeouts:
        routing = self.runtime.config.routing if self.runtime is not None else None
        if routing is None or not routing.timeouts or call.provider is None:
            return self._default
        return timeouts_for(routing, call.provider.name, call.model or "", default_first_byte=self.timeout)

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response or flow.error or not call.forwarded or call.provider is None:
            return
        timeouts = self._timeouts(call)
        wait = timeouts.first_byte or timeouts.total
        if wait is None:
            return
        call.timeout = wait
        call.watchdog = asyncio.get_running_loop().call_later(wait, self._expire, flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)
        call = get_call(flow)
        if call is None or not call.forwarded or call.provider is None or self.runtime is None:
            return
        total = self._timeouts(call).total
        if total is not None:
            left = max(0.0, total - (time.perf_counter() - call.started))
            call.watchdog = asyncio.get_running_loop().call_later(left, self._expire_total, flow, total)

    def response(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)
        call = get_call(flow)
        if call is not None and call.status is None:
            if call.timed_out:
                call.status = 504
            elif flow.error is not None and "client" in flow.error.msg.lower():
                call.status = 499  # the client left before the answer ended (nginx's "client closed request")
            else:
                call.status = 502
            if call.timed_out and call.error is None:
                call.error = f"The provider did not answer within {call.timeout or self.timeout:g} seconds."

    def _cancel(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is not None and call.watchdog is not None:
            call.watchdog.cancel()
            call.watchdog = None

    def _expire_total(self, flow: http.HTTPFlow, total: float) -> None:
        call = get_call(flow)
        if call is None or flow.error is not None or flow.response is None or flow.response.timestamp_end:
            return
        call.timed_out = True
        call.error = f"The provider's answer did not complete within {total:g} seconds."
        self._cut(flow, call)

    def _expire(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None or flow.error is not None:
            return
        call.timed_out = True
        self._cut(flow, call)

    def _cut(self, flow: http.HTTPFlow, call: CallContext) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(flow.client_conn.id) if proxyserver else None
        io = handler.transports.get(flow.server_conn) if handler else None
        if io is None or io.handler is None:
            log.warning("request %s timed out but its upstream connection was not found", call.request_id)
            return
        io.handler.cancel("upstream timeout")

"""A deadline per forwarded request: when the provider sends no response headers in time, the call ends 504.

mitmproxy has no per-request response timeout. A watchdog per forwarded request
cancels that upstream connection when `TOKENSENSE_UPSTREAM_TIMEOUT` passes
without response headers; the error page mitmproxy would then send becomes JSON
in the endpoint's shape (addons/mitmproxy_compat.py).
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx, http

from addons.common import get_call

log = logging.getLogger(__name__)


class UpstreamErrors:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response or flow.error or not call.forwarded or call.provider is None \
                or self.timeout <= 0:
            return
        call.timeout = self.timeout
        call.watchdog = asyncio.get_running_loop().call_later(self.timeout, self._expire, flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)
        call = get_call(flow)
        if call is not None and call.status is None:
            call.status = 504 if call.timed_out else 502
            if call.timed_out:
                call.error = f"The provider did not answer within {self.timeout:g} seconds."

    def _cancel(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is not None and call.watchdog is not None:
            call.watchdog.cancel()
            call.watchdog = None

    def _expire(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None or flow.response is not None or flow.error is not None:
            return
        call.timed_out = True
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(flow.client_conn.id) if proxyserver else None
        io = handler.transports.get(flow.server_conn) if handler else None
        if io is None or io.handler is None:
            log.warning("request %s timed out but its upstream connection was not found", call.request_id)
            return
        io.handler.cancel("upstream timeout")

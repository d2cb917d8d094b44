"""Upstream failures answered as JSON in the endpoint's error shape: 502 unreachable, 504 too slow.

mitmproxy answers a failed upstream with an HTML page and has no hook to
replace it, and no per-request response timeout. This addon supplies both:
a watchdog per forwarded request that, when `TOKENSENSE_UPSTREAM_TIMEOUT`
passes without response headers, cancels that upstream connection; and a
wrapper around mitmproxy's HTTP/1 server that, for flows TokenSense handles,
writes a JSON error instead of the HTML page. (HTTP/2 clients still get
mitmproxy's own error response; the SDKs speak HTTP/1.1.)

The same wrapper drops empty body pieces of a streamed response. A stream
callable returns `b""` when it has nothing to send yet (half an SSE event, or
the usage chunk it removes), and mitmproxy's HTTP/1 server would write that
as a zero-length chunk, `0\r\n\r\n`, which is the end of a chunked body: the
client would stop reading there and take the rest of the stream for garbage.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx, http
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._events import ResponseData, ResponseProtocolError

from addons.common import get_call
from tokensense.gateway.errors import error_bytes
from tokensense.gateway.call import CallContext

log = logging.getLogger(__name__)

_ATTR = "_tokensense_call"  # set on the client's Request object, which the HTTP/1 layer also holds


def _json_error_response(call: CallContext, status: int, message: str) -> bytes:
    if call.timed_out:
        status = 504
        text = f"The provider did not answer within {call.timeout or 0:g} seconds."
    else:
        provider = call.provider.display_name if call.provider else "the provider"
        text = f"TokenSense could not get an answer from {provider}: {message}"
    call.status = status
    call.error = text
    body = error_bytes(call.fmt, status, text, code="upstream_timeout" if status == 504 else "upstream_error")
    response = http.Response.make(status, body, {"content-type": "application/json", "connection": "close",
                                                 "x-tokensense-request-id": call.request_id})
    from mitmproxy.net.http import http1

    return http1.assemble_response(response)


_original_send = _http1.Http1Server.send


def _send(self, event):  # type: ignore[no-untyped-def]
    # Not a generator itself: the common case hands mitmproxy's own generator back
    # without wrapping it (the caller does `yield from self.send(event)`).
    if isinstance(event, ResponseData):
        return _original_send(self, event) if event.data else ()
    if isinstance(event, ResponseProtocolError) and self.response is None and self.request is not None:
        call = getattr(self.request, _ATTR, None)
        status = event.code.http_status_code()
        if call is not None and status is not None:
            return _send_json_error(self.conn, call, status, event.message)
    return _original_send(self, event)


def _send_json_error(conn, call: CallContext, status: int, message: str):  # type: ignore[no-untyped-def]
    yield commands.SendData(conn, _json_error_response(call, status, message))
    yield commands.CloseConnection(conn)


def install_error_pages() -> None:
    if _http1.Http1Server.send is not _send:
        _http1.Http1Server.send = _send


class UpstreamErrors:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        install_error_pages()

    def request(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is None:
            return
        setattr(flow.request, _ATTR, call)
        if flow.response or flow.error or call.provider is None or self.timeout <= 0:
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



"""What TokenSense needs from mitmproxy that it has no hook for, in one place, for one mitmproxy version.

mitmproxy answers protocol errors (an unreachable upstream, a body over the
limit, a malformed request) with an HTML page, and it buffers a request body
even when an addon has already answered the request in `requestheaders`. Two
narrow patches of its HTTP layer change that:

- `Http1Server.send`: a `ResponseProtocolError` (mitmproxy's error page) is
  written as JSON in the endpoint's error shape instead, with the request id;
  `make_error_response` (a request mitmproxy could not even read) answers JSON
  too, without echoing the request line (it may carry a key).
- `HttpStream.state_consume_request_body`: the body of a request TokenSense
  refused in `requestheaders` (no valid key, unknown endpoint, too large) is
  read and dropped, never buffered; a body that grows past the call's limit
  while it arrives (chunked uploads) ends the request with 413.

- `HttpStream.handle_protocol_error`: when a forwarded request of a call got no
  answer at all (connection refused or reset, cut by the upstream watchdog) and
  nothing has gone to the client, TokenSense's own hook `tokensense_upstream_failed`
  runs first; when an addon answers the flow there (a retry or a fallback made
  with httpx), that answer is sent, through the response hook, instead of the error.

- `WebsocketLayer`: a WebSocket the gateway answers itself (the Responses API's,
  `flowmeta.WS_TERMINATED`; the handshake got its 101 from an addon, so there is
  no server connection) sends nothing towards a server: a ping from the client
  gets its pong from the gateway, a close is answered to the client alone.
  Without this, mitmproxy relays the close to a server connection it never
  opened and the connection crashes.

- `WebsocketLayer.relay_messages` stops a relayed client message that outgrows the flow's
  `flowmeta.WS_FRAME_LIMIT` while it arrives (close 1009), rather than buffering it whole; and it
  also takes a close that an addon asks for (`close_websocket`: an idle
  realtime session, a frame over the limit, a shutdown's drain): both sides get a close frame with the
  code and reason, and the websocket_end hook runs, as when a side closes. mitmproxy can inject
  messages but not a close.

All five are written against mitmproxy 12's internals: `install()` refuses to run on
another major version, loudly, rather than patching code it was not written for.
HTTP/2 clients still get mitmproxy's own error responses (the SDKs speak HTTP/1.1).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass

import wsproto.events
from mitmproxy import flow as mitm_flow
from mitmproxy import http
from mitmproxy import version as mitm_version
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy import events as mitm_events
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import ErrorCode, HttpErrorHook, HttpStream, _http1
from mitmproxy.proxy.layers.http._events import (
    RequestData,
    RequestEndOfMessage,
    RequestTrailers,
    ResponseProtocolError,
)
from mitmproxy.proxy.layers.websocket import WebsocketLayer, WebSocketMessageInjected
from mitmproxy.proxy.utils import expect
from mitmproxy.websocket import WebSocketMessage
from wsproto import ConnectionState
from wsproto.frame_protocol import Opcode

from tokensense.core.errors import ErrorShape, error_bytes
from tokensense.gateway import flowmeta
from tokensense.providers import DEFAULT_ERRORS, error_shape_for_path

log = logging.getLogger(__name__)

SUPPORTED_MAJOR = 12

_original_send = _http1.Http1Server.send
_original_make_error_response = _http1.make_error_response
_original_consume = HttpStream.state_consume_request_body
_original_handle_protocol_error = HttpStream.handle_protocol_error
_original_ws_start = WebsocketLayer.start
_original_ws_relay = WebsocketLayer.relay_messages


@dataclass
class UpstreamFailedHook(commands.StartHook):
    """A forwarded request of a TokenSense call got no answer, and nothing has gone to the client yet.

    An addon may answer the flow here (set `flow.response`): the client then gets that
    answer (the response hook runs for it) instead of the error; else the error hook follows.
    Why there was no answer is in `flow.metadata[flowmeta.NO_ANSWER]`.
    """

    name = "tokensense_upstream_failed"
    flow: http.HTTPFlow


def _error_response(request: http.Request | None, status: int, message: str) -> bytes:
    """The JSON answer that replaces mitmproxy's HTML error page."""
    call = flowmeta.call_of_request(request) if request is not None else None
    fmt = call.fmt if call is not None else error_shape_for_path(request.path if request is not None else "/")
    headers = {"content-type": "application/json", "connection": "close"}
    if call is not None:
        status, text, code = call.protocol_error(status, message)
        headers["x-tokensense-request-id"] = call.request_id
    else:
        text, code = _generic_message(status, message), "bad_request" if status < 500 else "proxy_error"
    body = error_bytes(fmt if isinstance(fmt, ErrorShape) else DEFAULT_ERRORS, status, text, code=code)
    if request is not None and request.method == "HEAD":
        body = b""
    return http1.assemble_response(http.Response.make(status, body, headers))


def _generic_message(status: int, message: str) -> str:
    if status == 413:
        return "The request body is too large."
    if status < 500:
        return "The request could not be read as HTTP; check the request line and headers."
    return "TokenSense could not complete the request."


def _make_error_response(status_code: int, message: str = "") -> bytes:
    """mitmproxy's error page for a request it could not read (no call, no format known): JSON, echoing nothing."""
    return _error_response(None, status_code, message)


def _send(self, event):  # type: ignore[no-untyped-def]
    # Not a generator itself: the common case hands mitmproxy's own generator back unwrapped.
    if isinstance(event, ResponseProtocolError) and self.response is None:
        status = event.code.http_status_code()
        if status is not None:
            return _send_json_error(self.conn, self.request, status, event.message)
    return _original_send(self, event)


def _send_json_error(conn, request, status: int, message: str):  # type: ignore[no-untyped-def]
    yield commands.SendData(conn, _error_response(request, status, message))
    yield commands.CloseConnection(conn)


@expect(RequestData, RequestTrailers, RequestEndOfMessage)
def _consume_request_body(self, event) -> Generator:  # type: ignore[no-untyped-def]
    if isinstance(event, RequestData):
        if flowmeta.body_refused(self.flow):
            return  # answered already: read and drop, never buffer
        limit = flowmeta.body_limit(self.flow)
        if limit is not None and len(self.request_body_buf) + len(event.data) > limit:
            yield from _too_large(self, limit)
            return
    yield from _original_consume(self, event)


def _too_large(stream: HttpStream, limit: int) -> Generator:
    message = flowmeta.body_too_large(stream.flow, limit)
    stream.request_body_buf.clear()
    stream.flow.error = mitm_flow.Error(message)
    yield HttpErrorHook(stream.flow)
    yield http_layers.SendHttp(
        ResponseProtocolError(stream.stream_id, message, ErrorCode.REQUEST_TOO_LARGE), stream.context.client)
    stream.client_state = stream.state_errored
    stream.flow.live = False


def _handle_protocol_error(self, event):  # type: ignore[no-untyped-def]
    flow = self.flow
    if (isinstance(event, ResponseProtocolError) and flow is not None and flow.response is None
            and flow.error is None and self.client_state == self.state_done
            and self.server_state not in (self.state_done, self.state_errored)
            and flowmeta.get_call(flow) is not None):
        flow.metadata[flowmeta.NO_ANSWER] = event.message
        yield UpstreamFailedHook(flow)
        if flow.response is not None and flow.error is None:
            yield from self.send_response()
            return
    yield from _original_handle_protocol_error(self, event)


def _filtered(layer: WebsocketLayer, commands_in: Generator) -> Generator:
    """The layer's commands, less those towards the server connection (there is none); replies passed back."""
    server = layer.context.server
    try:
        command = next(commands_in)
        while True:
            if isinstance(command, (commands.SendData, commands.CloseConnection)) and command.connection is server:
                command = commands_in.send(None)
                continue
            reply = yield command
            command = commands_in.send(reply)
    except StopIteration:
        return


def _ws_start(self, event):  # type: ignore[no-untyped-def]
    yield from _original_ws_start(self, event)
    if self.flow.metadata.get(flowmeta.WS_TERMINATED):
        client_ws = self.client_ws

        def to_no_server(ws_event):  # type: ignore[no-untyped-def]
            if isinstance(ws_event, wsproto.events.Ping):  # the client's ping: the gateway answers it
                return client_ws.send2(ws_event.response())
            return commands.Log("no server for this WebSocket: dropped", logging.DEBUG)

        self.server_ws.send2 = to_no_server


def close_websocket(flow: http.HTTPFlow, code: int, reason: str) -> bool:
    """Close a relayed WebSocket from the gateway: a close frame to the client and the server (False: not live)."""
    from mitmproxy import ctx

    proxyserver = ctx.master.addons.get("proxyserver")
    if proxyserver is None or flow.websocket is None or flow.websocket.timestamp_end is not None:
        return False
    # A close frame's reason is at most 123 bytes.
    flow.metadata[flowmeta.WS_CLOSE] = (code, reason.encode()[:123].decode(errors="ignore"))
    try:
        proxyserver.inject_event(WebSocketMessageInjected(flow, WebSocketMessage(Opcode.CLOSE, False, b"")))
    except ValueError:  # the connection is gone already
        return False
    return True


def _ws_relay(self, event):  # type: ignore[no-untyped-def]
    if isinstance(event, WebSocketMessageInjected) and event.message.type == Opcode.CLOSE:
        close = self.flow.metadata.pop(flowmeta.WS_CLOSE, None)
        if close is None or self.server_ws.state is not ConnectionState.OPEN:
            return
        # As if the server had closed: the layer sends the close on to both sides and ends the flow.
        self.server_ws._events.append(wsproto.events.CloseConnection(code=close[0], reason=close[1]))
        event = mitm_events.DataReceived(self.context.server, b"")
    if self.flow.metadata.get(flowmeta.WS_TERMINATED):
        yield from _filtered(self, _original_ws_relay(self, event))
        return
    yield from _original_ws_relay(self, event)
    limit = self.flow.metadata.get(flowmeta.WS_FRAME_LIMIT)
    if limit is not None and isinstance(event, mitm_events.DataReceived) and event.connection == self.context.client \
            and self.server_ws.state is ConnectionState.OPEN and sum(map(len, self.client_ws.frame_buf)) > limit:
        # A client message outgrew the limit while it arrives: not buffered further, the socket is closed (1009).
        self.client_ws.frame_buf = [b""]
        reason = f"A frame over the limit of {limit / 1048576:g} MB (TOKENSENSE_MAX_BODY_MB)."
        self.server_ws._events.append(wsproto.events.CloseConnection(code=1009, reason=reason))
        yield from _original_ws_relay(self, mitm_events.DataReceived(self.context.server, b""))


def install() -> None:
    """Patch mitmproxy's HTTP layer (idempotent); raises on a mitmproxy these patches were not written for."""
    major = int(mitm_version.VERSION.split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise RuntimeError(f"TokenSense's mitmproxy patches were written for mitmproxy {SUPPORTED_MAJOR}.x, "
                           f"not {mitm_version.VERSION}: pin mitmproxy>={SUPPORTED_MAJOR},<{SUPPORTED_MAJOR + 1}.")
    if _http1.Http1Server.send is not _send:
        _http1.Http1Server.send = _send  # type: ignore[method-assign]
    if _http1.make_error_response is not _make_error_response:
        _http1.make_error_response = _make_error_response
    if HttpStream.state_consume_request_body is not _consume_request_body:
        HttpStream.state_consume_request_body = _consume_request_body  # type: ignore[method-assign]
    if HttpStream.handle_protocol_error is not _handle_protocol_error:
        HttpStream.handle_protocol_error = _handle_protocol_error  # type: ignore[method-assign]
    if WebsocketLayer.relay_messages is not _ws_relay:
        # `start` is also the layer's first `_handle_event` (a class attribute set to it).
        WebsocketLayer.start = _ws_start  # type: ignore[method-assign]
        WebsocketLayer._handle_event = _ws_start  # type: ignore[method-assign]
        WebsocketLayer.relay_messages = _ws_relay  # type: ignore[method-assign]

"""The Responses API over WebSocket (Codex CLI): the gateway accepts the socket and serves each frame over HTTP.

The handshake (`GET /v1/responses` or `/responses` with `Upgrade: websocket`) is
answered here, in `requestheaders`, before any other stage: the TokenSense key
leaves the request first, a client without a valid key gets a 401 and no socket.
The socket is then the gateway's own (mitmproxy opens no upstream connection for
it): every client frame is dropped from the relay and checked; each
`response.create` becomes one `POST /v1/responses` with `stream: true` through
this very gateway (loopback, the handshake's key and headers), so it passes every
gate and is metered, translated and owned exactly as an HTTP call, one record per
response (marked `details.transport = "websocket"`). Its SSE events go back to
the client as text frames; refusals and failures as error frames. See
tokensense/gateway/responses_ws.py for the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field

import httpx
from mitmproxy import ctx, http

from addons.admit import admitted_key
from addons.common import answer_error, asks_for_websocket, intercepting, strip_client_keys
from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway import responses_ws as ws
from tokensense.gateway.auth import client_key
from tokensense.gateway.call import CallContext, Record
from tokensense.gateway.flowmeta import CALL, WS_TERMINATED, refuse_body, set_call
from tokensense.gateway.routing import classify
from tokensense.gateway.runtime import Runtime
from tokensense.metering.attribution import attribution

log = logging.getLogger(__name__)

TRANSPORT_HEADER = "x-tokensense-transport"  # set on the per-response HTTP calls: the record says "websocket"
_MB = 1024 * 1024
# The handshake's errors are in the Responses API's shape (the route of its HTTP calls).
_ERRORS = classify("POST", "/v1/responses").fmt


@dataclass(slots=True)
class Connection:
    """One client socket: the key it presented (memory only, never logged), where to send its calls, its queue."""

    key: str
    key_name: str
    url: str
    headers: list[tuple[str, str]]
    conversation: ws.Conversation = field(default_factory=ws.Conversation)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    worker: asyncio.Task | None = None
    closed: bool = False


def is_upgrade(flow: http.HTTPFlow) -> bool:
    req = flow.request
    return asks_for_websocket(req) and req.path.partition("?")[0] in ws.RESPONSES_WS_PATHS


class ResponsesWebSocket:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._connections: dict[str, Connection] = {}
        self._client: httpx.AsyncClient | None = None

    # --- the handshake ---------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or CALL in flow.metadata or intercepting(flow.client_conn.proxy_mode):
            return
        if not is_upgrade(flow):
            return
        req = flow.request
        presented = client_key(req.headers, req.query if b"key=" in req.data.path else {})
        strip_client_keys(req)
        # The handshake itself is not a provider call: each response becomes its own record.
        call = CallContext(Endpoint.RESPONSES, _ERRORS, method="GET", record_state=Record.NONE)
        set_call(flow, call)
        call.attribution = attribution(req.headers)
        try:
            if not self.runtime.settings.responses_websocket:
                # Codex answers a 426 by using HTTP (SSE) for the rest of its session.
                raise GatewayError(426, "The Responses WebSocket is turned off on this gateway "
                                   "(TOKENSENSE_RESPONSES_WEBSOCKET); use HTTP.", code="upgrade_required")
            if self.runtime.inflight.draining:
                raise GatewayError(503, "TokenSense is shutting down; connect again.", code="shutting_down")
            # The gateway's own admit gate (the frames then come through it again, as HTTP calls).
            key = await admitted_key(self.runtime, presented,
                                     missing="No TokenSense key: send it as `Authorization: Bearer tsk_...`.")
            handshake_key = req.headers.get("sec-websocket-key")
            if req.headers.get("sec-websocket-version") != "13" or not ws.valid_handshake_key(handshake_key):
                raise GatewayError(400, "Not a valid WebSocket handshake (Sec-WebSocket-Key, version 13).",
                                   code="invalid_request")
        except GatewayError as e:
            answer_error(flow, call.fmt, e, headers={"upgrade": "websocket"} if e.status == 426 else None)
            refuse_body(flow)
            return
        call.key = key
        assert handshake_key is not None and presented is not None  # admitted_key refused a missing key
        self._connections[flow.id] = Connection(
            key=presented, key_name=key.name, url=self._self_url(flow),
            headers=ws.passed_headers(req.headers.fields))
        flow.metadata[WS_TERMINATED] = True  # no server connection: see addons/mitmproxy_compat.py
        flow.response = http.Response.make(101, b"", {
            "upgrade": "websocket", "connection": "Upgrade",
            "sec-websocket-accept": ws.accept_value(handshake_key),
            "x-tokensense-request-id": call.request_id,
        })

    @staticmethod
    def _self_url(flow: http.HTTPFlow) -> str:
        """This gateway, as the client reached it (the same worker's listening socket, or a sibling's)."""
        host, port = flow.client_conn.sockname[:2]
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if flow.client_conn.tls_established else "http"
        return f"{scheme}://{host}:{port}/v1/responses"

    # --- frames --------------------------------------------------------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        if not flow.metadata.get(WS_TERMINATED):
            return  # a socket relayed to a provider (addons/realtime.py), not one this addon answers
        message = flow.websocket.messages[-1]
        if not message.from_client:
            return  # what the gateway sends (there is no upstream socket)
        message.drop()  # the gateway answers every frame itself; nothing is relayed, whatever happens below
        conn = self._connections.get(flow.id)
        if conn is None or conn.closed:
            self._send(flow, ws.error_event(400, "This connection is not a Responses WebSocket of this gateway.",
                                            code="invalid_request"))
            return
        try:
            frame = ws.parse_frame(message.content, is_text=message.is_text, limit=self._frame_limit())
        except ws.FrameError as e:
            self._send(flow, ws.error_event(e.status, e.message, code=e.code, param=e.param))
            return
        except Exception:
            log.exception("Responses WebSocket: a frame could not be checked")
            self._send(flow, ws.error_event(500, "TokenSense had an internal error and did not forward the frame.",
                                            code="internal_error"))
            return
        if frame.kind == ws.PROCESSED:
            return
        conn.queue.put_nowait(frame.body)
        if conn.worker is None:
            conn.worker = asyncio.get_running_loop().create_task(self._work(flow, conn))

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        conn = self._connections.pop(flow.id, None)
        if conn is None:
            return
        conn.closed = True
        if conn.worker is not None:
            # A response in the middle of its stream: its HTTP call ends now, and is recorded as
            # what was known when the client left (the gateway's own client-closed record).
            conn.worker.cancel()

    async def done(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # --- serving ---------------------------------------------------------------------------------

    async def _work(self, flow: http.HTTPFlow, conn: Connection) -> None:
        """One response at a time per connection, in the order the frames came (as the protocol has it)."""
        while not conn.closed:
            body = await conn.queue.get()
            marker = f"{flow.id}:ws:{id(body)}"
            self.runtime.inflight.started(marker)  # a shutdown waits for the response being served
            try:
                await self._serve(flow, conn, body)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Responses WebSocket: a response could not be served")
                self._send(flow, ws.error_event(500, "TokenSense had an internal error serving this response.",
                                                code="internal_error"))
            finally:
                self.runtime.inflight.finished(marker)

    async def _serve(self, flow: http.HTTPFlow, conn: Connection, frame: dict) -> None:
        if self.runtime.inflight.draining:
            self._send(flow, ws.error_event(503, "TokenSense is shutting down; connect again.",
                                            code="shutting_down"))
            return
        body = conn.conversation.expand(frame)
        if frame.get("generate") is False:
            response_id, events = ws.warmup_events(frame)
            for event in events:
                self._send(flow, event)
            conn.conversation.remember(response_id, body, [])
            return
        sent = ws.http_body(body)
        headers = [*conn.headers, ("authorization", f"Bearer {conn.key}"), ("content-type", "application/json"),
                   ("accept", "text/event-stream"), (TRANSPORT_HEADER, "websocket")]
        client = self._http()
        try:
            async with client.stream("POST", conn.url, content=json.dumps(sent).encode(), headers=headers) as answer:
                if answer.status_code >= 300 or not answer.headers.get("content-type", "").startswith(
                        "text/event-stream"):
                    content = await _read_bounded(answer, 256 * 1024)
                    if answer.status_code < 300:
                        self._send(flow, ws.error_event(502, "The answer was not an event stream.",
                                                        code="upstream_error"))
                    else:
                        self._send(flow, ws.error_event_from_answer(answer.status_code, content))
                    return
                reader = ws.SSEReader()
                async for chunk in answer.aiter_bytes():
                    for payload in reader.feed(chunk):
                        self._send(flow, payload)
                        self._note(conn, sent, payload)
        except httpx.HTTPError as e:
            log.warning("Responses WebSocket: the gateway's own call failed (%s)", type(e).__name__)
            self._send(flow, ws.error_event(502, "TokenSense could not serve this response; retry.",
                                            code="upstream_error"))

    @staticmethod
    def _note(conn: Connection, sent: dict, payload: bytes) -> None:
        """Remember the conversation of a finished response, so the next frame may continue it."""
        if b'"response.completed"' not in payload and b'"response.incomplete"' not in payload:
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        response = event.get("response") if isinstance(event, dict) else None
        if isinstance(response, dict) and isinstance(response.get("id"), str) and \
                event.get("type") in ws.TERMINAL_EVENTS:
            output = response.get("output")
            conn.conversation.remember(response["id"], sent, output if isinstance(output, list) else [])

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # trust_env=False: the gateway calls itself, never through a proxy from the environment.
            self._client = httpx.AsyncClient(trust_env=False, verify=False,
                                             timeout=httpx.Timeout(None, connect=10.0))
        return self._client

    def _frame_limit(self) -> int:
        return int(self.runtime.settings.max_body_mb * _MB)

    def _send(self, flow: http.HTTPFlow, content: bytes) -> None:
        """A text frame to the client (mitmproxy's own injection: it goes out in order, on the loop)."""
        if flow.websocket is None or flow.websocket.timestamp_end is not None:
            return
        ctx.master.commands.call("inject.websocket", flow, True, content, True)


async def _read_bounded(answer: httpx.Response, limit: int) -> bytes:
    content = b""
    async for chunk in answer.aiter_bytes():
        content += chunk
        if len(content) >= limit:
            break
    with contextlib.suppress(Exception):
        await answer.aclose()
    return content[:limit]

"""The Responses API over WebSocket, as OpenAI serves it to Codex CLI: `GET .../v1/responses` upgraded.

Each text frame `{"type": "response.create", ...}` is answered with the events the
streamed HTTP create would send, one JSON text frame each; `generate: false`
(Codex's warm-up) is an empty completed response; a frame may continue any
earlier response of the same connection by `previous_response_id` even with
`store: false` (the connection remembers them, as OpenAI's does). Errors are
frames `{"type": "error", "status": N, "error": {...}}`. The handshake needs the
provider key (401 without it), and the `x-fake-*` headers of the handshake
control every response of the connection. Each response is logged like an HTTP
request, with `"transport": "websocket"`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any

from aiohttp import WSMsgType, web

from tokensense.demo.fakeprovider import handshake, openai_format, responses_format
from tokensense.demo.fakeprovider.replies import FakeError, FakeRequest, StreamReply
from tokensense.gateway import responses_ws as protocol


def is_upgrade(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get("upgrade", "").lower() == "websocket" and \
        request.path.rstrip("/").endswith("/responses")


async def serve(request: web.Request, *, log: deque, state: dict[str, Any]) -> web.StreamResponse:
    prefix = request.path.rstrip("/").removesuffix("/responses").removesuffix("/v1")
    controls = handshake.check(request, openai_format, prefix=prefix, state=state)
    if isinstance(controls, web.Response):
        return controls
    socket = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
    await socket.prepare(request)
    conversation = protocol.Conversation()
    async for message in socket:
        if message.type != WSMsgType.TEXT:
            if message.type == WSMsgType.BINARY:
                await socket.send_str(protocol.error_event(400, "Binary frames are not supported.").decode())
            continue
        try:
            frame = protocol.parse_frame(message.data.encode(), is_text=True)
        except protocol.FrameError as e:
            await socket.send_str(protocol.error_event(e.status, e.message, code=e.code, param=e.param).decode())
            continue
        if frame.kind != protocol.CREATE:
            continue
        body = conversation.expand(frame.body)
        log.append({"method": "WEBSOCKET", "path": request.path, "prefix": prefix.strip("/"), "provider": "openai",
                    "transport": "websocket", "query": dict(request.query),
                    "headers": {k.lower(): v for k, v in request.headers.items()}, "body": frame.body,
                    "time": time.time()})
        if frame.body.get("generate") is False:
            response_id, events = protocol.warmup_events(frame.body)
            for event in events:
                await socket.send_str(event.decode())
            conversation.remember(response_id, body, [])
            continue
        sent = protocol.http_body(body)
        fake = FakeRequest(method="POST", path=request.path, prefix=prefix, query=request.query,
                           headers=request.headers, body=sent, controls=controls,
                           origin=f"{request.scheme}://{request.host}", state=state)
        try:
            reply = responses_format.create(fake)
        except FakeError as e:
            await socket.send_str(protocol.error_event(e.status, e.message, param=e.param).decode())
            continue
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
            await socket.send_str(protocol.error_event(400, f"Invalid request ({type(e).__name__}).").decode())
            continue
        assert isinstance(reply, StreamReply)
        reader = protocol.SSEReader()
        for chunk in reply.chunks:
            for payload in reader.feed(chunk):
                await socket.send_str(payload.decode())
                event = json.loads(payload)
                if event.get("type") in protocol.TERMINAL_EVENTS:
                    final = event.get("response") or {}
                    conversation.remember(final.get("id", ""), sent, list(final.get("output") or []))
            if controls.chunk_delay:
                await asyncio.sleep(controls.chunk_delay)
    return socket

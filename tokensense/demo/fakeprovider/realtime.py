"""OpenAI's Realtime API over WebSocket (`GET .../v1/realtime?model=...` upgraded), as voice agents use it.

The handshake needs the provider key: `Authorization: Bearer` or, as browsers send
it, the subprotocol `openai-insecure-api-key.KEY` (401 without either). The first
server event is `session.created`. Client events handled: `session.update`,
`conversation.item.create` (text), `input_audio_buffer.append`/`.commit`/`.clear`
(PCM16 24 kHz mono), `response.create` and `response.cancel`. A response answers
the conversation so far (`textgen.plan_answer`) as a transcript and audio deltas
(or text only with `output_modalities: ["text"]`) and ends with `response.done`,
whose `usage` counts, like the real API:

- input: the whole conversation so far (text items by the fake's word count,
  audio at 10 tokens a second), earlier turns as cached tokens;
- output: the transcript's text tokens, and audio at 20 tokens a second of the
  PCM16 audio sent (each word is 0.25 s of audio).

Each `response.create` is logged like an HTTP request (`"transport": "realtime"`), each handshake
that reaches the fake as `"transport": "realtime.handshake"`.
The handshake's `x-fake-chunk-delay-ms` paces the deltas (to cut a session mid-response). `?call_id=rtc_...`
instead of `model` opens a WebRTC call's sideband socket (its session's model: the one its `POST
/v1/realtime/calls` named, else gpt-realtime).

`POST /v1/realtime/calls` is a WebRTC call's SDP exchange, as OpenAI answers it: the offer as the body
(`application/sdp`) or a multipart form (`sdp`, and `session` as JSON), answered 201 with the SDP answer
(`application/sdp`) and the call's path in `Location` (`/v1/realtime/calls/rtc_...`). An offer that is not an
SDP (no `v=0` first line) is a 400. `POST /v1/realtime/calls/{call_id}/hangup` ends such a call (200, no body).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
import uuid
from collections import deque
from typing import Any

from aiohttp import WSMsgType, web

from tokensense.demo.fakeprovider import handshake, openai_format
from tokensense.demo.fakeprovider.replies import BodyReply, FakeError, FakeRequest, json_reply

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."
SAMPLE_RATE = 24_000  # PCM16 mono, as the Realtime API's default audio format
AUDIO_INPUT_TOKENS_PER_SECOND = 10
AUDIO_OUTPUT_TOKENS_PER_SECOND = 20
SECONDS_PER_WORD = 0.25


def is_upgrade(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get("upgrade", "").lower() == "websocket" and \
        request.path.rstrip("/").endswith("/realtime")


def _subprotocol_key(request: web.Request) -> tuple[str | None, str | None]:
    """(key, the subprotocol to answer with) from `Sec-WebSocket-Protocol`."""
    offered = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    key = next((p[len(SUBPROTOCOL_KEY_PREFIX):] for p in offered if p.startswith(SUBPROTOCOL_KEY_PREFIX)), None)
    chosen = "realtime" if "realtime" in offered else (offered[0] if offered else None)
    return key, chosen


def _id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:20]}"


def _words(text: str) -> int:
    return len(text.split())


class _Session:
    """One connection's conversation: items with their token counts, and the audio buffer."""

    def __init__(self, model: str) -> None:
        self.id = _id("sess_")
        self.model = model
        self.output_modalities = ["audio"]
        self.instructions = ""
        self.items: list[dict[str, Any]] = []  # {"item": ..., "text": n, "audio": n}
        self.buffer = bytearray()
        self.cached = 0  # input tokens of the turns answered before: the next response reads them from cache

    def session_object(self) -> dict[str, Any]:
        return {"type": "realtime", "object": "realtime.session", "id": self.id, "model": self.model,
                "output_modalities": self.output_modalities, "instructions": self.instructions,
                "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None, "prompt": None,
                "expires_at": int(time.time()) + 3600,
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}, "transcription": None,
                                    "noise_reduction": None, "turn_detection": None},
                          "output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}, "voice": "marin",
                                     "speed": 1.0}},
                "include": None}

    def last_user_text(self) -> str:
        for entry in reversed(self.items):
            if entry["item"].get("role") == "user":
                for part in entry["item"].get("content") or []:
                    if isinstance(part, dict) and part.get("type") == "input_text":
                        return str(part.get("text") or "")
                return "(audio)"
        return ""


def _event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "event_id": _id("event_"), **fields})


def _error(message: str, *, code: str | None = None, event_id: str | None = None) -> str:
    return _event("error", error={"type": "invalid_request_error", "code": code, "message": message,
                                  "param": None, "event_id": event_id})


async def serve(request: web.Request, *, log: deque, state: dict[str, Any]) -> web.StreamResponse:
    prefix = request.path.rstrip("/").removesuffix("/realtime").removesuffix("/v1")
    log.append({"method": "GET", "path": request.path, "prefix": prefix.strip("/"), "provider": "openai",
                "transport": "realtime.handshake", "query": dict(request.query), "time": time.time()})
    key, subprotocol = _subprotocol_key(request)
    controls = handshake.check(request, openai_format, prefix=prefix, state=state, other_key=bool(key))
    if isinstance(controls, web.Response):
        return controls
    # `?call_id=rtc_...`: the sideband of a WebRTC call (the server's control socket): the call's session, whose
    # model the fake takes to be gpt-realtime (the browser chose it in its SDP exchange).
    call_id = request.query.get("call_id")
    called = state.get("realtime_calls", {}).get(call_id) if call_id else None
    model = request.query.get("model", "") or ((called or "gpt-realtime") if call_id else "")
    if not model:
        return handshake.refusal(openai_format.error(400, "Missing required parameter: 'model'.", "model"))
    socket = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024, protocols=(subprotocol,) if subprotocol else ())
    await socket.prepare(request)
    session = _Session(model)
    headers = {k.lower(): v for k, v in request.headers.items()}
    if key:
        headers["authorization"] = f"Bearer {key}"  # for the request log: where the key came from
    await socket.send_str(_event("session.created", session=session.session_object()))
    running: asyncio.Task | None = None
    async for message in socket:
        if message.type != WSMsgType.TEXT:
            continue
        try:
            event = json.loads(message.data)
            kind = event["type"]
        except (ValueError, KeyError, TypeError):
            await socket.send_str(_error("The event is not a JSON object with a type.", code="invalid_event"))
            continue
        if kind == "session.update":
            new = event.get("session") or {}
            if isinstance(new.get("output_modalities"), list):
                session.output_modalities = [str(m) for m in new["output_modalities"]]
            if isinstance(new.get("instructions"), str):
                session.instructions = new["instructions"]
            await socket.send_str(_event("session.updated", session=session.session_object()))
        elif kind == "conversation.item.create":
            item = dict(event.get("item") or {})
            item.setdefault("id", _id("item_"))
            item.update(object="realtime.item", status="completed")
            text = " ".join(str(p.get("text", "")) for p in item.get("content") or [] if isinstance(p, dict))
            previous = session.items[-1]["item"]["id"] if session.items else None
            session.items.append({"item": item, "text": _words(text) + 4, "audio": 0})
            await socket.send_str(_event("conversation.item.created", previous_item_id=previous, item=item))
        elif kind == "input_audio_buffer.append":
            try:
                session.buffer += base64.b64decode(event.get("audio") or "", validate=True)
            except ValueError:
                await socket.send_str(_error("audio is not valid base64.", code="invalid_value"))
        elif kind == "input_audio_buffer.clear":
            session.buffer.clear()
            await socket.send_str(_event("input_audio_buffer.cleared"))
        elif kind == "input_audio_buffer.commit":
            if not session.buffer:
                await socket.send_str(_error("Error committing input audio buffer: the buffer is empty.",
                                             code="input_audio_buffer_commit_empty"))
                continue
            seconds = len(session.buffer) / (2 * SAMPLE_RATE)
            session.buffer.clear()
            item = {"id": _id("item_"), "type": "message", "role": "user", "object": "realtime.item",
                    "status": "completed", "content": [{"type": "input_audio", "transcript": None}]}
            previous = session.items[-1]["item"]["id"] if session.items else None
            session.items.append({"item": item, "text": 0,
                                  "audio": math.ceil(seconds * AUDIO_INPUT_TOKENS_PER_SECOND)})
            await socket.send_str(_event("input_audio_buffer.committed", previous_item_id=previous, item_id=item["id"]))
            await socket.send_str(_event("conversation.item.created", previous_item_id=previous, item=item))
        elif kind == "response.create":
            if running is not None and not running.done():
                await socket.send_str(_error("Conversation already has an active response in progress.",
                                             code="conversation_already_has_active_response"))
                continue
            log.append({"method": "WEBSOCKET", "path": request.path, "prefix": prefix.strip("/"),
                        "provider": "openai", "transport": "realtime", "query": dict(request.query),
                        "headers": headers, "body": event, "time": time.time()})
            running = asyncio.get_running_loop().create_task(
                _respond(socket, session, event.get("response") or {}, controls.chunk_delay))
        elif kind == "response.cancel":
            if running is not None and not running.done():
                running.cancel()
        else:
            await socket.send_str(_error(f"Invalid value: '{kind}'.", code="invalid_value"))
    if running is not None and not running.done():
        running.cancel()
    return socket


async def _respond(socket: web.WebSocketResponse, session: _Session, options: dict[str, Any],
                   chunk_delay: float) -> None:
    modalities = options.get("output_modalities") or session.output_modalities
    audio = "audio" in modalities
    response_id, item_id = _id("resp_"), _id("item_")
    text_in = sum(e["text"] for e in session.items) + (_words(session.instructions) if session.instructions else 0)
    audio_in = sum(e["audio"] for e in session.items)
    prompt = session.last_user_text()
    answer = f"Hello from {session.model}. You said: {prompt}".strip()
    words = answer.split()
    response: dict[str, Any] = {"id": response_id, "object": "realtime.response", "status": "in_progress",
                                "status_details": None, "output": [], "conversation_id": "conv_" + session.id[5:],
                                "output_modalities": modalities, "max_output_tokens": "inf", "metadata": None,
                                "audio": {"output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                                                     "voice": "marin"}}, "usage": None}
    await socket.send_str(_event("response.created", response=dict(response)))
    part_type = "output_audio" if audio else "output_text"
    item = {"id": item_id, "type": "message", "role": "assistant", "object": "realtime.item",
            "status": "in_progress", "content": []}
    await socket.send_str(_event("response.output_item.added", response_id=response_id, output_index=0, item=item))
    await socket.send_str(_event("response.content_part.added", response_id=response_id, item_id=item_id,
                                 output_index=0, content_index=0, part={"type": part_type, "transcript": ""}))
    sent_words: list[str] = []
    audio_bytes = 0
    status = "completed"
    try:
        for word in words:
            piece = word if not sent_words else " " + word
            sent_words.append(word)
            if audio:
                pcm = bytes(int(2 * SAMPLE_RATE * SECONDS_PER_WORD))  # silence, a quarter second a word
                audio_bytes += len(pcm)
                await socket.send_str(_event("response.output_audio.delta", response_id=response_id, item_id=item_id,
                                             output_index=0, content_index=0, delta=base64.b64encode(pcm).decode()))
                await socket.send_str(_event("response.output_audio_transcript.delta", response_id=response_id,
                                             item_id=item_id, output_index=0, content_index=0, delta=piece))
            else:
                await socket.send_str(_event("response.output_text.delta", response_id=response_id, item_id=item_id,
                                             output_index=0, content_index=0, delta=piece))
            if chunk_delay:
                await asyncio.sleep(chunk_delay)
    except asyncio.CancelledError:
        status = "cancelled"
    text = " ".join(sent_words)
    text_out = _words(text) + (2 if text else 0)
    audio_out = math.ceil(audio_bytes / (2 * SAMPLE_RATE) * AUDIO_OUTPUT_TOKENS_PER_SECOND)
    content = {"type": part_type, "transcript": text} if audio else {"type": part_type, "text": text}
    item = {**item, "status": "completed" if status == "completed" else "incomplete", "content": [content]}
    cached = min(session.cached, text_in + audio_in) // 64 * 64
    cached_audio = min(cached, audio_in)
    usage = {"total_tokens": text_in + audio_in + text_out + audio_out, "input_tokens": text_in + audio_in,
             "output_tokens": text_out + audio_out,
             "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0,
                                     "cached_tokens": cached,
                                     "cached_tokens_details": {"text_tokens": cached - cached_audio,
                                                               "audio_tokens": cached_audio, "image_tokens": 0}},
             "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}
    session.items.append({"item": item, "text": text_out, "audio": audio_out})
    session.cached = text_in + audio_in + text_out + audio_out
    done = {**response, "status": status, "output": [item], "usage": usage}
    if status == "cancelled":
        done["status_details"] = {"type": "cancelled", "reason": "client_cancelled"}
    if socket.closed:
        return
    if status == "completed":
        await socket.send_str(_event("response.output_item.done", response_id=response_id, output_index=0,
                                     item=item))
    await socket.send_str(_event("response.done", response=done))


def _form_part(req: FakeRequest, name: str) -> str | None:
    """A multipart part as text: a field, or a part sent as a file (with a filename)."""
    body = req.body if isinstance(req.body, dict) else {}
    fields = body.get("fields") if isinstance(body.get("fields"), dict) else {}
    if name in fields:
        return str(fields[name])
    data = req.files.get(name)
    return data.decode("utf-8", errors="replace") if data is not None else None


def _sdp_answer(offer: str) -> str:
    """An SDP answer to `offer`, as the Realtime API's looks: its media sections (by `mid`), one ICE candidate."""
    sections: list[tuple[str, str]] = []  # (mid, media kind) of the offer's m= sections, in order
    kind = "audio"
    for line in offer.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        elif line.startswith("a=mid:"):
            sections.append((line[6:].strip(), kind))
    sections = sections or [("0", "audio")]
    session = uuid.uuid4().int % 10**10
    lines = ["v=0", f"o=- {session} {int(time.time())} IN IP4 127.0.0.1", "s=-", "t=0 0",
             f"a=group:BUNDLE {' '.join(mid for mid, _ in sections)}", "a=msid-semantic:WMS *",
             "a=fingerprint:sha-256 " + ":".join(f"{b:02X}" for b in uuid.uuid4().bytes * 2)]
    ufrag, pwd = uuid.uuid4().hex[:8], uuid.uuid4().hex
    for mid, kind in sections:
        lines += (["m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", f"a=mid:{mid}",
                   "a=sctp-port:5000"] if kind == "application" else
                  ["m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", f"a=mid:{mid}", "a=sendrecv",
                   "a=rtcp-mux", "a=rtpmap:111 opus/48000/2"])
        lines += [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", "a=setup:passive",
                  f"a=candidate:1 1 udp 2130706431 127.0.0.1 3478 typ host ufrag {ufrag}"]
    return "\r\n".join(lines) + "\r\n"


def calls(req: FakeRequest) -> BodyReply:
    """`POST /v1/realtime/calls`: the SDP answer (201, `application/sdp`), the call's path in `Location`."""
    content_type = req.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        offer = _form_part(req, "sdp")
        session_text = _form_part(req, "session")
        try:
            session = json.loads(session_text) if session_text else {}
        except ValueError:
            raise FakeError(400, "Invalid 'session': not a JSON object.", param="session") from None
    elif content_type.startswith("application/sdp"):
        offer, session = req.body if isinstance(req.body, str) else None, {}
    else:
        raise FakeError(400, "Unsupported content type: send application/sdp or multipart/form-data.")
    if not offer or not offer.lstrip().startswith("v=0"):
        raise FakeError(400, "Invalid SDP offer: missing 'v=0'.", param="sdp")
    if not isinstance(session, dict) or session.get("type") not in (None, "realtime"):
        raise FakeError(400, "Invalid value for 'session.type'.", param="session.type")
    call_id = "rtc_" + uuid.uuid4().hex
    req.state.setdefault("realtime_calls", {})[call_id] = str(session.get("model") or "gpt-realtime")
    return BodyReply(status=201, body=_sdp_answer(offer).encode(), content_type="application/sdp",
                     headers={"location": f"/v1/realtime/calls/{call_id}"})


def hangup(req: FakeRequest) -> BodyReply:
    """`POST /v1/realtime/calls/{call_id}/hangup`: ends a call the fake made (404 for another id); no body."""
    if req.state.get("realtime_calls", {}).pop(req.params.get("id"), None) is None:
        raise FakeError(404, f"Call '{req.params.get('id')}' not found.", param="call_id")
    return BodyReply(status=200, body=b"", content_type="application/json")


def client_secrets(req: FakeRequest) -> BodyReply:
    """`POST /v1/realtime/client_secrets`: an ephemeral key (`ek_...`) for a browser's session (free: no usage).
    The fake accepts it as a provider key on the realtime handshake like any other."""
    body = req.body if isinstance(req.body, dict) else {}
    session = body.get("session") if isinstance(body.get("session"), dict) else {}
    if session.get("type") not in (None, "realtime", "transcription"):
        raise FakeError(400, "Invalid value for 'session.type'.", param="session.type")
    seconds = (body.get("expires_after") or {}).get("seconds", 600) if isinstance(body.get("expires_after"), dict) \
        else 600
    expires = int(time.time()) + int(seconds)
    model = session.get("model") or "gpt-realtime"
    return json_reply({"value": "ek_" + uuid.uuid4().hex, "expires_at": expires,
                       "session": {**_Session(str(model)).session_object(), **session, "expires_at": expires}})


"""The Responses API over WebSocket (what Codex CLI speaks): frames in, the gateway's HTTP calls out, events back.

Codex CLI (its built-in `openai` provider, `supports_websockets = true`) opens
`GET {base}/responses` as a WebSocket with `OpenAI-Beta: responses_websockets=2026-02-06`
and sends text frames `{"type": "response.create", ...the Responses create body...}`;
the server answers with the events of the SSE stream, one JSON text frame each,
and one connection carries the responses of a whole session, each continuing the
previous one by `previous_response_id` with only the new input items (the server
keeps the connection's conversation even with `store: false`). Errors are frames
`{"type": "error", "status": N, "error": {"type", "code", "message"}}`: Codex maps
the status as it maps an HTTP status. A handshake answered 426 makes Codex use
HTTP (SSE) for the rest of the session.

TokenSense terminates the socket: each `response.create` becomes one ordinary
`POST /v1/responses` (`stream: true`) through the gateway itself, so every gate
(key, model, routing, access, rate, budget), the translation for Claude and
Gemini, ownership of response ids and metering apply unchanged, one record per
response. This module is the pure part: frame checks, the connection's
conversation (previous_response_id within the connection), error events, the SSE
reader.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from tokensense.gateway.guards import MAX_COST_HEADER
from tokensense.providers.responses_format import SOCKET_HANDSHAKE_HEADERS

RESPONSES_WS_PATHS = frozenset({"/v1/responses", "/responses"})
MAX_FRAME_BYTES = 32 * 1024 * 1024  # a frame is a request body: the HTTP body limit applies (TOKENSENSE_MAX_BODY_MB)
REMEMBERED_RESPONSES = 8  # responses of one connection whose conversation a later frame may continue
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Frames a client sends: `response.create` is a request; `response.processed` (Codex acknowledges a
# response it has handled) carries nothing to bill and is not answered.
CREATE = "response.create"
PROCESSED = "response.processed"
_FRAME_ONLY_FIELDS = ("type", "generate", "client_metadata")  # WebSocket-only fields, not HTTP body fields

# Request headers of the handshake that are not passed on to the per-response HTTP calls.
_NOT_PASSED = frozenset({
    "host", "connection", "upgrade", "content-length", "transfer-encoding", "keep-alive", "te", "trailer",
    "proxy-connection", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "accept", "accept-encoding", "content-type", "origin", *SOCKET_HANDSHAKE_HEADERS,
})


class FrameError(Exception):
    """A frame the gateway refuses: answered with an error event, never forwarded."""

    def __init__(self, status: int, message: str, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


@dataclass(slots=True)
class Frame:
    kind: str  # CREATE or PROCESSED
    body: dict[str, Any]


def accept_value(sec_websocket_key: str) -> str:
    """The `Sec-WebSocket-Accept` of a handshake (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1((sec_websocket_key + _WS_GUID).encode()).digest()
    return base64.b64encode(digest).decode()


def valid_handshake_key(value: str | None) -> bool:
    """A `Sec-WebSocket-Key` is 16 random bytes in base64."""
    if not value:
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == 16
    except ValueError:
        return False


def passed_headers(fields: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    """The handshake headers each response's HTTP call carries (attribution, Codex session headers, ...)."""
    out = []
    for name, value in fields:
        lower = name.decode("latin-1").lower()
        # The cost cap of the handshake applies to each response (the HTTP call takes it off before upstream).
        if lower in _NOT_PASSED or (lower.startswith("x-tokensense-") and lower != MAX_COST_HEADER):
            continue
        out.append((lower, value.decode("latin-1")))
    return out


def parse_frame(content: bytes, *, is_text: bool, limit: int = MAX_FRAME_BYTES) -> Frame:
    """A client frame checked: text, within the size limit, a JSON object of a known type with sane fields."""
    if not is_text:
        raise FrameError(400, "Binary frames are not part of the Responses WebSocket protocol; send JSON text frames.",
                         code="invalid_frame")
    if len(content) > limit:
        raise FrameError(413, f"The frame is {len(content) / 1048576:.1f} MB; TokenSense accepts at most "
                         f"{limit / 1048576:g} MB (TOKENSENSE_MAX_BODY_MB).", code="request_too_large")
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise FrameError(400, "The frame is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise FrameError(400, "A frame must be a JSON object with a `type`.", code="invalid_frame")
    kind = body.get("type")
    if kind == PROCESSED:
        return Frame(PROCESSED, body)
    if kind != CREATE:
        shown = kind[:60] if isinstance(kind, str) else type(kind).__name__
        raise FrameError(400, f"Unknown frame type `{shown}`: TokenSense serves `response.create` frames.",
                         code="invalid_frame", param="type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise FrameError(400, "A response.create frame needs a `model` string.", code="invalid_request", param="model")
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise FrameError(400, "previous_response_id must be a response id string.", code="invalid_request",
                         param="previous_response_id")
    if "input" in body and not isinstance(body["input"], (str, list)):
        raise FrameError(400, "`input` must be a string or a list of items.", code="invalid_request", param="input")
    generate = body.get("generate")
    if generate is not None and not isinstance(generate, bool):
        raise FrameError(400, "`generate` must be a boolean.", code="invalid_request", param="generate")
    return Frame(CREATE, body)


def error_event(status: int, message: str, *, code: str | None = None, kind: str | None = None,
                param: str | None = None) -> bytes:
    """An error frame in the shape Codex parses (`type: error` with the HTTP status it stands for)."""
    error: dict[str, Any] = {"type": kind or _error_type(status), "code": code, "message": message}
    if param is not None:
        error["param"] = param
    return json.dumps({"type": "error", "status": status, "error": error}).encode()


def error_event_from_answer(status: int, body: bytes) -> bytes:
    """An HTTP error answer of the gateway (or the provider, passed through) as an error frame."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        return error_event(status, message if isinstance(message, str) else f"HTTP {status}",
                           code=error.get("code") if isinstance(error.get("code"), str) else None,
                           kind=error.get("type") if isinstance(error.get("type"), str) else None,
                           param=error.get("param") if isinstance(error.get("param"), str) else None)
    return error_event(status, f"The request failed with HTTP {status}.")


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 402:
        return "insufficient_quota"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def http_body(frame: dict[str, Any]) -> dict[str, Any]:
    """The HTTP create body of a frame: the WebSocket-only fields out, streamed."""
    body = {k: v for k, v in frame.items() if k not in _FRAME_ONLY_FIELDS}
    body["stream"] = True
    return body


def input_items(body: dict[str, Any]) -> list[Any]:
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    return list(value) if isinstance(value, list) else []


@dataclass(slots=True)
class Conversation:
    """The responses of one connection: each one's whole input and output, so a frame continuing one by
    `previous_response_id` (with only the new items, as Codex sends) can be sent as a whole conversation."""

    items: OrderedDict[str, list[Any]] = field(default_factory=OrderedDict)

    def expand(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with a previous response of this connection spelled out in `input`; others left as they are
        (the HTTP path checks that the key owns them)."""
        previous = body.get("previous_response_id")
        if not isinstance(previous, str) or previous not in self.items:
            return body
        expanded = {k: v for k, v in body.items() if k != "previous_response_id"}
        expanded["input"] = [*self.items[previous], *input_items(body)]
        return expanded

    def remember(self, response_id: str, sent: dict[str, Any], output: list[Any]) -> None:
        self.items[response_id] = [*input_items(sent), *output]
        self.items.move_to_end(response_id)
        while len(self.items) > REMEMBERED_RESPONSES:
            self.items.popitem(last=False)


def warmup_events(body: dict[str, Any]) -> tuple[str, list[bytes]]:
    """The answer to `generate: false` (Codex warms a connection up with it): an empty completed response,
    made by the gateway (no provider call, nothing to bill); later frames may continue it."""
    response_id = "resp_ws_" + secrets.token_hex(16)
    response: dict[str, Any] = {"id": response_id, "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": body.get("model"), "output": [], "error": None, "incomplete_details": None,
                "usage": {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
                          "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}}
    created = {**response, "status": "in_progress", "usage": None}
    return response_id, [
        json.dumps({"type": "response.created", "sequence_number": 0, "response": created}).encode(),
        json.dumps({"type": "response.completed", "sequence_number": 1, "response": response}).encode(),
    ]


TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class SSEReader:
    """Splits an SSE byte stream into the `data` payloads of its events (each one frame for the client)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events = []
        while b"\n\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n\n", 1)
            data = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
            if data:
                payload = b"\n".join(data)
                if payload.strip() != b"[DONE]":
                    events.append(payload)
        return events

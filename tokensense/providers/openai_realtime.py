"""OpenAI's Realtime API over WebSocket (`GET /v1/realtime?model=...` upgraded): voice agents' sessions.

The client sends events (`session.update`, `conversation.item.create`,
`input_audio_buffer.append`, `response.create`, ...) and the server answers
with events; each response ends with `response.done`, whose `response.usage`
counts what it used by modality (`input_token_details` with text, audio, image
and cached tokens, `cached_tokens_details` by modality, `output_token_details`
with text and audio tokens). Browsers cannot set headers on a WebSocket: they
send the key as the subprotocol `openai-insecure-api-key.KEY`. Errors are
events `{"type": "error", "error": {"type", "code", "message", "param",
"event_id"}}`, where `event_id` names the client event that caused it; the
socket stays open. A WebRTC call's server side opens the same socket with `?call_id=rtc_...` (its
"sideband") instead of a model: the session's events name the model, and every response of the call,
the ones the browser's voice starts included, ends on it with its usage.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape, GatewayError
from tokensense.providers.openai_usage import usage_from_openai
from tokensense.providers.sockets import (
    NOTHING_CLIENT,
    NOTHING_SERVER,
    ClientFrame,
    Handshake,
    ServerFrame,
    SocketProtocol,
)

REALTIME = Endpoint("realtime")
# `POST /v1/realtime/client_secrets`: an ephemeral key for a browser's session (free; the session's responses
# are billed, and metered, on the socket).
REALTIME_CLIENT_SECRETS = Endpoint("realtime.client_secrets")
# `POST /v1/realtime/calls`: a WebRTC call's SDP exchange (an `application/sdp` offer, or multipart `sdp` and
# `session`), answered with the SDP answer (201, `application/sdp`) and the call's id in `Location`. Free: the
# call's responses are billed, and metered, on its sideband socket (`?call_id=`).
REALTIME_CALLS = Endpoint("realtime.calls")
REALTIME_DEFAULT_MODEL = "gpt-realtime"  # the model a client secret's session uses when it names none

# The largest output of one realtime response (`max_output_tokens: "inf"` is this many).
REALTIME_MAX_OUTPUT_TOKENS = 4_096
_CALL_ID = re.compile(r"rtc_[A-Za-z0-9_-]{1,200}")


def _cap(value: Any) -> int | None:
    """An output cap as the events write it: an integer, or "inf" (the model's largest: None)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _event(content: bytes, is_text: bool) -> dict[str, Any] | None:
    if not is_text:
        return None
    try:
        event = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return event if isinstance(event, dict) else None


class OpenAIRealtime(SocketProtocol):
    """The protocol; `errors` is the OpenAI error shape (tokensense/providers/openai.py builds the instance)."""

    endpoint = REALTIME
    paths = re.compile(r"/v1/realtime/?")
    key_subprotocol = "openai-insecure-api-key."
    client_markers = (b'"response.create"', b'"session.update"')
    server_markers = (b'"response.done"', b'"response.created"', b'"error"', b'"session.created"',
                      b'"session.updated"')

    def __init__(self, errors: ErrorShape) -> None:
        self.errors = errors

    def handshake(self, path: str, query: Mapping[str, str]) -> Handshake:
        model = query.get("model") or ""
        call_id = query.get("call_id")
        if not model and call_id is not None:
            # A WebRTC call's sideband (the server's control socket): the session names its model.
            if not _CALL_ID.fullmatch(call_id):
                raise GatewayError(400, "Invalid value for 'call_id'.", code="invalid_value", param="call_id")
            return Handshake(model=None, upstream_path="/v1/realtime")
        if not model:
            raise GatewayError(400, "Missing required parameter: 'model' (wss://.../v1/realtime?model=gpt-realtime).",
                               code="missing_required_parameter", param="model")
        return Handshake(model=model, upstream_path="/v1/realtime")

    def client_frame(self, content: bytes, is_text: bool) -> ClientFrame:
        if not any(marker in content for marker in self.client_markers):
            return NOTHING_CLIENT
        event = _event(content, is_text)
        if event is None:
            return NOTHING_CLIENT
        kind = event.get("type")
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        if kind == "response.create":
            response = event.get("response")
            cap = _cap(response.get("max_output_tokens")) if isinstance(response, dict) else None
            return ClientFrame(starts_response=True, max_output_tokens=cap, event_id=event_id)
        if kind == "session.update":
            session = event.get("session")
            if isinstance(session, dict) and "max_output_tokens" in session:
                cap = _cap(session.get("max_output_tokens")) or REALTIME_MAX_OUTPUT_TOKENS
                return ClientFrame(session_max_output_tokens=cap, event_id=event_id)
        return NOTHING_CLIENT

    def server_frame(self, content: bytes, is_text: bool) -> ServerFrame:
        if not any(marker in content for marker in self.server_markers):
            return NOTHING_SERVER
        event = _event(content, is_text)
        if event is None:
            return NOTHING_SERVER
        kind = event.get("type")
        if kind == "response.created":
            return ServerFrame(started=True)
        if kind in ("session.created", "session.updated"):
            session = event.get("session")
            model = session.get("model") if isinstance(session, dict) else None
            return ServerFrame(model=model) if isinstance(model, str) and model else NOTHING_SERVER
        if kind == "response.done":
            response = event.get("response")
            response = response if isinstance(response, dict) else {}
            status = response.get("status")
            return ServerFrame(usage=usage_from_openai(response.get("usage")), done=True,
                               status=status if isinstance(status, str) else None)
        if kind == "error":
            error = event.get("error")
            failed = error.get("event_id") if isinstance(error, dict) else None
            return ServerFrame(failed_event_id=failed if isinstance(failed, str) else None)
        return NOTHING_SERVER

    def error_frame(self, status: int, message: str, *, code: str | None, event_id: str | None) -> bytes | None:
        error = self.errors.body(status, message, code=code)["error"]
        return json.dumps({"type": "error", "event_id": "event_" + secrets.token_hex(12),
                           "error": {"type": error.get("type"), "code": code, "message": message, "param": None,
                                     "event_id": event_id}}).encode()


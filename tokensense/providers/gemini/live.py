"""Gemini's Live API over WebSocket (`/ws/google.ai.generativelanguage.{v1beta,v1alpha}.GenerativeService.
BidiGenerateContent`): voice sessions of google-genai's `client.aio.live.connect()`.

The key is `x-goog-api-key` or `?key=` on the handshake; the handshake names no
model: the client's first message, `setup`, does (`models/NAME`, with
`generationConfig.maxOutputTokens` and `responseModalities`). A turn is asked for
by `clientContent` with `turnComplete`, or by `realtimeInput` with
`audioStreamEnd` / `activityEnd`; the model's answer comes as `serverContent`
messages (`modelTurn` parts), and the turn ends with `serverContent.turnComplete`.
`usageMetadata` rides on server messages, by modality (`promptTokensDetails`,
`responseTokensDetails`: the Live API's names for what generateContent calls
candidates). The server may send its messages as binary frames of JSON. The
protocol has no error message: errors close the socket with a code and reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape, GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.providers.gemini.usage import usage_from_gemini
from tokensense.providers.sockets import (
    NOTHING_CLIENT,
    NOTHING_SERVER,
    ClientFrame,
    Handshake,
    ServerFrame,
    SocketProtocol,
)

LIVE = Endpoint("gemini.live")

_TURN_ENDS = (b"turnComplete", b"turn_complete", b"audioStreamEnd", b"audio_stream_end", b"activityEnd",
              b"activity_end")


def _message(content: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return message if isinstance(message, dict) else None


def _get(obj: Any, camel: str, snake: str) -> Any:
    if not isinstance(obj, dict):
        return None
    return obj.get(camel, obj.get(snake))


def usage_from_live(meta: Any) -> TokenUsage | None:
    """A Live `usageMetadata` in TokenSense terms (its `response*` fields are generateContent's `candidates*`)."""
    if not isinstance(meta, dict):
        return None
    renamed = dict(meta)
    for live, generate in (("responseTokenCount", "candidatesTokenCount"),
                           ("responseTokensDetails", "candidatesTokensDetails")):
        if live in meta and generate not in meta:
            renamed[generate] = meta[live]
    return usage_from_gemini(renamed)


class GeminiLive(SocketProtocol):
    """The protocol; `errors` is Google's error shape (tokensense/providers/gemini builds the instance)."""

    endpoint = LIVE
    paths = re.compile(r"/ws/google\.ai\.generativelanguage\.(?P<version>v1beta|v1alpha|v1)\.GenerativeService"
                       r"\.BidiGenerateContent")
    client_markers = (b"setup", *_TURN_ENDS)
    server_markers = (b"usageMetadata", b"turnComplete", b"modelTurn")

    def __init__(self, errors: ErrorShape) -> None:
        self.errors = errors

    def handshake(self, path: str, query: Mapping[str, str]) -> Handshake:
        match = self.paths.fullmatch(path)
        if match is None:  # matches() said it does
            raise GatewayError(404, "Not a Live API path.", code="not_found")
        version = match["version"]
        return Handshake(model=None,
                         upstream_path=f"/ws/google.ai.generativelanguage.{version}.GenerativeService"
                                       ".BidiGenerateContent")

    def client_frame(self, content: bytes, is_text: bool) -> ClientFrame:
        if not any(marker in content for marker in self.client_markers):
            return NOTHING_CLIENT
        message = _message(content)
        if message is None:
            return NOTHING_CLIENT
        setup = message.get("setup")
        if isinstance(setup, dict):
            model = setup.get("model")
            config = _get(setup, "generationConfig", "generation_config")
            cap = _get(config, "maxOutputTokens", "max_output_tokens")
            return ClientFrame(model=model.removeprefix("models/") if isinstance(model, str) and model else None,
                               session_max_output_tokens=cap if isinstance(cap, int) and cap > 0 else None)
        content_part = _get(message, "clientContent", "client_content")
        if isinstance(content_part, dict):
            return ClientFrame(starts_response=bool(_get(content_part, "turnComplete", "turn_complete")))
        realtime = _get(message, "realtimeInput", "realtime_input")
        if isinstance(realtime, dict):
            ends = _get(realtime, "audioStreamEnd", "audio_stream_end") or \
                _get(realtime, "activityEnd", "activity_end") is not None
            return ClientFrame(starts_response=bool(ends))
        return NOTHING_CLIENT

    def server_frame(self, content: bytes, is_text: bool) -> ServerFrame:
        if b"usageMetadata" not in content and b"turnComplete" not in content:
            # Most messages are the answer's audio: a model turn began, nothing else to read.
            return ServerFrame(started=True) if b'"modelTurn"' in content else NOTHING_SERVER
        message = _message(content)
        if message is None:
            return NOTHING_SERVER
        server = _get(message, "serverContent", "server_content")
        done = bool(_get(server, "turnComplete", "turn_complete"))
        usage = usage_from_live(_get(message, "usageMetadata", "usage_metadata"))
        started = isinstance(server, dict) and _get(server, "modelTurn", "model_turn") is not None
        return ServerFrame(started=started, usage=usage, done=done, status="completed" if done else None)

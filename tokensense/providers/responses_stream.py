"""The `flow.response.stream` callable for a translated Responses stream: `event: TYPE` + `data:` framing."""

from __future__ import annotations

import json

from tokensense.providers.chat_stream import TranslatingStream


class ResponsesTranslatingStream(TranslatingStream):
    """A `TranslatingStream` that frames events as OpenAI's Responses API does.

    Each event is `event: <type>` and `data: <json>` and a blank line; the stream ends with the terminal
    event (`response.completed`, `response.incomplete` or `response.failed`), without chat's `data: [DONE]`.
    """

    end_marker = b""

    @staticmethod
    def encode(chunk: dict) -> bytes:
        return (b"event: " + str(chunk.get("type", "message")).encode() + b"\ndata: "
                + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")

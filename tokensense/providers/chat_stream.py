"""Turns a provider's SSE answer into OpenAI chat-completion chunks, event by event as it arrives."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tokensense.metering.sse import EventSplitter, parse_event

_DONE = b"data: [DONE]\n\n"


def _encode(chunk: dict) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


class TranslatingStream:
    """The `flow.response.stream` callable for a translated chat stream.

    Each complete provider event is fed to the provider's `ChatStreamTranslator`
    and the OpenAI chunks it gives back are sent at once; at the end come the
    translator's last chunks and `data: [DONE]`. `on_first` runs at the first
    provider bytes and `on_end` gets the provider usage seen. Subclasses change
    the framing (`encode`, `end_marker`; see responses_stream.py).
    """

    end_marker = _DONE

    def __init__(self, translator: Any, *, on_first: Callable[[], None] | None = None,
                 on_end: Callable[[dict], None] | None = None) -> None:
        self.translator = translator
        self.splitter = EventSplitter()
        self.on_first = on_first
        self.on_end = on_end
        self.failed = False

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        if data:
            if self.on_first:
                self.on_first()
                self.on_first = None
            out = self._emit(self.splitter.feed(data))
            # Nothing to send yet: an empty list, not b"". mitmproxy sends each returned
            # bytes object as an HTTP/1.1 chunk, and an empty chunk ends a chunked body.
            return out if out else []
        out = self._emit([self.splitter.rest()]) if not self.failed else b""
        if not self.failed:
            out += b"".join(self.encode(c) for c in self.translator.finish())
        out += self.end_marker
        if self.on_end:
            self.on_end(dict(self.translator.usage or {}))
        return out

    @staticmethod
    def encode(chunk: dict) -> bytes:
        return _encode(chunk)

    def _emit(self, events: list[bytes]) -> bytes:
        out: list[bytes] = []
        for raw in events:
            if self.failed or not raw.strip():
                continue
            _, payload = parse_event(raw)
            if not payload or payload == "[DONE]":
                continue
            try:
                event = json.loads(payload)
            except json.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            for chunk in self.translator.feed(event):
                out.append(self.encode(chunk))
                if "error" in chunk:
                    self.failed = True
        return b"".join(out)

"""Metering passthrough SSE streams as they pass, and asking OpenAI-format streams for their usage."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

from tokensense.core.endpoints import USAGE_ON_REQUEST_ENDPOINTS
from tokensense.gateway.call import CallContext
from tokensense.gateway.routing import Endpoint
from tokensense.metering.sse import EventSplitter, parse_event
from tokensense.providers import StreamUsage


def with_stream_usage(call: CallContext, body: Any) -> tuple[dict[str, Any] | None, bool]:
    """`stream_usage_option` for a call's own provider and stream."""
    if call.provider is None or not isinstance(body, dict):
        return None, True
    return stream_usage_option(call.route_endpoint, call.stream, call.provider.usage_chunk_on_request, body)


def stream_usage_option(endpoint: Endpoint, stream: bool, usage_on_request: bool,
                        body: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """(the body to send instead, or None to keep it; whether the client asked for usage itself).

    Chat (and legacy completions) streams of a provider whose `usage_chunk_on_request` (OpenAI's format) report usage only with
    `stream_options.include_usage`: TokenSense asks for it (gateway and intercept mode alike, through the parse stage),
    and the metering addon removes that extra chunk again when the client had not asked.
    """
    if not (stream and endpoint in USAGE_ON_REQUEST_ENDPOINTS and usage_on_request):
        return None, True
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None, True
    return {**body, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}, False


_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


@functools.lru_cache(maxsize=32)
def _usage_pattern(markers: tuple[bytes, ...]) -> re.Pattern[bytes]:
    """A marker used as a key whose value is not `null`.

    OpenAI streams with `include_usage` carry `"usage":null` in every chunk but
    the last; this finds the events worth parsing without parsing the others. A
    false match only costs a JSON parse.
    """
    return re.compile(b"(?:" + b"|".join(re.escape(m) for m in markers) + rb')[^"\s:]*+"?+\s*+:\s*+(?!null\b)')


class PassthroughStream:
    """The `flow.response.stream` callable for a passthrough SSE answer.

    Hands every complete event on as soon as it is complete, feeds the events
    that can carry usage to the provider's collector, and drops OpenAI's
    usage-only chunk when TokenSense (not the client) asked for it.
    """

    def __init__(self, call: CallContext, usage: StreamUsage, markers: tuple[bytes, ...], *,
                 drop_usage_chunk: bool, on_end: Callable[[], None] | None = None) -> None:
        self.call = call
        self.usage = usage
        self._carries_usage = _usage_pattern(markers).search
        self.drop_usage_chunk = drop_usage_chunk
        self.splitter = EventSplitter()
        self.on_end = on_end

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        # Nothing to send yet is an empty list, never b"": mitmproxy writes each returned
        # bytes object as an HTTP/1.1 chunk, and an empty chunk ends a chunked body.
        if not data:
            rest = self.splitter.rest()
            out = self._process([rest]) if rest.strip() else rest
            if self.on_end:
                self.on_end()
            return out
        self.call.mark_first_token()
        events = self.splitter.feed(data)
        if not events:
            return []
        out = self._process(events)
        return out if out else []

    def _process(self, events: list[bytes]) -> bytes:
        keep: list[bytes] = []
        carries_usage = self._carries_usage
        for raw in events:
            if carries_usage(raw):
                name, payload = parse_event(raw)
                if payload and payload[0] == "{":
                    try:
                        data = json.loads(payload)
                    except json.JSONDecodeError:
                        data = None
                    if isinstance(data, dict):
                        self.usage.feed(name, data)
                        if (self.drop_usage_chunk and not data.get("choices")
                                and _USAGE_OBJECT.search(raw)):
                            continue
            keep.append(raw)
        return b"".join(keep) if len(keep) != 1 else keep[0]

"""What a fake endpoint answers, as plain data the server then writes out.

Format modules build these from a `FakeRequest` without doing any I/O; the
server applies the delay, chunk pacing and broken-connection controls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokensense.demo.fakeprovider.textgen import Controls


@dataclass(slots=True)
class FakeRequest:
    method: str
    path: str
    prefix: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any
    controls: Controls
    origin: str
    """`scheme://host:port` this server was reached at, for URLs it hands out."""
    files: dict[str, bytes] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    """Parts of the path the route captured (Gemini model and action, fal app, response id);
    `auth` says how the key checked out."""
    state: dict[str, Any] = field(default_factory=dict)
    """State kept across requests by one fake process (stored responses)."""
    raw_body: bytes = b""
    """The body as received (SigV4 signs it; the OAuth token endpoint reads the form)."""
    raw_path: str = ""
    """Path and query as received, percent-encoding kept (SigV4 signs it)."""


@dataclass(slots=True)
class BodyReply:
    """A complete answer sent in one piece."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StreamReply:
    """An answer sent in pieces (chunked), paced by `x-fake-chunk-delay-ms`."""

    status: int
    chunks: list[bytes]
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)


Reply = BodyReply | StreamReply


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> BodyReply:
    return BodyReply(status=status, body=dumps(obj), headers=headers or {})


def sse_data(obj: Any) -> bytes:
    """One OpenAI-style server-sent event: `data: {...}` and a blank line."""
    return b"data: " + dumps(obj) + b"\n\n"


def sse_event(name: str, obj: Any) -> bytes:
    """One named event as Anthropic sends them."""
    return b"event: " + name.encode() + b"\ndata: " + dumps(obj) + b"\n\n"


class FakeError(Exception):
    """A request the real provider would refuse; rendered in that provider's error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

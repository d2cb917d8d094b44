"""Incremental server-sent-events framing: split a byte stream into events as it arrives.

Written here rather than taken from a library: `httpx-sse` and `sseclient`
parse events out of a client response they own, while a proxy sees arbitrary
byte chunks and must hand the same bytes on, event by event, untouched.
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class EventSplitter:
    """Feed chunks; get back the complete raw events (with their blank line)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        start = 0
        while True:
            m = _BOUNDARY.search(buf, start)
            if m is None:
                break
            events.append(buf[start : m.end()])
            start = m.end()
        self._buf = buf[start:]
        return events

    def rest(self) -> bytes:
        """Whatever is left when the stream ends (an unterminated last event)."""
        rest, self._buf = self._buf, b""
        return rest


def parse_event(raw: bytes) -> tuple[str | None, str | None]:
    """(`event:` name, joined `data:` payload) of one raw event; None where absent."""
    name: str | None = None
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            name = line[6:].strip()
    return name, ("\n".join(data) if data else None)

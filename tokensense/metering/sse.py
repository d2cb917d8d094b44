"""Incremental server-sent-events framing: split a byte stream into events as it arrives.

Written here rather than taken from a library: `httpx-sse` and `sseclient`
parse events out of a client response they own, while a proxy sees arbitrary
byte chunks and must hand the same bytes on, event by event, untouched.
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


MAX_EVENT_BYTES = 1 << 20
"""An event longer than this without its blank line is passed on in pieces, unparsed."""

_BOUNDARY_TAIL = 3  # a blank line is at most 4 bytes: the last 3 of a buffer may begin one


class EventSplitter:
    """Feed chunks; get back the complete raw events (with their blank line).

    Linear in the bytes fed, however they are chunked: a partial event is kept
    in a growing buffer and only its new bytes are searched for the blank line.
    An event that grows past `max_event` bytes without one (a broken or hostile
    upstream) is handed back in pieces as it arrives, so the stream still
    passes; `oversized` counts such events.
    """

    __slots__ = ("_buf", "_scan", "_passing", "max_event", "oversized")

    def __init__(self, max_event: int = MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._scan = 0  # where the next search for a blank line starts in `_buf`
        self._passing = False  # in the middle of an oversized event
        self.max_event = max_event
        self.oversized = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        events: list[bytes] = []
        if not self._buf:
            # The common case: chunks that hold whole events, searched without a copy.
            start = 0
            while (m := _BOUNDARY.search(chunk, start)) is not None:
                events.append(chunk[start : m.end()])
                start = m.end()
            if start < len(chunk):
                self._buf += memoryview(chunk)[start:]
                self._scan = 0
            if events:
                self._passing = False
        else:
            buf = self._buf
            buf += chunk
            start = 0
            while (m := _BOUNDARY.search(buf, max(self._scan, start))) is not None:
                events.append(bytes(buf[start : m.end()]))
                start = m.end()
                self._scan = start
                self._passing = False
            if start:
                del buf[:start]
            self._scan = max(len(buf) - _BOUNDARY_TAIL, 0)
        if len(self._buf) > self.max_event:
            # No blank line in sight: pass what came so far on (keeping a possible
            # start of the blank line) rather than hold and rescan it.
            if not self._passing:
                self._passing = True
                self.oversized += 1
            cut = len(self._buf) - _BOUNDARY_TAIL
            events.append(bytes(self._buf[:cut]))
            del self._buf[:cut]
            self._scan = 0
        return events

    def rest(self) -> bytes:
        """Whatever is left when the stream ends (an unterminated last event)."""
        rest = bytes(self._buf)
        self._buf = bytearray()
        self._scan = 0
        self._passing = False
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

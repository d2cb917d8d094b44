"""AWS event-stream framing (`application/vnd.amazon.eventstream`): read frames as they pass, write them for fakes.

Bedrock's streamed answers (ConverseStream, InvokeModelWithResponseStream) are
binary frames, not SSE: a prelude (total length, headers length, CRC), typed
headers (`:message-type`, `:event-type`, `:exception-type`, `:content-type`),
a JSON payload and a CRC of the whole frame. Decoding reuses botocore's
`EventStreamBuffer`, which keeps only the bytes of the frame still incomplete;
encoding is written here (botocore has no encoder) and used by the fake provider.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from botocore.eventstream import EventStreamBuffer, ParserError

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7


class Frame(NamedTuple):
    """One decoded frame: `message_type` is event, exception or error; `event_type` names the event."""

    message_type: str
    event_type: str
    payload: bytes
    headers: dict[str, Any]

    def json(self) -> Any:
        try:
            return json.loads(self.payload) if self.payload else {}
        except (ValueError, UnicodeDecodeError):
            return None


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream frame with string-valued headers."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += struct.pack("!B", len(raw_name)) + raw_name + struct.pack("!BH", _STRING, len(raw_value)) + raw_value
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + encoded + payload
    return body + struct.pack("!I", binascii.crc32(body) & 0xFFFFFFFF)


def event_frame(event_type: str, payload: Any) -> bytes:
    """A JSON `event` frame, as Bedrock sends each stream event."""
    return encode_frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        json.dumps(payload, separators=(",", ":")).encode(),
    )


def exception_frame(exception_type: str, message: str) -> bytes:
    """An `exception` frame (throttlingException, modelStreamErrorException, ...) as Bedrock sends mid-stream."""
    return encode_frame(
        {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"},
        json.dumps({"message": message}).encode(),
    )


def chunk_payload(event: dict) -> dict:
    """InvokeModelWithResponseStream wraps each model event as `{"bytes": base64(JSON)}` in a `chunk` frame."""
    return {"bytes": base64.b64encode(json.dumps(event, separators=(",", ":")).encode()).decode()}


def decode_chunk(payload: Any) -> dict | None:
    """The model event inside a `chunk` frame payload, or None."""
    if not isinstance(payload, dict) or not isinstance(payload.get("bytes"), str):
        return None
    try:
        inner = json.loads(base64.b64decode(payload["bytes"]))
    except (ValueError, binascii.Error):
        return None
    return inner if isinstance(inner, dict) else None


class FrameReader:
    """Feed byte chunks as they arrive; get back the frames completed so far.

    A corrupt frame (bad CRC or lengths) ends the reading: `failed` is set and
    later bytes are ignored, since frame boundaries can no longer be found.
    """

    __slots__ = ("_buffer", "failed")

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        self.failed = False

    def feed(self, data: bytes) -> list[Frame]:
        if self.failed or not data:
            return []
        self._buffer.add_data(data)
        frames: list[Frame] = []
        try:
            for message in self._buffer:
                headers = message.headers
                frames.append(Frame(
                    str(headers.get(":message-type", "event")),
                    str(headers.get(":event-type") or headers.get(":exception-type") or headers.get(":error-code") or ""),
                    message.payload,
                    headers,
                ))
        except ParserError as e:
            log.warning("unreadable AWS event-stream frame (%s); usage of this stream may be incomplete", type(e).__name__)
            self.failed = True
        return frames


class EventStreamPassthrough:
    """The `flow.response.stream` callable for a native Bedrock stream: bytes go on untouched.

    Every complete frame is handed to `on_frame` as it passes (for usage); at the
    end `on_end` runs. Nothing is held back: each chunk is returned as it came.
    """

    def __init__(self, on_frame: Callable[[Frame], None], *, on_first: Callable[[], None] | None = None,
                 on_end: Callable[[], None] | None = None) -> None:
        self.reader = FrameReader()
        self.on_frame = on_frame
        self.on_first = on_first
        self.on_end = on_end

    def __call__(self, data: bytes) -> bytes:
        if not data:
            if self.on_end:
                self.on_end()
                self.on_end = None
            return b""
        if self.on_first:
            self.on_first()
            self.on_first = None
        for frame in self.reader.feed(data):
            self.on_frame(frame)
        return data

"""Saving flows to a mitmproxy flow file with keys (and optionally prompts and answers) redacted, off the event loop."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.exceptions import FlowReadException
from mitmproxy.io import FlowReader, FlowWriter

from tokensense.metering.sse import EventSplitter

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
RECORD = "tokensense.record"  # flow.metadata: the usage record TokenSense wrote for this call (a JSON object)
RECORDING = "tokensense.flows.recording"  # flow.metadata: how the flow was saved (see `recording_info`)

# Headers that can carry a TokenSense key, a provider key or proxy credentials.
SECRET_HEADERS = ("authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "x-tokensense-key",
                  "api-key", "anthropic-api-key")
SECRET_PARAMS = ("key",)  # Gemini REST puts the key in the URL

# With body redaction: strings under these keys stay (they name things, they are not prompt or answer text);
# whole objects under KEEP_TREES stay (usage, so a redacted file can still be re-priced).
KEEP_STRINGS = frozenset({
    "model", "modelVersion", "object", "type", "role", "id", "responseId", "system_fingerprint", "service_tier",
    "finish_reason", "stop_reason", "finishReason", "status", "code", "event", "size", "quality",
    "response_format", "output_format", "encoding_format", "mimeType", "content_type", "modality",
})
KEEP_TREES = frozenset({"usage", "usageMetadata", "stream_options", "timings"})
DROP_LISTS = frozenset({"embedding", "values"})  # embedding vectors: derived from the input text

# A streamed answer is kept in memory only while it is recorded; past this size the rest is not kept.
MAX_CAPTURE = 64 * 1024 * 1024


def recording_info(*, bodies_redacted: bool, stream_captured: bool, usage_chunk_added: bool) -> dict[str, Any]:
    """What `tokensense.flows.recording` says about a saved flow.

    `stream_captured`: the response body is the stream as the provider sent it
    (before TokenSense's own changes such as removing the usage chunk).
    `usage_chunk_added`: TokenSense asked upstream for that usage chunk; the
    client did not (replay removes it again).
    """
    return {"version": 1, "bodies_redacted": bodies_redacted, "stream_captured": stream_captured,
            "usage_chunk_added": usage_chunk_added}


# -- redaction (pure: flow in, flow changed in place) -----------------------------------


def redact_keys(flow: http.HTTPFlow) -> None:
    """Replace every key and credential in `flow` (headers of both messages, `?key=` in the URL)."""
    for message in (flow.request, flow.response):
        if message is None:
            continue
        for name in SECRET_HEADERS:
            values = message.headers.get_all(name)
            if values:
                message.headers.set_all(name, [REDACTED] * len(values))
    query = flow.request.query
    for name in SECRET_PARAMS:
        values = query.get_all(name)
        if values:
            query.set_all(name, [REDACTED] * len(values))
    flow._backup = None  # an edit backup would still hold the original request


def redact_json(value: Any, key: str | None = None) -> Any:
    """`value` with its text replaced: strings become `[redacted]` except the names in KEEP_STRINGS.

    Numbers, booleans, object keys and list lengths stay, so token counts,
    image counts and sizes survive; usage objects are kept whole.
    """
    if isinstance(value, dict):
        return {k: v if k in KEEP_TREES else redact_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [] if key in DROP_LISTS else [redact_json(v, key) for v in value]
    if isinstance(value, str):
        return value if key in KEEP_STRINGS else REDACTED
    return value


def _redact_json_text(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return json.dumps(redact_json(value), separators=(",", ":"), ensure_ascii=False)


def redact_sse(body: bytes) -> bytes:
    """A server-sent-events body with each JSON `data:` payload redacted; event names and `[DONE]` stay."""
    splitter = EventSplitter()
    events = splitter.feed(body)
    rest = splitter.rest()
    if rest:
        events.append(rest)
    out: list[bytes] = []
    for event in events:
        for line in event.splitlines(keepends=True):
            text = line.decode("utf-8", "replace")
            content = text.rstrip("\r\n")
            ending = text[len(content):]
            if content.startswith("data:"):
                payload = content[5:].strip()
                if payload != "[DONE]":
                    payload = _redact_json_text(payload) or REDACTED
                content = f"data: {payload}"
            elif content and not content.startswith(("event:", "id:", "retry:")):
                content = ":"  # a comment or an unknown field: nothing of it is kept
            out.append((content + ending).encode())
    return b"".join(out)


def redact_body(message: http.Message) -> None:
    """Replace the prompt or answer text in a request or response body (usage and structure stay)."""
    content = message.get_content(strict=False)
    if not content:
        return
    content_type = message.headers.get("content-type", "").lower()
    if "event-stream" in content_type:
        new = redact_sse(content)
    elif "json" in content_type or content.lstrip()[:1] in (b"{", b"["):
        text = _redact_json_text(content.decode("utf-8", "replace"))
        new = text.encode() if text is not None else b""
    else:
        new = b""  # audio, images, multipart uploads, plain text: nothing of them is kept
    message.content = new


def redact_flow(flow: http.HTTPFlow, *, bodies: bool) -> None:
    redact_keys(flow)
    if bodies:
        redact_body(flow.request)
        if flow.response is not None:
            redact_body(flow.response)


def snapshot(flow: http.HTTPFlow, metadata: dict[str, Any]) -> http.HTTPFlow:
    """An independent copy of `flow` to save, carrying only `metadata` (the live metadata is not serializable)."""
    live, flow.metadata = flow.metadata, {}
    try:
        copy = flow.copy()
    finally:
        flow.metadata = live
    copy.metadata = metadata
    copy._backup = None
    return copy


# -- capturing streamed answers ---------------------------------------------------------


class StreamCapture:
    """Wraps a `flow.response.stream` callable (or `True`) and keeps the bytes the provider sent.

    mitmproxy does not keep a streamed body. TokenSense keeps it while recording,
    as it arrived from upstream: with the usage chunk a client may not see, so
    the saved flow can be re-priced.
    """

    __slots__ = ("inner", "buffer", "truncated")

    def __init__(self, inner: Callable[[bytes], Any] | bool) -> None:
        self.inner = inner
        self.buffer = bytearray()
        self.truncated = False

    def __call__(self, data: bytes) -> Any:
        if data and not self.truncated:
            if len(self.buffer) + len(data) > MAX_CAPTURE:
                self.truncated = True
            else:
                self.buffer += data
        return self.inner(data) if callable(self.inner) else data

    def body(self) -> bytes:
        return bytes(self.buffer)


# -- writing ------------------------------------------------------------------------------

_STOP = object()


def open_flow_file(spec: str):  # type: ignore[no-untyped-def]
    """Open a flow file for writing: `FILE` overwrites, `+FILE` appends (mitmproxy's convention)."""
    append = spec.startswith("+")
    path = Path(os.path.expanduser(spec[1:] if append else spec))
    if path.parent and not path.parent.exists():
        raise OSError(f"cannot record to {path}: the folder {path.parent} does not exist")
    return path, path.open("ab" if append else "wb")


class FlowFileWriter:
    """Redacts and appends flows to a mitmproxy flow file from a background thread.

    `submit` only queues; redaction, serialization and disk writes happen in
    the thread, so the proxy's event loop never waits for the disk. `close`
    writes everything queued before it returns.
    """

    def __init__(self, spec: str) -> None:
        self.path, self._file = open_flow_file(spec)
        self._writer = FlowWriter(self._file)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pending = 0
        self.written = 0
        self.failed = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tokensense-flow-writer", daemon=True)
        self._thread.start()

    def submit(self, flow: http.HTTPFlow, *, redact_bodies: bool) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put((flow, redact_bodies))

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every flow submitted so far is on disk (tests, shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout)
        self._file.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            flow, redact_bodies = item
            try:
                redact_flow(flow, bodies=redact_bodies)
                self._writer.add(flow)
                self._file.flush()
                self.written += 1
            except Exception as e:  # a flow that cannot be saved must not stop the others
                self.failed += 1
                log.error("could not save a flow to %s: %s", self.path, type(e).__name__)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()


def read_flow_file(path: Path) -> list[object]:
    """Every flow in a mitmproxy flow file; a file that is not one is a ValueError that says so."""
    try:
        with path.open("rb") as f:
            return list(FlowReader(f).stream())
    except FlowReadException as e:
        raise ValueError(f"{path} is not a mitmproxy flow file ({e}); record one with "
                         "`tokensense serve --record FILE` or `mitmdump -w FILE`") from None

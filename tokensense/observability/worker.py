"""The observability thread: turns finished calls into metrics and spans, and written records into budget checks.

The proxy's event loop only puts a small `FinishedCall` on a queue (and the
recorder's thread a batch of written records). Like the recorder, the thread
wakes for the first item and then sleeps `interval` before taking everything
queued, so under load it does not take the interpreter from the loop once per
request.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tokensense.storage.models import UsageCreate

log = logging.getLogger(__name__)

_STOP = object()


@dataclass(slots=True)
class FinishedCall:
    """One recorded call and what only the flow knew about it."""

    record: UsageCreate
    start_ns: int  # wall clock (time.time_ns) when the request arrived
    end_ns: int  # and when the call was recorded
    upstream_error: str | None = None  # see metrics.upstream_error_kind
    traceparent: str | None = None
    tracestate: str | None = None
    response_body: bytes | None = None  # unstreamed answers as sent, for gen_ai.response.model (only with tracing)
    content_encoding: str | None = None


@dataclass(slots=True)
class WrittenRecords:
    """A batch the recorder has written: the spend of its keys is settled in the database."""

    records: list[UsageCreate]


class ObservabilityWorker:
    """A daemon thread handing queued items, in batches, to `handle_calls` and `handle_written`."""

    def __init__(self, *, handle_calls: Callable[[list[FinishedCall]], None],
                 handle_written: Callable[[list[UsageCreate]], None], interval: float = 0.25) -> None:
        self.handle_calls = handle_calls
        self.handle_written = handle_written
        self.interval = interval
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closing = threading.Event()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="tokensense-observability", daemon=True)
        self._thread.start()

    def call_finished(self, call: FinishedCall) -> None:
        """From the event loop: no waiting, no I/O."""
        self._put(call)

    def records_written(self, records: list[UsageCreate]) -> None:
        """From the recorder's thread, after a batch is in the database."""
        self._put(WrittenRecords(list(records)))

    def _put(self, item: object) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(item)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far is handled (tests and shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._closing.set()
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            self._closing.wait(self.interval)
            items = [item]
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                items.append(item)
            self._handle(items)

    def _handle(self, items: list[object]) -> None:
        calls = [i for i in items if isinstance(i, FinishedCall)]
        written = [r for i in items if isinstance(i, WrittenRecords) for r in i.records]
        try:
            if calls:
                self.handle_calls(calls)
            if written:
                self.handle_written(written)
        except Exception:
            log.exception("observability: handling %d calls and %d written records failed", len(calls), len(written))
        finally:
            with self._idle:
                self._pending -= len(items)
                self._idle.notify_all()

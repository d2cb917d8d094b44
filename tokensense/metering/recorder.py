"""Writes usage records in batches from a background thread, never on the proxy's loop."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from tokensense.storage.models import UsageCreate
from tokensense.storage.repo import record_usages

log = logging.getLogger(__name__)

_STOP = object()
# Batches go through `repo.record_usages`: one executemany INSERT, without ORM
# objects (building a `Usage` row object costs about 0.3 ms of the interpreter's
# time per record, which the proxy's event loop, sharing that interpreter, would
# wait for). Multi-row VALUES via RETURNING was tried: no measurable gain, and
# every distinct batch size left a large prepared statement in the driver's
# cache: +12 MB per 10,000 requests.


class UsageRecorder:
    """Queue records with `submit` (non-blocking); a thread inserts them in batches.

    `close()` drains the queue, so a clean shutdown loses nothing. If the
    database is unavailable, the batch is retried until it succeeds or the
    recorder is closed (then the failure is logged with the number of records).
    """

    def __init__(self, engine: Engine, *, interval: float = 0.25, max_batch: int = 500,
                 on_written: Callable[[list[UsageCreate]], None] | None = None) -> None:
        self.engine = engine
        self.interval = interval
        self.max_batch = max_batch
        self.on_written = on_written
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="tokensense-recorder", daemon=True)
        self._closed = False
        self.written = 0
        self._idle = threading.Condition()
        self._pending = 0
        self._closing = threading.Event()
        self._thread.start()

    def submit(self, record: UsageCreate) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(record)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted so far is written (for tests and shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        stopping = False
        behind = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            # One transaction per batch: what arrives within `interval` of the first
            # record. The thread sleeps through that time rather than waiting on the
            # queue, which `submit` would wake for every record, each time taking the
            # interpreter lock from the proxy's event loop. A full batch means more
            # are waiting: the next one is written at once.
            if not behind:
                self._closing.wait(self.interval)
            batch: list[UsageCreate] = [item]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            behind = len(batch) >= self.max_batch
            self._write(batch, final=stopping)
        # Anything submitted after close() was called still gets written.
        leftovers = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftovers.append(item)
        if leftovers:
            self._write(leftovers, final=True)

    def _write(self, batch: list[UsageCreate], *, final: bool) -> None:
        attempt = 0
        written = batch
        while True:
            try:
                with Session(self.engine) as session:
                    record_usages(session=session, usages=batch)
                break
            except Exception as e:
                attempt += 1
                # Only the database being unavailable is worth retrying; a record it
                # rejects would be rejected again. SQL parameters are not logged.
                transient = isinstance(e, OperationalError)
                if not transient or (final and attempt >= 3) or attempt >= 50:
                    log.error("dropped %d usage records after %d failed writes: %s", len(batch), attempt,
                              type(e).__name__ + ": " + str(getattr(e, "orig", None) or e).splitlines()[0])
                    written = []
                    break
                log.warning("usage write failed (attempt %d), retrying: %s", attempt, type(e).__name__)
                threading.Event().wait(min(0.2 * attempt, 2.0))
        self.written += len(written)
        if self.on_written and written:
            try:
                self.on_written(written)
            except Exception:
                log.exception("usage callback failed")
        with self._idle:
            self._pending -= len(batch)
            self._idle.notify_all()

"""Writes usage records in batches from a background thread, never on the proxy's loop.

Nothing submitted is lost to a bad record, a database outage or a shutdown:

- A batch the database refuses for its content is retried row by row: the bad
  row goes to the dead-letter file (with the reason), every other row is written.
- A batch the database cannot take (unreachable, locked, read-only) goes to the
  spool (see `tokensense/metering/spool.py`), as does everything after it until
  the database answers again; then the spool is written back in order. Records
  are stored once even if written twice (unique request_id and attempt).
- The in-memory queue is bounded: when it is full, `submit` hands records to a
  second thread that appends them to the spool (a local file append, no
  database wait), so the proxy's loop never blocks.
- `close(timeout)` writes what is queued to the database, or to the spool if the
  database does not answer, within `timeout`, and logs the counts.

Until a record is in the database its cost is kept in `unwritten`
(`UnwrittenSpend`): the budget counters are seeded from the database's sum plus
that, so a batch still waiting for its write (or a spool waiting for the
database) does not make a spent budget look unspent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlmodel import Session

from tokensense.metering.spool import DEAD_LETTER_FILE, SPOOL_DIRECTORY, DeadLetters, Spool
from tokensense.settings import Settings
from tokensense.storage.budgets import record_subjects
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

_QUICK_RETRIES = (0.2, 0.5)  # seconds before retrying a failed write, before spooling the batch
_PROBE_BACKOFF = (0.5, 1.0, 2.0, 5.0)  # seconds between attempts to reach the database during an outage


def is_transient(error: BaseException) -> bool:
    """Whether a failed write says the database is unavailable (retry later) rather than the data bad."""
    if isinstance(error, (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError, OSError)):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def describe_error(error: BaseException) -> str:
    """A one-line reason without SQL parameters."""
    first = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else ''}".strip()


class UnwrittenSpend:
    """The cost of records submitted to this process's recorder that the database does not hold yet.

    Kept per key and UTC day (budget windows start at a UTC midnight). A record
    counts from `add` (at submit, or when an earlier run's spool is adopted) until
    `committed`, called once the database has committed it; a record that never
    reaches the database (quarantined, or dropped past the spool's bound) stays
    counted for the life of the process: its spend happened all the same.

    `read(key_id, since, database_sum)` is exact: the writer commits a batch and
    forgets its records under `commit_lock`, and the read takes the tally and the
    database's sum under it too, so a batch is never counted in both (nor in
    neither). The proxy's event loop never takes that lock (`add` takes another).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.commit_lock = threading.Lock()
        # subject (a key id, or a budget's `spend_subject`) -> day -> [cost, records]
        self._by_key: dict[str, dict[date, list[float]]] = {}

    def add(self, records: Iterable[UsageCreate]) -> None:
        with self._lock:
            for record in records:
                if record.cost_usd:
                    day = _utc_day(record.created_at)
                    for subject in record_subjects(record):  # its key, and its budgets on attribution
                        bucket = self._by_key.setdefault(subject, {}).setdefault(day, [0.0, 0])
                        bucket[0] += record.cost_usd
                        bucket[1] += 1

    def committed(self, records: Iterable[UsageCreate]) -> None:
        """The database holds these records now (call with `commit_lock` held, right after the commit)."""
        with self._lock:
            for record in records:
                if not record.cost_usd:
                    continue
                day = _utc_day(record.created_at)
                for subject in record_subjects(record):
                    days = self._by_key.get(subject)
                    bucket = days.get(day) if days else None
                    if days is None or bucket is None:
                        continue
                    bucket[0] -= record.cost_usd
                    bucket[1] -= 1
                    if bucket[1] <= 0:  # the last one: no float residue left behind
                        del days[day]
                        if not days:
                            del self._by_key[subject]

    def pending(self, key_id: str, since: datetime | None) -> float:
        """The key's unwritten cost since `since`'s UTC day (None: all)."""
        first = None if since is None else _utc_day(since)
        with self._lock:
            days = self._by_key.get(key_id, {})
            return sum(b[0] for d, b in days.items() if first is None or d >= first)

    def read(self, key_id: str, since: datetime | None, database_sum: Callable[[], float]) -> float:
        """The key's settled spend since `since`: the database's sum plus what it does not hold yet (blocking)."""
        with self.commit_lock:
            return database_sum() + self.pending(key_id, since)

    @property
    def keys(self) -> int:
        with self._lock:
            return len(self._by_key)


def _utc_day(moment: datetime) -> date:
    if moment.tzinfo is UTC or moment.tzinfo is None:  # records are made in UTC; naive ones are UTC already
        return moment.date()
    return moment.astimezone(UTC).date()


@dataclass(slots=True)
class RecorderStatus:
    outage: bool
    spooled: int  # records in the spool waiting for the database
    quarantined: int  # records put in the dead-letter file by this process
    queued: int
    written: int
    dropped: int  # records lost because the spool was full

    def as_dict(self) -> dict[str, object]:
        return {"records": "spooling" if self.outage or self.spooled else "ok", "spooled": self.spooled,
                "quarantined": self.quarantined, "queued": self.queued, "dropped": self.dropped}


class UsageRecorder:
    """Queue records with `submit` (non-blocking); a thread inserts them in batches.

    Without a `spool` (unit tests), a batch the database cannot take is retried
    until `close`, then dropped with an error in the log.
    """

    def __init__(self, engine: Engine, *, interval: float = 0.25, max_batch: int = 500, max_queue: int = 10_000,
                 spool: Spool | None = None, dead_letters: DeadLetters | None = None,
                 on_written: Callable[[list[UsageCreate]], None] | None = None) -> None:
        self.engine = engine
        self.interval = interval
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.spool = spool
        self.dead_letters = dead_letters
        self.on_written = on_written  # called in the writer thread with the records now in the database
        self.unwritten = UnwrittenSpend()  # the spend of records not in the database yet (budget seeds)
        self._adopted = threading.Event()  # set once an earlier run's spool is counted in `unwritten`
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._overflow: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._idle = threading.Condition()
        self._pending = 0
        self._current: list[UsageCreate] = []  # the batch the thread is writing
        self._outage = False
        self._probe_at = 0.0
        self._probe_failures = 0
        self._overflowing = False
        self.written = 0
        self.replayed = 0
        self.overflowed = 0
        self.lost = 0  # dropped without a spool (tests) or past the spool's bound
        self._thread = threading.Thread(target=self._run, name="tokensense-recorder", daemon=True)
        self._overflow_thread = threading.Thread(target=self._run_overflow, name="tokensense-spool", daemon=True)
        self._thread.start()
        if spool is not None:
            self._overflow_thread.start()
        else:
            self._adopted.set()

    # --- the proxy's side -------------------------------------------------------

    def submit(self, record: UsageCreate) -> None:
        self.unwritten.add((record,))
        with self._idle:
            self._pending += 1
        if self.spool is not None and self._queue.qsize() >= self.max_queue:
            # The writer is behind (a slow or frozen database): straight to the spool.
            if not self._overflowing:
                self._overflowing = True
                log.warning("usage queue full (%d records): spooling new records", self.max_queue)
            self.overflowed += 1
            self._overflow.put(record)
            return
        self._overflowing = False
        self._queue.put(record)

    def settled_spend(self, key_id: str, since: datetime | None, database_sum: Callable[[], float]) -> float:
        """What the key spent since `since`: the database's sum (`database_sum`, a blocking read) plus the records
        this recorder holds that the database has not committed yet (queue, batch being written, spool)."""
        self._adopted.wait(timeout=60)  # an earlier run's spool is counted before anything is seeded
        return self.unwritten.read(key_id, since, database_sum)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted so far is stored: in the database, the spool or the dead-letter file."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def status(self) -> RecorderStatus:
        return RecorderStatus(
            outage=self._outage, spooled=self.spool.pending_records if self.spool else 0,
            quarantined=self.dead_letters.count if self.dead_letters else 0, queued=self._queue.qsize(),
            written=self.written, dropped=self.lost + (self.spool.dropped if self.spool else 0))

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (to the database, else the spool) within `timeout` seconds; log the counts."""
        if self._closed:
            return
        self._closed = True
        start = time.monotonic()
        self._deadline = start + timeout
        self._closing.set()
        self._queue.put(_STOP)
        # The thread needs a moment at the end to spool what the database did not take.
        self._thread.join(timeout=max(timeout - 1.0, timeout * 0.8))
        rescued = 0
        if self._thread.is_alive():
            # Stuck on the database: spool the batch it is writing and everything queued
            # (a record that also reaches the database is stored once all the same).
            leftovers = list(self._current) + self._drain(self._queue)
            if self.spool is not None and leftovers:
                rescued = self.spool.append(leftovers)
            log.error("usage database did not answer within the shutdown grace; %d records spooled", rescued)
        if self._overflow_thread.is_alive():
            self._overflow.put(_STOP)
            self._overflow_thread.join(timeout=max(self._deadline - time.monotonic(), 0.5))
        status = self.status()
        if self.spool is not None:
            self.spool.close()
        log.info("usage recorder closed: %d records written, %d spooled for the next start, %d quarantined, "
                 "%d lost", self.written, status.spooled, status.quarantined, status.dropped)

    # --- the writer thread ------------------------------------------------------

    def _run(self) -> None:
        if self.spool is not None:
            try:
                if self.spool.adopt_orphans():
                    self.unwritten.add(self.spool.adopted_records())
            except OSError as e:
                log.error("could not read the usage spool: %s", e)
            finally:
                self._adopted.set()
        stopping = False
        behind = False
        while not stopping:
            item = self._next(self._idle_wait())
            batch: list = []
            if item is _STOP:
                stopping = True
            elif item is not None:
                # One transaction per batch: what arrives within `interval` of the first
                # record. The thread sleeps through that time rather than waiting on the
                # queue, which `submit` would wake for every record, each time taking the
                # interpreter lock from the proxy's event loop. A full batch means more
                # are waiting: the next one is written at once.
                if not behind:
                    self._closing.wait(self.interval)
                batch.append(item)
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
            if batch:
                self._store(batch)
            self._replay_some()
        # Anything submitted after close() was called still gets stored.
        leftovers = [r for r in self._drain(self._queue) if r is not _STOP]
        for start in range(0, len(leftovers), self.max_batch):
            self._store(leftovers[start:start + self.max_batch])
        # Spooled records go to the database while the grace lasts (one more try if it was
        # out); the rest wait for the next start.
        self._probe_at = 0.0
        while self.spool is not None and self.spool.pending and self._time_left() > 1.0:
            if not self._replay_some():
                break

    def _next(self, wait: float | None) -> object | None:
        try:
            if wait == 0:
                return self._queue.get_nowait()
            return self._queue.get(timeout=wait)
        except queue.Empty:
            return None

    def _idle_wait(self) -> float | None:
        """How long to wait for a record: forever, unless spooled records wait for the database."""
        if self.spool is None or not self.spool.pending:
            return None
        if not self._outage:
            return 0
        return max(self._probe_at - time.monotonic(), 0.01)

    def _time_left(self) -> float:
        return self._deadline - time.monotonic()

    def _done(self, count: int) -> None:
        with self._idle:
            self._pending -= count
            self._idle.notify_all()

    def _written(self, records: list[UsageCreate]) -> None:
        self.written += len(records)
        if self.on_written is not None and records:
            try:
                self.on_written(records)
            except Exception:
                log.exception("usage callback failed")

    def _insert(self, records: list[UsageCreate]) -> None:
        # The only place this process commits records: `unwritten` forgets them in the same step, so a budget
        # seed (`UnwrittenSpend.read`) counts each record once, in the database or not yet.
        with self.unwritten.commit_lock:
            with Session(self.engine) as session:
                record_usages(session=session, usages=records)
            self.unwritten.committed(records)

    def _store(self, batch: list[UsageCreate]) -> None:
        """Write a batch, or spool it while the database is out (or older spooled records wait)."""
        self._current = batch
        try:
            waiting = self._outage and time.monotonic() < self._probe_at
            if self.spool is not None and (waiting or self.spool.pending):
                self._to_spool(batch)
            else:
                self._write(batch)
        finally:
            self._current = []
            self._done(len(batch))

    def _write(self, batch: list[UsageCreate]) -> None:
        error: BaseException | None = None
        for delay in (0.0, *_QUICK_RETRIES):
            if delay:
                if self._closing.is_set() and self._time_left() < delay + 1.0:
                    break
                log.warning("usage write failed, retrying: %s", describe_error(error))  # type: ignore[arg-type]
                time.sleep(delay)
            try:
                self._insert(batch)
            except Exception as e:
                error = e
                if not is_transient(e):
                    self._write_rows(batch, e)
                    return
                continue
            self._written(batch)
            if self._outage:
                self._outage = False
                self._probe_failures = 0
                log.warning("usage database available again")
            return
        assert error is not None
        self._start_outage(error)
        self._to_spool(batch)

    def _write_rows(self, batch: list[UsageCreate], error: BaseException) -> None:
        """The database refused the batch for its content: write row by row, quarantine the bad ones."""
        log.warning("a batch of %d usage records was refused (%s); writing them one by one",
                    len(batch), describe_error(error))
        for index, record in enumerate(batch):
            try:
                self._insert([record])
            except Exception as e:
                if is_transient(e):
                    self._start_outage(e)
                    self._to_spool(batch[index:])
                    return
                self._quarantine(record, describe_error(e))
            else:
                self._written([record])

    def _quarantine(self, record: UsageCreate | str, reason: str) -> None:
        if self.dead_letters is not None:
            try:
                self.dead_letters.add(record, reason)
                return
            except OSError as e:
                reason = f"{reason}; the dead-letter file failed too: {e}"
        self.lost += 1
        log.error("usage record dropped: %s", reason)

    def _to_spool(self, batch: list[UsageCreate]) -> None:
        if self.spool is None:
            self._hold(batch)
            return
        try:
            self.spool.append(batch)  # past its bound, the spool counts what it drops
        except OSError as e:
            log.error("could not write %d usage records to the spool: %s", len(batch), e)
            self.lost += len(batch)

    def _hold(self, batch: list[UsageCreate]) -> None:
        """No spool (tests): retry the batch until it is written or the recorder closes."""
        while not self._closing.is_set():
            self._closing.wait(0.5)
            try:
                self._insert(batch)
            except Exception as e:
                if not is_transient(e):
                    self._write_rows(batch, e)
                    return
                continue
            self._outage = False
            self._written(batch)
            return
        self.lost += len(batch)
        log.error("dropped %d usage records: the database was unavailable at shutdown", len(batch))

    def _start_outage(self, error: BaseException) -> None:
        if not self._outage:
            log.error("usage database unavailable (%s): records go to the spool until it answers",
                      describe_error(error))
        self._outage = True
        self._probe_at = time.monotonic() + _PROBE_BACKOFF[min(self._probe_failures, len(_PROBE_BACKOFF) - 1)]
        self._probe_failures += 1

    def _replay_some(self) -> bool:
        """Write the next spooled batch if the database is due a try; whether one was written."""
        if self.spool is None or not self.spool.pending:
            return False
        if self._outage and time.monotonic() < self._probe_at:
            return False
        found = self.spool.read(self.max_batch)
        if found is None:
            return False
        spool_file, batch = found
        try:
            if batch.records:
                self._insert(batch.records)
        except Exception as e:
            if is_transient(e):
                self._start_outage(e)
                return False
            # Row by row (what is already stored is skipped): only the bad rows are quarantined.
            for record in batch.records:
                try:
                    self._insert([record])
                except Exception as row_error:
                    if is_transient(row_error):
                        self._start_outage(row_error)
                        return False
                    self._quarantine(record, describe_error(row_error))
        for line, reason in batch.unreadable:
            self._quarantine(line, reason)
        self.spool.mark_replayed(spool_file, batch)
        self.replayed += len(batch.records)
        self._written(batch.records)
        if self._outage:
            self._outage = False
            self._probe_failures = 0
            log.warning("usage database available again; writing %d spooled records", self.spool.pending_records
                        + len(batch.records))
        return True

    # --- the overflow thread ------------------------------------------------------

    def _run_overflow(self) -> None:
        assert self.spool is not None
        while True:
            item = self._overflow.get()
            batch = [item, *self._drain(self._overflow)]
            stop = any(r is _STOP for r in batch)
            records = [r for r in batch if r is not _STOP]
            if records:
                try:
                    self.spool.append(records)
                except (OSError, ValueError) as e:
                    log.error("could not spool %d usage records: %s", len(records), e)
                    self.lost += len(records)
                self._done(len(records))
            if stop:
                return

    @staticmethod
    def _drain(q: queue.SimpleQueue) -> list:
        items = []
        while True:
            try:
                items.append(q.get_nowait())
            except queue.Empty:
                return items


def usage_recorder(engine: Engine, settings: Settings) -> UsageRecorder:
    """The recorder of a gateway (or of the supervisor's hub): spool and dead-letter file under TOKENSENSE_HOME."""
    home = settings.home
    return UsageRecorder(
        engine, interval=settings.flush_interval, max_queue=settings.record_queue_max,
        spool=Spool(home / SPOOL_DIRECTORY, max_bytes=settings.spool_max_mb * 1_000_000),
        dead_letters=DeadLetters(home / DEAD_LETTER_FILE))

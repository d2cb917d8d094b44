"""Retention: raw usage records (and minute rollups) older than `[retention] raw_days` are deleted in small batches.

What the gateway remembers of provider objects (batch jobs booked and files, video jobs, context caches) goes
with the records of the same age (`prune_resources`).

Hour rollups are kept, so reports over any window stay exact (a window that starts
before the retention horizon counts from the start of that hour, see
`analytics.effective_start`). The horizon is recorded *before* anything is deleted,
so a report running during a prune already reads whole hours where records go
away, and gives the same numbers before, during and after.

Deleting runs in short transactions of `batch` records with a pause between them:
on SQLite the record writer waits at most one batch for the write lock (its busy
timeout is 5 s), on PostgreSQL it does not wait at all (other rows).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, select, update

from tokensense.storage.models import (
    BatchFile,
    BatchJob,
    OwnedResource,
    UploadSession,
    Usage,
    UsageRetention,
    UsageRollup,
)
from tokensense.storage.rollups import HOUR, MINUTE, MINUTE_CUTS, epoch_seconds, from_epoch

log = logging.getLogger(__name__)

DEFAULT_BATCH = 2_000
"""Records deleted per transaction (a few milliseconds of the database's write lock on SQLite)."""
PRUNE_EVERY_S = 3600.0
"""How often the gateway's retention thread looks for records past `raw_days`."""


@dataclass(frozen=True)
class PruneResult:
    raw_before: datetime
    """Records before this time are gone (a whole hour)."""
    records: int
    """Records deleted by this run."""
    minute_rows: int
    """Minute rollup rows deleted by this run."""
    resource_rows: int = 0
    """Rows of batch jobs and files, and of owned provider objects, deleted by this run (`prune_resources`)."""


def horizon_for(older_than: timedelta, *, now: datetime | None = None) -> datetime:
    """The whole hour at or before `now - older_than`: records before it are past retention."""
    second = epoch_seconds((now or datetime.now(UTC)) - older_than)
    return from_epoch(second - second % HOUR)


def _created_at_bound(moment: datetime) -> datetime:
    column_type = Usage.__table__.c.created_at.type  # type: ignore[attr-defined]
    return moment if getattr(column_type, "timezone", False) else moment.replace(tzinfo=None)


def set_raw_horizon(engine: Engine, raw_before: datetime) -> datetime:
    """Record that records before `raw_before` (a whole hour) may be gone; never moves the horizon back."""
    second = epoch_seconds(raw_before)
    if second % HOUR:
        raise ValueError(f"the retention horizon must be a whole hour, not {raw_before.isoformat()}")
    table = UsageRetention.__table__  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    with engine.begin() as connection:
        current = connection.execute(select(table.c.raw_before).where(table.c.id == 1)).scalar()
        if current is None:
            connection.execute(table.insert().values(id=1, raw_before=second, pruned_at=now))
            return raw_before
        if current >= second:
            return from_epoch(current)
        connection.execute(update(table).where(table.c.id == 1).values(raw_before=second, pruned_at=now))
    return raw_before


def prune_usage(engine: Engine, *, older_than: timedelta, now: datetime | None = None, batch: int = DEFAULT_BATCH,
                pause: float = 0.01, stop: threading.Event | None = None) -> PruneResult:
    """Delete the records (and minute rollup rows) from before the whole hour `older_than` ago, `batch` at a time.

    Blocking (call it from a thread, never on the proxy's loop). `stop` ends it between
    batches; what is left goes at the next run.
    """
    if older_than <= timedelta(0):
        raise ValueError("retention must keep records for a positive time, e.g. 90 days")
    if batch < 1:
        raise ValueError(f"the prune batch must be at least 1 record, not {batch}")
    horizon = set_raw_horizon(engine, horizon_for(older_than, now=now))
    bound = _created_at_bound(horizon)
    usage = Usage.__table__  # type: ignore[attr-defined]
    records = 0
    while stop is None or not stop.is_set():
        with engine.begin() as connection:
            doomed = select(usage.c.id).where(usage.c.created_at < bound).limit(batch).scalar_subquery()
            deleted = connection.execute(delete(usage).where(usage.c.id.in_(doomed))).rowcount or 0
        records += deleted
        if deleted < batch:
            break
        if pause:
            time.sleep(pause)
    minute_rows = _prune_minute_rows(engine, epoch_seconds(horizon), pause=pause, stop=stop)
    resource_rows = prune_resources(engine, horizon)
    if records or minute_rows or resource_rows:
        log.info("retention: deleted %d usage records, %d minute rollup rows and %d batch and owned resource rows "
                 "from before %s", records, minute_rows, resource_rows, horizon.isoformat())
    return PruneResult(horizon, records, minute_rows, resource_rows)


def _bound(column: Any, moment: datetime) -> datetime:
    return moment if getattr(column.type, "timezone", False) else moment.replace(tzinfo=None)


def prune_resources(engine: Engine, horizon: datetime, *, now: float | None = None) -> int:
    """Delete what the gateway remembers of provider objects past retention, with their records: batch jobs
    booked before `horizon`, batch files uploaded before it (but the input of a job still followed), owned
    resources (video jobs, context caches) made before it, and upload sessions that expired. Their owners get 404
    for them from then on, as for an object the provider deleted."""
    jobs = BatchJob.__table__  # type: ignore[attr-defined]
    files = BatchFile.__table__  # type: ignore[attr-defined]
    owned = OwnedResource.__table__  # type: ignore[attr-defined]
    uploads = UploadSession.__table__  # type: ignore[attr-defined]
    deleted = 0
    with engine.begin() as connection:
        deleted += connection.execute(delete(jobs).where(
            jobs.c.booked_at.is_not(None), jobs.c.booked_at < _bound(jobs.c.booked_at, horizon))).rowcount or 0
        still_read = select(jobs.c.input_file_id).where(jobs.c.booked_at.is_(None), jobs.c.input_file_id.is_not(None))
        deleted += connection.execute(delete(files).where(
            files.c.created_at < _bound(files.c.created_at, horizon), files.c.id.not_in(still_read))).rowcount or 0
        deleted += connection.execute(delete(owned).where(
            owned.c.created_at < _bound(owned.c.created_at, horizon))).rowcount or 0
        connection.execute(delete(uploads).where(uploads.c.expires_at < (time.time() if now is None else now)))
    return deleted


def _prune_minute_rows(engine: Engine, horizon: int, *, pause: float, stop: threading.Event | None) -> int:
    """Delete minute rollup rows before `horizon`, a day of buckets per transaction and cut."""
    rollup = UsageRollup.__table__  # type: ignore[attr-defined]
    deleted = 0
    for cut in MINUTE_CUTS:
        minute_rows = (rollup.c.cut == cut, rollup.c.grain == MINUTE)
        with engine.connect() as connection:
            oldest = connection.execute(select(func.min(rollup.c.bucket)).where(*minute_rows)).scalar()
        if oldest is None:
            continue
        day = 86_400
        for low in range(oldest - oldest % day, horizon, day):
            if stop is not None and stop.is_set():
                return deleted
            with engine.begin() as connection:
                deleted += connection.execute(delete(rollup).where(
                    *minute_rows, rollup.c.bucket >= low, rollup.c.bucket < min(low + day, horizon))).rowcount or 0
            if pause:
                time.sleep(pause)
    return deleted


class RetentionWorker:
    """A daemon thread that prunes records past `raw_days` every hour (the first run a minute after start)."""

    def __init__(self, engine: Engine, *, raw_days: float, first_after: float = 60.0,
                 every: float = PRUNE_EVERY_S) -> None:
        self.engine = engine
        self.older_than = timedelta(days=raw_days)
        self.first_after = first_after
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokensense-retention", daemon=True)

    def start(self) -> RetentionWorker:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        wait = self.first_after
        while not self._stop.wait(wait):
            try:
                prune_usage(self.engine, older_than=self.older_than, stop=self._stop)
            except Exception as e:  # the database may be out: the recorder spools; try again next time
                log.warning("retention: could not prune usage records: %s", str(e).splitlines()[0] if str(e) else e)
            wait = self.every

"""Batch jobs and files made through TokenSense: their owners, the jobs followed until booked, the follower's lease.

Repository functions take a session (keyword-only). Booking a job's lines is
`record_usages` (one record per line, its request id derived from the job and
the line: written twice, stored once) followed by `mark_booked`, so a restart,
a second instance or a second poll never counts a line twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from tokensense.storage.models import ApiKey, BatchFile, BatchJob, Lease, UploadSession

TERMINAL = "booked"


def _now() -> datetime:
    return datetime.now(UTC)


def remember_file(
    *, session: Session, file_id: str, provider: str, key_id: str | None, purpose: str | None, lines: dict | None
) -> None:
    """Record the owner of an uploaded file (the first owner keeps it)."""
    if session.get(BatchFile, file_id) is not None:
        return
    session.add(
        BatchFile(id=file_id, provider=provider, key_id=key_id, purpose=purpose, lines=lines, created_at=_now())
    )
    session.commit()


def owned_file(*, session: Session, file_id: str, key_id: str | None) -> BatchFile | BatchJob | None:
    """The file row when `key_id` uploaded it, or the job that wrote it when `key_id` made that job; else None."""
    row = session.get(BatchFile, file_id)
    if row is not None:
        return row if row.key_id == key_id else None
    for job in session.exec(
        select(BatchJob).where(col(BatchJob.key_id) == key_id).order_by(col(BatchJob.created_at).desc()).limit(1000)
    ):
        if file_id in (job.files or []):
            return job
    return None


def forget_file(*, session: Session, file_id: str) -> None:
    row = session.get(BatchFile, file_id)
    if row is not None:
        session.delete(row)
        session.commit()


def owned_ids(*, session: Session, key_id: str | None) -> set[str]:
    """Every file and job id the key owns (for filtering the provider's lists)."""
    ids = set(session.exec(select(BatchFile.id).where(col(BatchFile.key_id) == key_id)))
    for job_id, files in session.exec(select(BatchJob.id, BatchJob.files).where(col(BatchJob.key_id) == key_id)):
        ids.add(job_id)
        ids.update(files or [])
    return ids


def remember_job(*, session: Session, job: BatchJob) -> bool:
    """Start following a job; False if it is known already (its first owner keeps it)."""
    if session.get(BatchJob, job.id) is not None:
        return False
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    return True


def owned_job(*, session: Session, job_id: str, key_id: str | None) -> BatchJob | None:
    row = session.get(BatchJob, job_id)
    return row if row is not None and row.key_id == key_id else None


def note_job(
    *,
    session: Session,
    job_id: str,
    state: str | None = None,
    files: Iterable[str] = (),
    error: str | None = None,
    polled: bool = False,
) -> None:
    """Update what the provider last said of a job (its state, the files it wrote), or why booking failed."""
    row = session.get(BatchJob, job_id)
    if row is None:
        return
    if state is not None:
        row.state = state
    new = [f for f in files if f not in (row.files or [])]
    if new:
        row.files = [*(row.files or []), *new]
    row.error = error
    if polled:
        row.polled_at = _now()
    session.add(row)
    session.commit()


def open_jobs(*, session: Session, limit: int = 100) -> list[BatchJob]:
    """Jobs not booked yet, least recently polled first."""
    statement = select(BatchJob).where(col(BatchJob.booked_at).is_(None))
    statement = statement.order_by(col(BatchJob.polled_at).is_not(None), col(BatchJob.polled_at)).limit(limit)
    return list(session.exec(statement))


def mark_booked(*, session: Session, job_id: str, state: str, lines: int, cost: float) -> bool:
    """The job's lines are all recorded: it stops holding its reservation. False if it was booked already."""
    result = session.exec(
        update(BatchJob)
        .where(col(BatchJob.id) == job_id, col(BatchJob.booked_at).is_(None))  # type: ignore[call-overload]
        .values(state=state, lines_booked=lines, booked_usd=round(cost, 10), booked_at=_now(), error=None)
    )
    session.commit()
    return bool(result.rowcount)


def list_jobs(*, session: Session, limit: int = 100) -> list[BatchJob]:
    return list(session.exec(select(BatchJob).order_by(col(BatchJob.created_at).desc()).limit(limit)))


def held_by_jobs(*, session: Session, key_id: str | None = None, since: datetime | None,
                 filters: Mapping[str, str] | None = None) -> float:
    """What the jobs not booked yet hold (their reservations), made since `since`: a key's (`key_id`), or those
    whose create matched `filters` (a budget subject's: key_id, project, workflow, source, execution_id)."""
    matching = dict(filters or {})
    if key_id is not None:
        matching["key_id"] = key_id
    statement = select(func.coalesce(func.sum(BatchJob.reserved_usd), 0.0)).where(col(BatchJob.booked_at).is_(None))
    for name, value in matching.items():
        if name not in BatchJob.model_fields:  # a field jobs do not keep: no job matches it
            return 0.0
        statement = statement.where(col(getattr(BatchJob, name)) == value)
    if since is not None:
        created = BatchJob.__table__.c.created_at  # type: ignore[attr-defined]
        moment = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
        statement = statement.where(
            col(BatchJob.created_at)
            >= (moment if getattr(created.type, "timezone", False) else moment.replace(tzinfo=None))
        )
    return float(session.exec(statement).one() or 0.0)


# --- resumable upload sessions ------------------------------------------------------------------


def start_upload(*, session: Session, row: UploadSession, now: float) -> None:
    """Remember an upload session (and forget the expired ones)."""
    session.exec(delete(UploadSession).where(col(UploadSession.expires_at) < now))  # type: ignore[call-overload]
    session.add(row)
    session.commit()


def upload_session(*, session: Session, token: str, now: float) -> tuple[UploadSession, ApiKey] | None:
    """The upload session of `token` and the key that started it; None if unknown, expired or the key is gone."""
    row = session.get(UploadSession, token)
    if row is None or row.expires_at < now:
        return None
    key = session.get(ApiKey, row.key_id)
    if key is None:
        return None
    session.expunge(row)
    session.expunge(key)
    return row, key


def save_upload(*, session: Session, token: str, scanner: dict[str, Any], partial: bytes) -> None:
    """The scanner's state after one of the upload's requests: the next may be taken by another process."""
    session.exec(
        update(UploadSession)
        .where(col(UploadSession.token) == token)  # type: ignore[call-overload]
        .values(scanner=scanner, partial=partial or None)
    )
    session.commit()


def end_upload(*, session: Session, token: str) -> None:
    session.exec(delete(UploadSession).where(col(UploadSession.token) == token))  # type: ignore[call-overload]
    session.commit()


# --- the follower's lease ------------------------------------------------------------------------


def take_lease(*, session: Session, name: str, holder: str, seconds: float, now: float) -> bool:
    """Hold the lease `name` for `seconds` if it is free, expired or ours already; True when we hold it."""
    result = session.exec(
        update(Lease)
        .where(  # type: ignore[call-overload]
            col(Lease.name) == name, (col(Lease.holder) == holder) | (col(Lease.expires_at) < now)
        )
        .values(holder=holder, expires_at=now + seconds)
    )
    session.commit()
    if result.rowcount:
        return True
    if session.get(Lease, name) is not None:
        return False
    try:
        session.exec(insert(Lease).values(name=name, holder=holder, expires_at=now + seconds))  # type: ignore[call-overload]
        session.commit()
    except IntegrityError:  # another process inserted it first
        session.rollback()
        return False
    return True


def release_lease(*, session: Session, name: str, holder: str) -> None:
    session.exec(
        update(Lease)
        .where(col(Lease.name) == name, col(Lease.holder) == holder)  # type: ignore[call-overload]
        .values(expires_at=0.0)
    )
    session.commit()


def job_rows(rows: Sequence[BatchJob]) -> list[dict[str, Any]]:
    """Jobs as plain dicts (`tokensense batches --json`)."""
    out = []
    for row in rows:
        data = row.model_dump()
        for name in ("created_at", "polled_at", "booked_at"):
            value = data.get(name)
            if isinstance(value, datetime):
                data[name] = (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        out.append(data)
    return out

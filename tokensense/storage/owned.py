"""Who owns each video job and context cache made through TokenSense, and the one-time booking of a job.

Repository functions take a session; `OwnedStore` is what the gateway uses from mitmproxy's event loop: every
database call runs in a worker thread (`asyncio.to_thread`), nothing blocks the loop.

`claim_booking` is the exactly-once gate of a job's booked record: one UPDATE that sets `booked_at` only where
it is still NULL. Of several retrieves that see a job completed (the same instance, another one, after a
restart), exactly one finds the row unbooked and books it; the record it writes has the job's id as its request
id, so even a record written twice (a spool replayed) is stored once (unique request id and attempt).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from tokensense.storage.models import OwnedResource


class Owned(NamedTuple):
    """An owned resource as the gateway needs it."""

    id: str
    kind: str
    key_id: str | None
    provider: str
    model: str | None
    attribution: dict[str, Any]
    state: dict[str, Any]
    booked: bool


def _owned(row: OwnedResource) -> Owned:
    return Owned(row.id, row.kind, row.key_id, row.provider, row.model, dict(row.attribution or {}),
                 dict(row.state or {}), row.booked_at is not None)


# --- repository ------------------------------------------------------------------------------------


def remember_owned(*, session: Session, resource_id: str, kind: str, key_id: str | None, provider: str,
                   model: str | None, attribution: dict[str, Any] | None, state: dict[str, Any] | None) -> Owned:
    """Record who made `resource_id` (the first owner keeps it: ids are the provider's, unique)."""
    row = session.get(OwnedResource, resource_id)
    if row is None:
        row = OwnedResource(id=resource_id, kind=kind, key_id=key_id, provider=provider, model=model,
                            attribution=attribution, state=state)
        session.add(row)
        session.commit()
        session.refresh(row)
    return _owned(row)


def owned(*, session: Session, resource_id: str) -> Owned | None:
    row = session.get(OwnedResource, resource_id)
    return None if row is None else _owned(row)


def owned_ids(*, session: Session, key_id: str | None, ids: list[str]) -> set[str]:
    """Which of `ids` the key owns."""
    if not ids:
        return set()
    rows = session.exec(select(OwnedResource.id).where(col(OwnedResource.id).in_(ids),
                                                       OwnedResource.key_id == key_id))
    return set(rows.all())


def update_state(*, session: Session, resource_id: str, state: dict[str, Any]) -> None:
    row = session.get(OwnedResource, resource_id)
    if row is not None:
        row.state = {**(row.state or {}), **state}
        session.add(row)
        session.commit()


def claim_booking(*, session: Session, resource_id: str) -> bool:
    """Mark the resource booked; True only for the one caller that found it unbooked."""
    result = session.exec(update(OwnedResource)  # type: ignore[call-overload]
                          .where(col(OwnedResource.id) == resource_id, col(OwnedResource.booked_at).is_(None))
                          .values(booked_at=datetime.now(UTC)))
    session.commit()
    return int(result.rowcount or 0) == 1


def open_jobs(*, session: Session, kinds: list[str], limit: int = 500) -> list[Owned]:
    """Jobs of `kinds` not booked yet (oldest first): what the batch follower polls."""
    if not kinds:
        return []
    rows = session.exec(select(OwnedResource).where(col(OwnedResource.kind).in_(kinds),
                                                    col(OwnedResource.booked_at).is_(None))
                        .order_by(col(OwnedResource.created_at)).limit(limit))
    return [_owned(row) for row in rows.all()]


def forget_owned(*, session: Session, resource_id: str) -> bool:
    row = session.get(OwnedResource, resource_id)
    if row is None:
        return False
    session.delete(row)
    session.commit()
    return True


# --- the gateway's store ---------------------------------------------------------------------------


class OwnedStore:
    """Owned resources for the gateway: every database call in a thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _run(self, function: Any, **kwargs: Any) -> Any:
        with Session(self.engine) as session:
            return function(session=session, **kwargs)

    async def remember(self, resource_id: str, **kwargs: Any) -> Owned:
        return await asyncio.to_thread(self._run, remember_owned, resource_id=resource_id, **kwargs)

    async def owned_by(self, resource_id: str, key_id: str | None) -> Owned | None:
        """The resource when `key_id` made it; None for another key's or an unknown one (→ 404)."""
        found = await asyncio.to_thread(self._run, owned, resource_id=resource_id)
        return found if found is not None and found.key_id == key_id else None

    async def owned_ids(self, key_id: str | None, ids: list[str]) -> set[str]:
        return await asyncio.to_thread(self._run, owned_ids, key_id=key_id, ids=ids)

    async def update_state(self, resource_id: str, state: dict[str, Any]) -> None:
        await asyncio.to_thread(self._run, update_state, resource_id=resource_id, state=state)

    async def claim_booking(self, resource_id: str) -> bool:
        return await asyncio.to_thread(self._run, claim_booking, resource_id=resource_id)

    async def forget(self, resource_id: str) -> bool:
        return await asyncio.to_thread(self._run, forget_owned, resource_id=resource_id)

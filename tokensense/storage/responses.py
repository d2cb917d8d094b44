"""Who owns each Responses API response id, and the conversations of translated responses.

Repository functions (`remember_response`, `response_owner`, `response_conversation`, `forget_response`,
`purge_responses`) take a session; `ResponseStore` is what the gateway uses from mitmproxy's event loop:
`remember` records the owner in memory at once (a GET right after the answer sees it) and writes the row in
a worker thread; lookups run in a thread too. Nothing here blocks the event loop.

Rows expire like OpenAI's stored responses (30 days by default, `TOKENSENSE_RESPONSES_TTL_DAYS`): an
expired id reads as unknown at once (404 to every key), and the store deletes expired rows in a worker
thread, at most once per `PURGE_INTERVAL` seconds, when it next writes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Engine
from sqlmodel import Session, col, delete

from tokensense.storage.models import StoredResponse

log = logging.getLogger(__name__)

MAX_CHAIN = 1000
"""The longest `previous_response_id` chain rebuilt into one conversation."""

RECENT_OWNERS = 10_000
"""Owners kept in memory, newest first out last: the ones just made are read soonest."""

DEFAULT_TTL_DAYS = 30.0
"""How long a response id stays known (OpenAI keeps stored responses 30 days)."""

PURGE_INTERVAL = 3600.0
"""Seconds between two deletions of expired rows by one store."""


def _aware(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands back naive ones)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _live(row: StoredResponse | None, since: datetime | None) -> StoredResponse | None:
    """The row, unless it was made before `since` (expired: as if unknown)."""
    if row is None or since is None or row.created_at is None:
        return row
    return row if _aware(row.created_at) >= since else None


class ResponseOwner(NamedTuple):
    key_id: str | None
    provider: str
    model: str | None
    translated: bool
    """Whether TokenSense translated the response (its conversation is stored here, not at the provider)."""


# --- repository ------------------------------------------------------------------------------------


def remember_response(*, session: Session, response_id: str, key_id: str | None, provider: str,
                      model: str | None = None, previous_response_id: str | None = None,
                      items: list[dict] | None = None, response: dict | None = None) -> StoredResponse:
    """Record (or update) who made `response_id`; `items` is a translated turn's input then output items."""
    row = session.get(StoredResponse, response_id)
    if row is None:
        row = StoredResponse(id=response_id, key_id=key_id, provider=provider)
    elif row.key_id != key_id:
        # Response ids are unique per provider; the first owner keeps it.
        log.warning("response id %s is already owned by another key; keeping the first owner", response_id)
        return row
    row.model = model
    row.previous_response_id = previous_response_id
    row.items = items
    row.response = response
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def response_owner(*, session: Session, response_id: str, since: datetime | None = None) -> ResponseOwner | None:
    """Who made `response_id` (None if unknown, or made before `since`: expired)."""
    row = _live(session.get(StoredResponse, response_id), since)
    if row is None:
        return None
    return ResponseOwner(row.key_id, row.provider, row.model, row.items is not None)


def response_conversation(*, session: Session, response_id: str, since: datetime | None = None) -> list[dict] | None:
    """Every item of the chain ending at `response_id`, oldest first; None if a link is missing (or expired)
    or not translated."""
    chain: list[list[dict]] = []
    current: str | None = response_id
    seen: set[str] = set()
    while current is not None:
        if current in seen or len(chain) >= MAX_CHAIN:
            return None
        seen.add(current)
        row = _live(session.get(StoredResponse, current), since)
        if row is None or row.items is None:
            return None
        chain.append(list(row.items))
        current = row.previous_response_id
    return [item for turn in reversed(chain) for item in turn]


def stored_answer(*, session: Session, response_id: str,
                  since: datetime | None = None) -> tuple[dict | None, list[dict]]:
    """A translated response as it was answered, and the input items of its turn ((None, []) when unknown)."""
    row = _live(session.get(StoredResponse, response_id), since)
    if row is None or row.response is None:
        return None, []
    outputs = len(row.response.get("output") or [])
    items = list(row.items or [])
    return row.response, items[: len(items) - outputs] if outputs else items


def forget_response(*, session: Session, response_id: str) -> bool:
    row = session.get(StoredResponse, response_id)
    if row is None:
        return False
    session.delete(row)
    session.commit()
    return True


def purge_responses(*, session: Session, before: datetime) -> int:
    """Delete every response row made before `before`; how many went."""
    result = session.exec(delete(StoredResponse).where(col(StoredResponse.created_at) < before))  # type: ignore[call-overload]
    session.commit()
    return int(result.rowcount or 0)


# --- the gateway's store ---------------------------------------------------------------------------


class ResponseStore:
    """Response ownership for the gateway: async lookups, writes in threads, the newest owners in memory."""

    def __init__(self, engine: Engine, *, ttl_days: float = DEFAULT_TTL_DAYS) -> None:
        self.engine = engine
        self.ttl = timedelta(days=ttl_days)
        self._recent: OrderedDict[str, tuple[ResponseOwner, float]] = OrderedDict()  # owner, time.time() known
        self._lock = threading.Lock()
        self._pending: set[asyncio.Task] = set()
        self._last_purge: float | None = None  # time.monotonic() of the last deletion of expired rows

    def since(self) -> datetime:
        """Rows made before this are expired."""
        return datetime.now(UTC) - self.ttl

    def _keep(self, response_id: str, owner: ResponseOwner, made: float | None = None) -> None:
        with self._lock:
            self._recent[response_id] = (owner, time.time() if made is None else made)
            self._recent.move_to_end(response_id)
            while len(self._recent) > RECENT_OWNERS:
                self._recent.popitem(last=False)

    def remember(self, response_id: str, *, key_id: str | None, provider: str, model: str | None = None,
                 previous_response_id: str | None = None, items: list[dict] | None = None,
                 response: dict | None = None) -> asyncio.Task | None:
        """Record the owner now (in memory) and in the database soon (a thread); call from the event loop.

        Returns the write's task (awaited by `drain` at shutdown), or None outside an event loop, where
        the row is written before returning.
        """
        self._keep(response_id, ResponseOwner(key_id, provider, model, items is not None))
        kwargs: dict[str, Any] = {"response_id": response_id, "key_id": key_id, "provider": provider,
                                  "model": model, "previous_response_id": previous_response_id, "items": items,
                                  "response": response}
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(kwargs)
            return None
        task = loop.create_task(asyncio.to_thread(self._write, kwargs))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        self._purge_if_due(loop)
        return task

    def _purge_if_due(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        if self._last_purge is not None and now - self._last_purge < PURGE_INTERVAL:
            return
        self._last_purge = now
        task = loop.create_task(self._purge_after(list(self._pending)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _purge_after(self, writes: list[asyncio.Task]) -> None:
        """Delete the expired rows once the writes in flight are done: one writer at a time (a SQLite delete racing
        an insert of the same process can fail at once, busy timeout or not, and would wait for the next interval)."""
        await asyncio.gather(*writes, return_exceptions=True)
        await asyncio.to_thread(self.purge_expired)

    def purge_expired(self) -> int:
        """Delete the expired rows (blocking: run it in a thread). How many went; 0 if the database failed."""
        try:
            with Session(self.engine) as session:
                deleted = purge_responses(session=session, before=self.since())
        except Exception as e:
            log.warning("could not delete expired response rows: %s", type(e).__name__)
            return 0
        if deleted:
            log.info("deleted %d response rows older than %g days", deleted, self.ttl.total_seconds() / 86400)
        return deleted

    def _write(self, kwargs: dict[str, Any]) -> None:
        try:
            with Session(self.engine) as session:
                remember_response(session=session, **kwargs)
        except Exception:  # the owner stays known in memory; the write is retried by nobody, so say so
            log.exception("could not store the owner of response %s", kwargs["response_id"])

    async def owner_of(self, response_id: str) -> ResponseOwner | None:
        with self._lock:
            kept = self._recent.get(response_id)
        if kept is not None:
            owner, made = kept
            if made >= time.time() - self.ttl.total_seconds():
                return owner
            with self._lock:
                self._recent.pop(response_id, None)
            return None
        found = await asyncio.to_thread(self._read_owner, response_id)
        if found is None:
            return None
        owner, created = found
        self._keep(response_id, owner, created)
        return owner

    def _read_owner(self, response_id: str) -> tuple[ResponseOwner, float] | None:
        with Session(self.engine) as session:
            owner = response_owner(session=session, response_id=response_id, since=self.since())
            if owner is None:
                return None
            row = session.get(StoredResponse, response_id)
            made = _aware(row.created_at).timestamp() if row is not None and row.created_at else time.time()
            return owner, made

    async def owned_by(self, response_id: str, key_id: str | None) -> ResponseOwner | None:
        """The owner when `key_id` made `response_id`; None for another key's id or an unknown one (→ 404)."""
        owner = await self.owner_of(response_id)
        return owner if owner is not None and owner.key_id == key_id else None

    async def conversation(self, response_id: str) -> list[dict] | None:
        await self._settle()
        return await asyncio.to_thread(self._read_conversation, response_id)

    def _read_conversation(self, response_id: str) -> list[dict] | None:
        with Session(self.engine) as session:
            return response_conversation(session=session, response_id=response_id, since=self.since())

    async def answer(self, response_id: str) -> tuple[dict | None, list[dict]]:
        """A translated response and its turn's input items, for GET and input_items."""
        await self._settle()
        return await asyncio.to_thread(self._read_answer, response_id)

    def _read_answer(self, response_id: str) -> tuple[dict | None, list[dict]]:
        with Session(self.engine) as session:
            return stored_answer(session=session, response_id=response_id, since=self.since())

    async def forget(self, response_id: str) -> bool:
        await self._settle()
        with self._lock:
            self._recent.pop(response_id, None)
        return await asyncio.to_thread(self._delete, response_id)

    def _delete(self, response_id: str) -> bool:
        with Session(self.engine) as session:
            return forget_response(session=session, response_id=response_id)

    async def _settle(self) -> None:
        """Waits for writes in flight, so a conversation read or a delete sees the rows just remembered."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def drain(self) -> None:
        """At shutdown: every write in flight is finished."""
        await self._settle()

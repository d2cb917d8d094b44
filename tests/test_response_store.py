"""Response ownership: who made each response id, translated conversations, writes off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from tokensense.storage.models import StoredResponse
from tokensense.storage.responses import (
    ResponseOwner,
    ResponseStore,
    forget_response,
    remember_response,
    response_conversation,
    response_owner,
)


@pytest.fixture
def engine():
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(engine)
    return engine


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def answer(text: str) -> dict:
    return {"id": f"msg_{text}", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def test_owner_and_conversation_chain(engine) -> None:
    with Session(engine) as session:
        remember_response(session=session, response_id="resp_1", key_id="k1", provider="anthropic",
                          model="claude-sonnet-4-6", items=[user("a"), answer("b")])
        remember_response(session=session, response_id="resp_2", key_id="k1", provider="anthropic",
                          previous_response_id="resp_1", items=[user("c"), answer("d")])
        remember_response(session=session, response_id="resp_o", key_id="k1", provider="openai")
        assert response_owner(session=session, response_id="resp_1").key_id == "k1"
        assert response_owner(session=session, response_id="resp_1").translated is True
        assert response_owner(session=session, response_id="resp_o").translated is False
        assert response_owner(session=session, response_id="resp_x") is None
        texts = [item["content"][0]["text"] for item in response_conversation(session=session, response_id="resp_2")]
        assert texts == ["a", "b", "c", "d"]
        assert response_conversation(session=session, response_id="resp_o") is None  # the provider stores those
        assert forget_response(session=session, response_id="resp_1") is True
        assert response_conversation(session=session, response_id="resp_2") is None  # a link is gone


def test_a_second_key_cannot_take_over_an_id(engine) -> None:
    with Session(engine) as session:
        remember_response(session=session, response_id="resp_1", key_id="k1", provider="openai")
        remember_response(session=session, response_id="resp_1", key_id="k2", provider="openai")
        assert response_owner(session=session, response_id="resp_1").key_id == "k1"


def test_store_remembers_at_once_and_writes_in_a_thread(engine) -> None:
    writers: list[str] = []

    class Recording(ResponseStore):
        def _write(self, kwargs):
            writers.append(threading.current_thread().name)
            super()._write(kwargs)

    async def scenario() -> None:
        store = Recording(engine)
        store.remember("resp_1", key_id="k1", provider="gemini", items=[user("a"), answer("b")])
        assert (await store.owned_by("resp_1", "k1")).provider == "gemini"  # before the write finished
        assert await store.owned_by("resp_1", "k2") is None
        assert await store.owned_by("resp_unknown", "k1") is None
        assert len(await store.conversation("resp_1")) == 2
        await store.drain()
        fresh = ResponseStore(engine)  # another instance reads the row from the database
        assert (await fresh.owner_of("resp_1")).key_id == "k1"
        assert await fresh.forget("resp_1") is True
        assert await fresh.owner_of("resp_1") is None

    asyncio.run(scenario())
    assert writers and writers[0] != threading.main_thread().name


def _age(engine, response_id: str, days: float) -> None:
    with Session(engine) as session:
        row = session.get(StoredResponse, response_id)
        row.created_at = datetime.now(UTC) - timedelta(days=days)
        session.add(row)
        session.commit()


def test_rows_expire_after_the_ttl_and_are_purged_off_the_loop(engine) -> None:
    """Owner rows were kept forever (issue 14): an id older than the TTL is unknown to every key, its
    conversation can no longer be continued, and the purge (run in a worker thread) deletes the row."""
    purgers: list[str] = []

    class Recording(ResponseStore):
        def purge_expired(self) -> int:
            purgers.append(threading.current_thread().name)
            return super().purge_expired()

    with Session(engine) as session:
        remember_response(session=session, response_id="resp_old", key_id="k1", provider="anthropic",
                          items=[user("a"), answer("b")], response={"id": "resp_old", "output": []})
        remember_response(session=session, response_id="resp_new", key_id="k1", provider="anthropic",
                          previous_response_id="resp_old", items=[user("c"), answer("d")])
    _age(engine, "resp_old", 31)
    since = datetime.now(UTC) - timedelta(days=30)
    with Session(engine) as session:
        assert response_owner(session=session, response_id="resp_old", since=since) is None
        assert response_owner(session=session, response_id="resp_new", since=since).key_id == "k1"
        assert response_conversation(session=session, response_id="resp_new", since=since) is None  # a link expired

    async def scenario() -> None:
        store = Recording(engine, ttl_days=30)
        assert await store.owned_by("resp_old", "k1") is None
        assert (await store.owned_by("resp_new", "k1")) is not None
        assert (await store.answer("resp_old"))[0] is None
        store.remember("resp_3", key_id="k1", provider="openai")  # a write starts the (due) purge
        await store.drain()

    asyncio.run(scenario())
    assert purgers and purgers[0] != threading.main_thread().name
    with Session(engine) as session:
        assert session.get(StoredResponse, "resp_old") is None
        assert session.get(StoredResponse, "resp_new") is not None and session.get(StoredResponse, "resp_3")


def test_a_remembered_owner_in_memory_expires_too(engine) -> None:
    async def scenario() -> None:
        store = ResponseStore(engine, ttl_days=30)
        store._keep("resp_mem", ResponseOwner("k1", "openai", None, False), made=time.time() - 31 * 86400)
        assert await store.owned_by("resp_mem", "k1") is None

    asyncio.run(scenario())


def test_the_ttl_is_a_setting(monkeypatch) -> None:
    from tokensense.settings import Settings

    monkeypatch.setenv("TOKENSENSE_RESPONSES_TTL_DAYS", "7")
    assert Settings().responses_ttl_days == 7
    monkeypatch.delenv("TOKENSENSE_RESPONSES_TTL_DAYS")
    assert Settings().responses_ttl_days == 30

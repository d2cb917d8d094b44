"""Batch jobs as functions: an upload's lines summed as it streams past, the job's reservation at the batch price,
the follower's lease, each line's record and request id."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from tests.conftest import service_missing
from tokensense.core.usage import TokenUsage
from tokensense.gateway.batches import InputScanner, job_reservation, line_record, line_request_id, summary_of
from tokensense.metering.batch_prices import HALF_PRICE, batch_cost
from tokensense.metering.pricing import PriceBook
from tokensense.providers import Provider, get_provider
from tokensense.providers.batch_api import BatchApi, LineRequest, ResultLine
from tokensense.storage import batches as store
from tokensense.storage.models import BatchJob

_OPENAI = get_provider("openai")
assert _OPENAI is not None and _OPENAI.batch_api is not None
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
OPENAI: Provider = _OPENAI
API: BatchApi = _OPENAI.batch_api
LINES = [
    {
        "custom_id": f"line-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 300}], "max_tokens": 100},
    }
    for i in range(20)
]


def _multipart(lines: list[dict]) -> bytes:
    boundary = b"----tokensense-test"
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    return (
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--'
        + boundary
        + b'\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + body + b"\r\n--" + boundary + b"--\r\n"
    )


def test_an_upload_is_summed_line_by_line_whatever_the_chunks() -> None:
    """Lines split across chunks (of every size) sum the same, and every byte passes on untouched."""
    body = _multipart(LINES)
    expected = summary_of(r for line in LINES if (r := API.input_line(line)) is not None)
    for size in (1, 7, 64, 1000, len(body)):
        scanner = InputScanner(API)
        passed = b"".join(scanner(body[i : i + size]) for i in range(0, len(body), size)) + scanner(b"")
        assert passed == body
        result = scanner.result()
        assert result["models"] == expected["models"] and result["lines"] == 20 and not result["unreadable"]
    assert expected["models"]["gpt-4o-mini"]["output_tokens"] == 20 * 100


def test_an_upload_over_its_limit_stops_there() -> None:
    scanner = InputScanner(API, limit=100)
    assert scanner(b"x" * 80) == b"x" * 80
    assert scanner(b"y" * 80) == b"" and scanner.too_large
    assert scanner(b"z") == b""


def test_a_jobs_reservation_is_every_line_at_the_batch_price() -> None:
    prices = PriceBook()
    summary = summary_of(
        [LineRequest("gpt-4o-mini", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000})] * 3
    )
    entry = summary["models"]["gpt-4o-mini"]
    usage = TokenUsage(input_tokens=entry["input_tokens"], output_tokens=entry["output_tokens"])
    assert entry["output_tokens"] == 3000
    assert job_reservation(prices, OPENAI, summary) == round(prices.cost("openai", "gpt-4o-mini", usage) * 0.5, 10)  # type: ignore[operator]


def test_a_model_without_a_catalog_batch_rate_costs_half_its_standard_price() -> None:
    from tokensense.core.model_price import ModelPrice

    prices = PriceBook({"house-model": ModelPrice(provider="openai", input_per_mtok=2.0, output_per_mtok=10.0)})
    priced = batch_cost(prices, "openai", "house-model", TokenUsage(input_tokens=1_000_000, output_tokens=100_000))
    assert priced == (1.5, HALF_PRICE)  # (2.0 + 1.0) / 2


def _engine():  # type: ignore[no-untyped-def]
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(engine)
    return engine


def test_one_follower_holds_the_lease_until_it_lets_go_or_it_expires() -> None:
    with Session(_engine()) as session:
        assert store.take_lease(session=session, name="f", holder="a", seconds=30, now=1000.0)
        assert not store.take_lease(session=session, name="f", holder="b", seconds=30, now=1010.0)
        assert store.take_lease(session=session, name="f", holder="a", seconds=30, now=1020.0)  # renewed
        assert store.take_lease(session=session, name="f", holder="b", seconds=30, now=1051.0)  # expired
        store.release_lease(session=session, name="f", holder="b")
        assert store.take_lease(session=session, name="f", holder="a", seconds=30, now=1052.0)


def test_a_lines_record_has_the_same_request_id_whoever_books_it_and_the_create_calls_attribution() -> None:
    job = BatchJob(
        id="batch_1",
        provider="openai",
        key_id="k1",
        key_name="team",
        models=["gpt-4o-mini"],
        workflow="wf",
        step="s",
        execution_id="e",
        source="cron",
        project="p",
    )
    line = ResultLine("first", "gpt-4o-mini", 200, TokenUsage(input_tokens=100, output_tokens=20))
    record = line_record(PriceBook(), OPENAI, job, line, datetime.now(UTC))  # type: ignore[arg-type]
    assert record.request_id == line_request_id("batch_1", "first") != line_request_id("batch_1", "second")
    assert (record.endpoint, record.workflow, record.project, record.key_name) == ("batch", "wf", "p", "team")
    assert record.details is not None and record.details["custom_id"] == "first"
    failed = line_record(PriceBook(), OPENAI, job, ResultLine("x", None, 400, None, "bad"), datetime.now(UTC))  # type: ignore[arg-type]
    assert (failed.cost_usd, failed.status, failed.error) == (0.0, 400, "bad")


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database upgraded by the migrations (0010 included): SQLite, and PostgreSQL when it is reachable."""
    from tokensense.storage import db

    if request.param == "sqlite":
        engine = db.make_engine(f"sqlite:///{tmp_path / 'tokensense.db'}")
        db.init_db(engine)
        yield engine
        engine.dispose()
        return
    import psycopg

    schema = f"ts_batches_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except Exception as e:
        service_missing(f"PostgreSQL at {PG_URL} is not reachable ({type(e).__name__}: {e})")
    engine = db.make_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
    try:
        db.init_db(engine)
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_a_jobs_hold_counts_in_its_keys_spend_until_booked_and_each_line_is_stored_once(migrated: Engine) -> None:
    from tokensense.storage.repo import record_usages, spent_since

    now = datetime.now(UTC)
    job = BatchJob(
        id="batch_pg",
        provider="openai",
        key_id="k1",
        key_name="team",
        models=["gpt-4o-mini"],
        reserved_usd=0.5,
        budget_window="total",
        created_at=now,
    )
    with Session(migrated) as session:
        assert store.remember_job(session=session, job=job)
        assert not store.remember_job(session=session, job=BatchJob(id="batch_pg", provider="openai", key_id="k2"))
        assert store.owned_job(session=session, job_id="batch_pg", key_id="k2") is None
        assert spent_since(session=session, key_id="k1", since=None) == pytest.approx(0.5)
        assert spent_since(session=session, key_id="k1", since=now - timedelta(hours=1)) == pytest.approx(0.5)
        assert spent_since(session=session, key_id="k1", since=now + timedelta(hours=1)) == 0
        line = ResultLine("first", "gpt-4o-mini", 200, TokenUsage(input_tokens=1000, output_tokens=100))
        record = line_record(PriceBook(), OPENAI, job, line, datetime.now(UTC))
        record_usages(session=session, usages=[record])
        record_usages(session=session, usages=[record])  # booked again (a restart, another instance): stored once
        assert store.mark_booked(
            session=session, job_id="batch_pg", state="completed", lines=1, cost=record.cost_usd or 0
        )
        assert not store.mark_booked(session=session, job_id="batch_pg", state="completed", lines=1, cost=0)
        assert spent_since(session=session, key_id="k1", since=None) == pytest.approx(record.cost_usd)
        assert store.take_lease(session=session, name="batch_follower", holder="a", seconds=30, now=1.0)
        assert not store.take_lease(session=session, name="batch_follower", holder="b", seconds=30, now=2.0)

"""`tokensense usage --by` through the driver alone (storage/lite.py): which databases it opens itself, and the
command printing exactly what the full path prints. The numbers themselves are compared with the full path
and a Python oracle on random records in tests/test_rollups.py (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from tests.conftest import service_missing
from tokensense.cli import commands as cli
from tokensense.storage import lite, repo
from tokensense.storage.db import init_db, make_engine
from tokensense.storage.models import UsageCreate

PG_URL = os.environ.get("TOKENSENSE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///{tmp}/t.db?mode=ro",
        "sqlite:///{tmp}/missing.db",
        "sqlite:///file:x?mode=memory&uri=true",
        "mysql://root@127.0.0.1/x",
        "postgresql+asyncpg://postgres@127.0.0.1/test",
    ],
)
def test_what_it_does_not_open_goes_to_the_full_path(tmp_path: Path, url: str) -> None:
    (tmp_path / "t.db").touch()
    with pytest.raises(lite.Unsupported):
        lite.connect(url.format(tmp=tmp_path))


@pytest.mark.postgres
def test_postgres_connection_compiles_no_jit() -> None:
    try:
        connection, dialect = lite.connect(PG_URL)
    except lite.Unsupported as e:
        service_missing(f"PostgreSQL at {PG_URL} is not reachable ({e})")
    try:
        assert dialect == "postgresql"
        assert connection.execute("SHOW jit").fetchone()[0] == "off"
    finally:
        connection.close()


def test_the_command_prints_what_the_full_path_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    engine = make_engine(url)
    init_db(engine)
    base = datetime.now(UTC) - timedelta(days=3)
    usages = [
        UsageCreate(
            request_id=f"r{n}",
            created_at=base + timedelta(minutes=41 * n),
            model=f"m{n % 3}",
            project=[None, "web", ""][n % 3],
            workflow=["a", None][n % 2],
            status=[200, 429][n % 4 == 0],
            input_tokens=n,
            output_tokens=2 * n,
            cost_usd=None if n % 5 == 0 else n / 7,
        )
        for n in range(100)
    ]
    with Session(engine) as session:
        repo.record_usages(session=session, usages=usages)
    since = base + timedelta(hours=25, minutes=3, seconds=1.5)
    for by in (["model", "project"], ["workflow"], ["status"]):
        with Session(engine) as session:
            expected = repo.query_usage(session=session, since=since, by=by, limit=None)
        connection, dialect = lite.connect(url)
        try:
            assert lite.schema_is_current(connection)
            assert lite.grouped_report(connection, dialect, fields=by, since=since) == (expected, None)
        finally:
            connection.close()
        assert (
            cli.main(["usage", "--by", ",".join(by), "--since", since.isoformat(), "--json", "--database-url", url])
            == 0
        )
        assert json.loads(capsys.readouterr().out) == expected
    engine.dispose()


# --- record listings and `tokensense report` through the driver alone ---------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database at the newest revision: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lite.db'}"
        return
    import psycopg

    schema = f"test_lite_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
    except Exception as e:
        service_missing(f"PostgreSQL at {PG_URL} is not reachable ({type(e).__name__})")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


def _fill(url: str, base: datetime) -> None:
    engine = make_engine(url)
    init_db(engine)
    rng = random.Random(27)
    usages = [
        UsageCreate(
            request_id=f"r{n // 2}",
            attempt=1 + n % 2,
            created_at=base + timedelta(seconds=rng.randrange(3 * 86_400)),
            key_id=rng.choice([None, "k1"]),
            key_name=rng.choice([None, "ci", "prod"]),
            provider=rng.choice([None, "openai", "anthropic"]),
            model=rng.choice([None, "m1", "m2"]),
            endpoint=rng.choice(["", "/v1/chat/completions"]),
            status=rng.choice([200, 200, 402, 500]),
            error=rng.choice([None, "boom"]),
            stream=rng.random() < 0.5,
            input_tokens=rng.randrange(10**5),
            output_tokens=rng.randrange(10**4),
            cached_input_tokens=rng.randrange(9),
            images=rng.randrange(3),
            characters=rng.randrange(50),
            seconds=rng.choice([0.0, rng.random() * 9]),
            cost_usd=rng.choice([None, 0.0, rng.random() / 7, 1 / 3]),
            latency_ms=rng.choice([None, rng.random() * 900]),
            ttft_ms=rng.choice([None, 12.5]),
            workflow=rng.choice([None, "", "triage", "answer"]),
            step=rng.choice([None, "a", "b"]),
            execution_id=rng.choice([None, "e1", "e2"]),
            source=rng.choice([None, "api", "cron"]),
            project=rng.choice([None, "web", ""]),
            details=rng.choice([None, {"input_tokens": 3, "cache": {"hits": 1}}]),
        )
        for n in range(300)
    ]
    with Session(engine) as session:
        repo.record_usages(session=session, usages=usages)
    engine.dispose()


def test_lite_knows_the_record_fields_and_the_report_fields() -> None:
    from tokensense.storage import analytics, cuts

    assert (*lite.USAGE_COLUMNS, "unpriced") == repo.USAGE_RECORD_FIELDS
    assert cuts.GROUP_FIELDS == analytics.GROUP_FIELDS


def test_record_listings_equal_the_full_path(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tokensense usage` without --by (JSON, CSV, the table; --since, --limit) prints through the driver alone
    exactly what it printed through SQLAlchemy: values, types, order."""
    from tokensense.cli import usage

    base = datetime(2026, 11, 2, 10, 17, 3, 250_000, tzinfo=UTC)
    _fill(database_url, base)
    engine = make_engine(database_url)
    connection, dialect = lite.connect(database_url)
    try:
        for since in (None, base + timedelta(hours=30, seconds=0.5)):
            for limit in (None, 1, 7):
                with Session(engine) as session:
                    expected = repo.query_usage(session=session, since=since, limit=limit)
                assert lite.records(connection, dialect, since=since, limit=limit) == expected
                assert len(expected) == (limit or len(expected)) > 0
    finally:
        connection.close()
        engine.dispose()
    commands = [
        ["usage", "--json"],
        ["usage", "--csv", "--since", "2026-11-03T16:00:00"],
        ["usage", "--limit", "20"],
        ["usage", "--since", "2026-11-04", "--json", "--limit", "5"],
    ]
    for argv in commands:
        assert cli.main([*argv, "--database-url", database_url]) == 0
        quick = capsys.readouterr()
        with monkeypatch.context() as patch:
            patch.setattr(usage, "_records_lite", lambda *_: None)
            assert cli.main([*argv, "--database-url", database_url]) == 0
            full = capsys.readouterr()
        assert (quick.out, quick.err) == (full.out, full.err), argv
        assert quick.out.count("\n") > 5


def test_reports_equal_the_full_path(database_url: str) -> None:
    """`tokensense report`'s figures through the driver alone (one grouped query of the rollups) equal those read
    level by level through `analytics`, in every format."""
    from tokensense.cli import report

    base = datetime(2026, 11, 2, 10, 17, 3, 250_000, tzinfo=UTC)
    _fill(database_url, base)
    engine = make_engine(database_url)
    connection, dialect = lite.connect(database_url)
    end = base + timedelta(days=3, minutes=7)
    try:
        for fields in (
            ["workflow", "model"],
            ["project"],
            ["key_name"],
            ["step"],
            ["source", "provider"],
            ["workflow", "step", "model"],
        ):
            for start in (end - timedelta(days=1), end - timedelta(hours=30, seconds=1.25), base):
                with Session(engine) as session:
                    full = report.build_report(session=session, fields=fields, start=start, end=end)
                quick = report.build_report(
                    reader=report.LiteReader(connection, dialect), fields=fields, start=start, end=end
                )
                assert quick == full
                assert full.rows
                for name, formatter in report.FORMATTERS.items():
                    assert formatter(quick) == formatter(full), name
        with pytest.raises(lite.Unsupported):
            report.LiteReader(connection, dialect).grouped(["execution_id"], base)
    finally:
        connection.close()
        engine.dispose()


def test_report_command_takes_the_quick_path_and_execution_ids_the_full_one(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokensense.cli import report

    _fill(database_url, datetime.now(UTC) - timedelta(days=2))
    readers: list[str] = []
    original = report.build_report

    def spy(**kwargs: object) -> report.Report:
        readers.append(type(kwargs.get("reader")).__name__)
        return original(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(report, "build_report", spy)
    for by, expected in (("workflow,model", "LiteReader"), ("execution_id", "NoneType")):
        readers.clear()
        assert (
            cli.main(["report", "--since", "7d", "--by", by, "--format", "json", "--database-url", database_url]) == 0
        )
        assert json.loads(capsys.readouterr().out)["rows"]
        assert readers[-1] == expected, by

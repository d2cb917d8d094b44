"""`tokensense usage --by` through the driver alone (storage/lite.py): which databases it opens itself, and the
command printing exactly what the full path prints. The numbers themselves are compared with the full path
and a Python oracle on random records in tests/test_rollups.py (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
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

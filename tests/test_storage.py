"""The engine (SQLite and PostgreSQL) and the repository functions for keys, provider keys and usage."""

from __future__ import annotations

import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, select

from tests.conftest import service_missing
from tokensense import crypto
from tokensense.settings import reset_settings
from tokensense.storage import db, repo, rollups
from tokensense.storage.models import ApiKey, ProviderCredential, UsageCreate

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("TOKENSENSE_HOME", str(home))
    monkeypatch.setenv("TOKENSENSE_SECRET", "test secret")
    monkeypatch.delenv("TOKENSENSE_DATABASE_URL", raising=False)
    reset_settings()
    crypto.reset_fernet_cache()
    db.reset_engine()
    yield home
    db.reset_engine()
    reset_settings()
    crypto.reset_fernet_cache()


@pytest.fixture
def session() -> Iterator[Session]:
    engine = db.make_engine("sqlite://")
    assert isinstance(engine.pool, StaticPool)
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def _usage(**fields) -> UsageCreate:
    defaults = {"provider": "openai", "model": "gpt-4o-mini", "endpoint": "/v1/chat/completions", "status": 200}
    return UsageCreate(**(defaults | fields))


# --- engine -------------------------------------------------------------------


def test_default_engine_is_sqlite_in_a_private_home_with_wal(environment: Path) -> None:
    engine = db.get_engine()
    assert engine is db.get_engine()  # cached for the process
    assert stat.S_IMODE(environment.stat().st_mode) == 0o700
    assert (environment / "tokensense.db").exists()
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == db.SQLITE_BUSY_TIMEOUT_MS
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    with Session(engine) as session:  # tables were created
        assert session.exec(select(ApiKey)).all() == []
    db.reset_engine()
    assert db.get_engine() is not engine


def test_sqlite_engine_can_be_used_from_another_thread(tmp_path: Path) -> None:
    import threading

    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    db.init_db(engine)
    errors: list[BaseException] = []
    with engine.connect() as conn:

        def use() -> None:
            try:
                conn.execute(text("SELECT 1"))
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=use)
        thread.start()
        thread.join()
    assert errors == []
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u:p@host:5432/db", "postgresql+psycopg"),
        ("postgres://u@host/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@host/db", "postgresql+psycopg"),
        ("postgresql+asyncpg://u@host/db", "postgresql+asyncpg"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_postgresql_urls_use_psycopg3(url: str, driver: str) -> None:
    assert db.normalize_database_url(url).drivername == driver


def test_display_url_hides_the_password() -> None:
    assert db.display_url("postgresql://u:hunter2@host/db") == "postgresql://u:***@host/db"


@pytest.mark.postgres
def test_postgresql_engine_round_trip() -> None:
    schema = f"ts_test_{uuid.uuid4().hex[:10]}"
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except Exception as e:
        service_missing(f"PostgreSQL at {PG_URL} is not reachable: {e}")
    engine = db.make_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
    try:
        assert engine.dialect.driver == "psycopg"
        db.init_db(engine)
        db.init_db(engine)  # idempotent
        with engine.connect() as conn:
            tables = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}).scalars())
        assert {"api_keys", "provider_credentials", "usage"} <= tables
        with Session(engine) as session:
            key, plaintext = repo.create_key(session=session, name="pg", allowed_models=["gpt-*"])
            assert repo.get_key_by_hash(session=session, key_hash=crypto.hash_key(plaintext)).id == key.id
            repo.set_provider(session=session, provider="openai", api_key="sk-pg-secret-123456")
            assert repo.get_provider_secret(session=session, provider="openai") == ("sk-pg-secret-123456", None)
            old = datetime.now(UTC) - timedelta(days=3)
            repo.record_usages(
                session=session,
                usages=[
                    _usage(key_name="pg", input_tokens=10, output_tokens=2, cost_usd=0.5),
                    _usage(key_name="pg", input_tokens=5, output_tokens=1, cost_usd=0.25),
                    _usage(key_name="pg", model="claude-x", cost_usd=1.0, created_at=old),
                ],
            )
            since = datetime.now(UTC) - timedelta(hours=1)
            groups = repo.query_usage(session=session, since=since, by=["model", "key"])
            assert groups == [
                {"model": "gpt-4o-mini", "key_name": "pg", "requests": 2, "input_tokens": 15, "output_tokens": 3, "cost_usd": 0.75, "unpriced": 0}
            ]
            records = repo.query_usage(session=session, since=None, by=None)
            assert [r["model"] for r in records] == ["gpt-4o-mini", "gpt-4o-mini", "claude-x"]
            revoked = repo.revoke_key(session=session, name_or_id="pg")
            assert revoked.revoked_at is not None
    finally:
        engine.dispose()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# --- keys ---------------------------------------------------------------------


def test_create_key_stores_only_the_hash(session: Session) -> None:
    key, plaintext = repo.create_key(
        session=session,
        name="ci",
        budget_usd=5,
        budget_period="daily",
        rpm=60,
        tpm=10_000,
        plan="pro",
        allowed_models=["gpt-4o*", "gpt-4o*", "claude-*"],
        allowed_providers=["OpenAI", "anthropic"],
        project="billing",
    )
    assert plaintext.startswith("tsk_")
    assert key.key_hash == crypto.hash_key(plaintext)
    assert key.key_prefix == plaintext[: repo.KEY_PREFIX_LENGTH]
    assert plaintext not in key.model_dump_json()
    assert key.allowed_models == ["gpt-4o*", "claude-*"]
    assert key.allowed_providers == ["openai", "anthropic"]
    assert (key.budget_usd, key.budget_period, key.rpm, key.tpm, key.plan, key.project) == (5, "daily", 60, 10_000, "pro", "billing")
    assert key.revoked_at is None
    assert repo.get_key_by_hash(session=session, key_hash=crypto.hash_key(plaintext)).id == key.id
    assert repo.get_key_by_hash(session=session, key_hash=crypto.hash_key("tsk_other")) is None


def test_duplicate_key_name_is_a_clear_error(session: Session) -> None:
    repo.create_key(session=session, name="ci")
    with pytest.raises(ValueError, match="a key named 'ci' already exists"):
        repo.create_key(session=session, name="ci")
    assert len(repo.list_keys(session=session)) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": " "}, "cannot be empty"),
        ({"budget_period": "weekly"}, "unknown budget period"),
        ({"plan": "gold"}, "unknown plan"),
        ({"rpm": 0}, "positive"),
        ({"budget_usd": -1}, "non-negative"),
        ({"allowed_providers": [" "]}, "provider name cannot be empty"),
    ],
)
def test_invalid_key_options_are_refused(session: Session, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        repo.create_key(session=session, **({"name": "k"} | fields))


def test_list_revoke_and_update_keys(session: Session) -> None:
    first, _ = repo.create_key(session=session, name="first", rpm=10, plan="free")
    second, _ = repo.create_key(session=session, name="second")
    assert [k.name for k in repo.list_keys(session=session)] == ["first", "second"]

    revoked = repo.revoke_key(session=session, name_or_id=second.id)  # by id
    assert revoked.revoked_at is not None
    again = repo.revoke_key(session=session, name_or_id="second")  # by name; keeps the first time
    assert again.revoked_at == revoked.revoked_at
    assert [k.name for k in repo.list_keys(session=session, include_revoked=False)] == ["first"]
    with pytest.raises(LookupError, match="no key named or with id 'third'"):
        repo.revoke_key(session=session, name_or_id="third")

    updated = repo.update_key(session=session, name_or_id="first", rpm=None, tpm=500, allowed_models=["gpt-*"])
    assert (updated.rpm, updated.tpm, updated.plan, updated.allowed_models) == (None, 500, "free", ["gpt-*"])
    with pytest.raises(ValueError, match="unknown plan"):
        repo.update_key(session=session, name_or_id="first", plan="gold")
    with pytest.raises(LookupError):
        repo.update_key(session=session, name_or_id="nope", rpm=1)


# --- provider credentials -----------------------------------------------------


def test_provider_keys_are_encrypted_at_rest(session: Session) -> None:
    row = repo.set_provider(session=session, provider="OpenAI", api_key="sk-proj-secret-value-1234\n")
    assert row.provider == "openai"
    assert "sk-proj-secret-value-1234" not in row.encrypted_key
    stored = session.exec(select(ProviderCredential)).one()
    assert crypto.decrypt_secret(stored.encrypted_key) == "sk-proj-secret-value-1234"
    assert repo.get_provider_secret(session=session, provider="openai") == ("sk-proj-secret-value-1234", None)

    repo.set_provider(session=session, provider="openai", api_key="sk-new-value-5678", base_url="https://gw.example.com/v/")
    assert repo.get_provider_secret(session=session, provider="openai") == ("sk-new-value-5678", "https://gw.example.com/v")
    assert [p.provider for p in repo.list_providers(session=session)] == ["openai"]
    assert repo.get_provider_secret(session=session, provider="gemini") is None

    repo.remove_provider(session=session, provider="openai")
    assert repo.list_providers(session=session) == []
    with pytest.raises(LookupError, match="no key is stored for openai"):
        repo.remove_provider(session=session, provider="openai")


def test_provider_input_is_validated(session: Session) -> None:
    with pytest.raises(ValueError, match="is empty"):
        repo.set_provider(session=session, provider="xai", api_key="  \n")
    with pytest.raises(ValueError, match="base URL must be"):
        repo.set_provider(session=session, provider="xai", api_key="xai-1", base_url="gw.example.com")


def test_provider_names_come_from_the_registry() -> None:
    """Which provider names exist is the registry's knowledge (storage keeps whatever the CLI validated)."""
    from tokensense import providers as registry

    builtin = {"openai", "anthropic", "gemini", "xai", "mistral", "fal", "azure", "bedrock", "vertex"}
    assert registry.BUILTIN == builtin and builtin <= set(registry.names())  # config.toml may declare more
    assert registry.env_var("fal") == "FAL_KEY" and registry.env_var("azure") == "AZURE_OPENAI_API_KEY"
    assert registry.normalize(" OpenAI ") == "openai"
    with pytest.raises(ValueError, match="unknown provider 'cohere'; choose one of: openai"):
        registry.normalize("cohere")


def test_provider_key_under_another_secret_is_a_clear_error(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    repo.set_provider(session=session, provider="fal", api_key="fal-key-abcdef123456")
    monkeypatch.setenv("TOKENSENSE_SECRET", "a different secret")
    reset_settings()
    crypto.reset_fernet_cache()
    with pytest.raises(crypto.SecretMismatchError, match="secret changed"):
        repo.get_provider_secret(session=session, provider="fal")


# --- usage --------------------------------------------------------------------


def test_record_usages_is_one_batched_insert(session: Session) -> None:
    """One executemany INSERT for the records, one upsert per rollup cut for their rollup rows (one transaction)."""
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            statements.append(statement)

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", count)
    try:
        written = repo.record_usages(session=session, usages=[_usage(input_tokens=i) for i in range(25)])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert written == 25
    tables = [s.split("(")[0].strip() for s in statements]
    # The records in one executemany; their rollup rows in one upsert per cut (each with the cut's own fields).
    assert tables[0] == "INSERT INTO usage" and tables.count("INSERT INTO usage") == 1
    assert set(tables[1:]) == {"INSERT INTO usage_rollup"} and len(tables) - 1 <= len(rollups.CUTS)
    assert repo.record_usages(session=session, usages=[]) == 0
    assert len(repo.query_usage(session=session)) == 25


def test_query_usage_records(session: Session) -> None:
    now = datetime.now(UTC)
    repo.record_usages(
        session=session,
        usages=[
            _usage(key_name="a", created_at=now - timedelta(days=2), cost_usd=1.0),
            _usage(key_name="b", created_at=now - timedelta(minutes=5), latency_ms=120.5, ttft_ms=40.0, workflow="wf"),
            _usage(key_name="c", created_at=now - timedelta(minutes=1), status=429, error="rate limited"),
        ],
    )
    records = repo.query_usage(session=session, since=None, by=None)
    assert [r["key_name"] for r in records] == ["c", "b", "a"]  # newest first
    assert list(records[0]) == list(repo.USAGE_RECORD_FIELDS)
    for name in ("id", "created_at", "key_name", "latency_ms", "ttft_ms", "input_tokens", "output_tokens", "cost_usd", "workflow"):
        assert name in records[0]
    b = records[1]
    assert (b["latency_ms"], b["ttft_ms"], b["workflow"]) == (120.5, 40.0, "wf")
    assert datetime.fromisoformat(b["created_at"]) == (now - timedelta(minutes=5))

    since = now - timedelta(hours=1)
    assert [r["key_name"] for r in repo.query_usage(session=session, since=since, by=None)] == ["c", "b"]
    naive_since = since.replace(tzinfo=None)  # naive times are UTC
    assert [r["key_name"] for r in repo.query_usage(session=session, since=naive_since, by=None)] == ["c", "b"]
    assert [r["key_name"] for r in repo.query_usage(session=session, since=None, by=None, limit=1)] == ["c"]


def test_query_usage_grouped_in_sql(session: Session) -> None:
    repo.record_usages(
        session=session,
        usages=[
            _usage(key_name="a", workflow="wf1", step="plan", input_tokens=100, output_tokens=10, cost_usd=0.5),
            _usage(key_name="a", workflow="wf1", step="plan", input_tokens=50, output_tokens=5, cost_usd=0.25),
            _usage(key_name="a", workflow="wf1", step="act", input_tokens=1, output_tokens=1, cost_usd=2.0),
            _usage(key_name="b", workflow=None, cost_usd=0.0),
        ],
    )
    groups = repo.query_usage(session=session, since=None, by=["workflow", "step"])
    assert groups == [
        {"workflow": "wf1", "step": "act", "requests": 1, "input_tokens": 1, "output_tokens": 1, "cost_usd": 2.0, "unpriced": 0},
        {"workflow": "wf1", "step": "plan", "requests": 2, "input_tokens": 150, "output_tokens": 15, "cost_usd": 0.75, "unpriced": 0},
        {"workflow": None, "step": None, "requests": 1, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "unpriced": 0},
    ]
    by_key = repo.query_usage(session=session, since=None, by=["key"], limit=1)
    assert by_key == [{"key_name": "a", "requests": 3, "input_tokens": 151, "output_tokens": 16, "cost_usd": 2.75, "unpriced": 0}]
    by_status = repo.query_usage(session=session, since=None, by=["status", "Provider"])
    assert by_status[0]["status"] == 200 and by_status[0]["provider"] == "openai" and by_status[0]["requests"] == 4


def test_query_usage_rejects_unknown_group_fields(session: Session) -> None:
    with pytest.raises(ValueError, match="cannot group usage by 'cost_usd'; allowed fields: workflow, step, execution_id"):
        repo.query_usage(session=session, since=None, by=["model", "cost_usd"])

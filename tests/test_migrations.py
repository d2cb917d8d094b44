"""Schema migrations: an existing SQLite or PostgreSQL database is upgraded in place and keeps its records."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata, produce_migrations, render_python_code
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, Table, func, inspect, text
from sqlmodel import Session, SQLModel, select
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

from tests.conftest import service_missing
from tokensense import crypto
from tokensense.cli import commands as cli
from tokensense.settings import reset_settings
from tokensense.storage import db, migrate
from tokensense.storage.models import ApiKey, ProviderCredential, Usage, UsageCreate, UsageRollup
from tokensense.storage.schema import INITIAL_REVISION, MIGRATIONS_DIR, VERSIONS_DIR, head_revision

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
HEAD = "0015_batches2"
NEXT = f"{int(HEAD[:4]) + 1:04d}"
LATER_TABLES = {"stored_responses", "usage_rollup", "usage_retention", "owned_resources", "budgets", "batch_files",
                "batch_jobs", "leases", "upload_sessions"}  # made by revisions after 0001
NEW_INDEXES = {"ix_usage_key_id_created_at": ["key_id", "created_at"], "ix_usage_workflow_step_created_at": ["workflow", "step", "created_at"],
               "ux_usage_request_id_attempt": ["request_id", "attempt"],
               "ix_usage_execution_id_created_at": ["execution_id", "created_at"]}


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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh schema of the real PostgreSQL (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tokensense.db'}"
        return
    schema = f"ts_migrate_{uuid.uuid4().hex[:10]}"
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except Exception as e:
        service_missing(f"PostgreSQL at {PG_URL} is not reachable ({type(e).__name__}: {e})")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


def previous_schema() -> MetaData:
    """The tables as `create_all` made them before revision 0002: today's models without what 0002 to 0006 added.

    Copied columns keep their `index=True` and `unique=True`, so the single-column
    indexes come along; the composite indexes of 0002 and 0003 are table arguments and do not.
    0003 also made `usage.cost_usd` nullable and replaced the plain `request_id` index.
    """
    added = {("api_keys", "updated_at"), ("api_keys", "admin"), ("api_keys", "max_call_usd"), ("api_keys", "allowed_endpoints"), ("usage", "details"), ("usage", "attempt"), ("provider_credentials", "name"),
             ("provider_credentials", "disabled_at"), ("provider_credentials", "disabled_reason")}
    metadata = MetaData(naming_convention=dict(SQLModel.metadata.naming_convention))
    for table in SQLModel.metadata.sorted_tables:
        if table.name in LATER_TABLES:
            continue
        columns = [c._copy() for c in table.columns if (table.name, c.name) not in added]
        if table.name == "usage":
            for column in columns:
                if column.name == "cost_usd":
                    column.nullable = False
                if column.name == "request_id":
                    column.index = True
        Table(table.name, metadata, *columns)
    return metadata


def fill_with_plain_sql(engine: Engine) -> None:
    """Keys, a provider key and usage records written the way an older TokenSense left them."""
    sqlite = engine.dialect.name == "sqlite"
    # SQLAlchemy stores DATETIME on SQLite as naive UTC text; PostgreSQL has timestamptz.
    at = "2025-01-15 10:00:00.000000" if sqlite else "2025-01-15 10:00:00+00"
    later = "2025-01-15 10:05:00.000000" if sqlite else "2025-01-15 10:05:00+00"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (id, name, budget_usd, budget_period, rpm, tpm, plan, allowed_models, "
                "allowed_providers, project, key_hash, key_prefix, created_at, revoked_at) VALUES "
                "(:id, :name, :budget, 'monthly', 60, NULL, 'pro', :models, '[]', 'alpha', :hash, 'tsk_abc', :at, NULL)"
            ),
            [
                {"id": "k1", "name": "ci", "budget": 5.0, "models": '["gpt-4o*"]', "hash": "h" * 64, "at": at},
                {"id": "k2", "name": "batch", "budget": None, "models": "[]", "hash": "g" * 64, "at": at},
            ],
        )
        conn.execute(
            text("INSERT INTO provider_credentials (provider, encrypted_key, base_url, updated_at) VALUES ('openai', 'enc', NULL, :at)"),
            {"at": at},
        )
        conn.execute(
            text(
                "INSERT INTO usage (request_id, key_id, key_name, provider, model, endpoint, status, stream, input_tokens, "
                "output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, images, characters, seconds, "
                "cost_usd, workflow, created_at) VALUES (:rid, :key, :name, 'openai', 'gpt-4o-mini', '/v1/chat/completions', "
                "200, :stream, :inp, 5, 0, 0, 0, 0, 0, 0, :cost, 'triage', :at)"
            ),
            [
                {"rid": "r1", "key": "k1", "name": "ci", "stream": False, "inp": 10, "cost": 0.25, "at": at},
                {"rid": "r2", "key": "k1", "name": "ci", "stream": True, "inp": 20, "cost": 0.5, "at": later},
                {"rid": "r3", "key": "k2", "name": "batch", "stream": False, "inp": 30, "cost": 1.0, "at": later},
            ],
        )


def assert_records_kept(engine: Engine) -> None:
    """What fill_with_plain_sql wrote reads back through the models, and the upgraded tables take new rows."""
    with Session(engine) as session:
        keys = {k.name: k for k in session.exec(select(ApiKey)).all()}
        assert set(keys) == {"ci", "batch"}
        ci = keys["ci"]
        assert (ci.id, ci.budget_usd, ci.budget_period, ci.rpm, ci.tpm, ci.plan, ci.project) == ("k1", 5.0, "monthly", 60, None, "pro", "alpha")
        assert ci.allowed_models == ["gpt-4o*"] and ci.allowed_providers == []
        assert ci.created_at == datetime(2025, 1, 15, 10, tzinfo=UTC)
        assert ci.updated_at is None  # the new column: existing keys were never changed
        records = session.exec(select(Usage).order_by(Usage.id)).all()
        assert [(r.request_id, r.key_id, r.input_tokens, r.cost_usd, r.stream) for r in records] == [
            ("r1", "k1", 10, 0.25, False), ("r2", "k1", 20, 0.5, True), ("r3", "k2", 30, 1.0, False),
        ]

        ci.updated_at = datetime(2025, 2, 1, 12, tzinfo=UTC)
        session.add(ci)
        session.add(Usage.model_validate(UsageCreate(key_id="k1", cost_usd=2.0)))
        session.commit()
    with Session(engine) as session:
        assert session.exec(select(ApiKey).where(ApiKey.name == "ci")).one().updated_at == datetime(2025, 2, 1, 12, tzinfo=UTC)
        assert len(session.exec(select(Usage)).all()) == 4  # the id sequence continues after the old rows


def assert_head_schema(engine: Engine) -> None:
    assert migrate.current_revision(engine) == HEAD
    inspector = inspect(engine)
    assert "updated_at" in {c["name"] for c in inspector.get_columns("api_keys")}
    indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("usage")}
    assert {name: indexes.get(name) for name in NEW_INDEXES} == NEW_INDEXES
    with engine.connect() as conn:
        assert migrate.schema_differences(conn) == []


def differences(engine: Engine, metadata: MetaData) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "target_metadata": metadata})
        return compare_metadata(context, metadata)


# --- upgrading existing databases ------------------------------------------------


def test_previous_schema_is_upgraded_in_place_and_keeps_its_records(engine: Engine) -> None:
    """A database at the previous schema (0001_initial) with data in it reaches the head through init_db."""
    migrate.upgrade(engine, INITIAL_REVISION)
    assert migrate.current_revision(engine) == INITIAL_REVISION
    fill_with_plain_sql(engine)

    db.init_db(engine)

    assert_head_schema(engine)
    assert_records_kept(engine)


def test_database_made_before_migrations_is_stamped_then_upgraded(engine: Engine) -> None:
    """A database that `create_all` made before TokenSense had migrations has no alembic_version table."""
    previous_schema().create_all(engine)
    fill_with_plain_sql(engine)
    assert not inspect(engine).has_table("alembic_version")

    db.init_db(engine)

    assert_head_schema(engine)
    assert_records_kept(engine)


def test_database_made_by_create_all_of_the_current_models_is_stamped_at_head(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Usage.model_validate(UsageCreate(key_id="k1", cost_usd=1.0)))
        session.commit()

    db.init_db(engine)

    assert_head_schema(engine)
    with Session(engine) as session:
        assert [u.cost_usd for u in session.exec(select(Usage)).all()] == [1.0]


def test_empty_database_gets_every_revision(engine: Engine) -> None:
    db.init_db(engine)
    assert_head_schema(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]


def test_instances_starting_together_migrate_once(database_url: str) -> None:
    """Four init_db at once on one empty database all succeed: they wait on the migration lock.

    The test holds that lock (PostgreSQL's advisory lock, or SQLite's write lock) until all
    four are blocked on it, so they really contend for the same empty database.
    """
    engines = [db.make_engine(database_url) for _ in range(4)]
    errors: list[BaseException] = []

    def start(engine: Engine) -> None:
        try:
            db.init_db(engine)
        except BaseException as e:
            errors.append(e)

    holder = db.make_engine(database_url)
    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    try:
        with migrate.migration_connection(holder) as conn:
            for thread in threads:
                thread.start()
            if conn.dialect.name == "postgresql":
                assert _wait_until(lambda: _waiting_for_lock(holder) == len(threads)), "init_db did not wait for the lock"
            time.sleep(0.3)
            assert all(t.is_alive() for t in threads), "init_db did not wait for the migration lock"
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        assert_head_schema(holder)
        with holder.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
    finally:
        for engine in [*engines, holder]:
            engine.dispose()


def _waiting_for_lock(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
                 "(SELECT oid FROM pg_database WHERE datname = current_database())")
        ).scalar_one()


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_upgrade_is_one_transaction_on_sqlite(tmp_path: Path) -> None:
    """A migration that fails half-way leaves the previous schema, not a half-built one."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(RuntimeError), migrate.migration_connection(engine) as conn:
            migrate.upgrade(conn, "head")
            raise RuntimeError("crash during the migration")
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_current_database_costs_one_check_and_no_alembic(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    db.init_db(engine)

    def must_not_run(engine: Engine) -> None:
        raise AssertionError("init_db ran Alembic on a database at the head revision")

    monkeypatch.setattr(migrate, "upgrade_database", must_not_run)
    started = time.perf_counter()
    for _ in range(10):
        db.init_db(engine)
    assert (time.perf_counter() - started) / 10 < 0.1  # milliseconds in practice; loose for busy machines


def test_database_from_a_newer_tokensense_is_a_clear_error(engine: Engine) -> None:
    db.init_db(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    with pytest.raises(migrate.SchemaVersionError, match="schema revision '0099_future', which TokenSense .* does not know"):
        db.init_db(engine)


def test_unrelated_tables_with_tokensense_names_are_refused(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE usage (id INTEGER PRIMARY KEY, what VARCHAR)"))
    with pytest.raises(migrate.SchemaVersionError, match="has the TokenSense tables usage but not api_keys, provider_credentials"):
        db.init_db(engine)


def test_in_memory_sqlite_keeps_create_all() -> None:
    engine = db.make_engine("sqlite://")
    try:
        db.init_db(engine)
        assert {"api_keys", "provider_credentials", "usage"} <= set(inspect(engine).get_table_names())
        assert migrate.current_revision(engine) is None
    finally:
        engine.dispose()


# --- models and migrations agree -------------------------------------------------


def test_models_and_migrations_agree(engine: Engine) -> None:
    """Upgrading an empty database gives exactly what the models describe (Alembic's autogenerate sees nothing to do)."""
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert migrate.schema_differences(conn) == []


def test_initial_revision_is_the_schema_before_migrations(engine: Engine) -> None:
    """0001_initial is what `create_all` made from the models before 0002; downgrading 0002 returns to it."""
    migrate.upgrade(engine, INITIAL_REVISION)
    assert differences(engine, previous_schema()) == []
    migrate.upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), INITIAL_REVISION)
    assert differences(engine, previous_schema()) == []


def test_the_comparison_sees_a_model_change_without_a_migration(engine: Engine) -> None:
    """The agreement check is not vacuous: a column the migrations lack, or a changed type, shows up."""
    migrate.upgrade(engine)
    changed = MetaData(naming_convention=dict(SQLModel.metadata.naming_convention))
    for table in SQLModel.metadata.sorted_tables:
        columns = [c._copy() for c in table.columns if (table.name, c.name) != ("usage", "key_name")]
        if table.name == "usage":
            columns += [Column("key_name", Integer()), Column("labels", Integer())]
        Table(table.name, changed, *columns)
    found = set()
    for diff in differences(engine, changed):
        for op in diff if isinstance(diff, list) else [diff]:
            if op[0] == "add_column":
                found.add((op[0], op[2], op[3].name))
            elif op[0] == "modify_type":
                found.add((op[0], op[2], op[3]))
    assert found == {("add_column", "usage", "labels"), ("modify_type", "usage", "key_name")}


def test_new_revisions_spell_sqlmodel_types_as_plain_sqlalchemy(engine: Engine) -> None:
    """Autogenerate writes `sa.String()`, not `sqlmodel.sql.sqltypes.AutoString()` (which the scripts do not import)."""
    migrate.upgrade(engine)
    changed = MetaData(naming_convention=dict(SQLModel.metadata.naming_convention))
    for table in SQLModel.metadata.sorted_tables:
        extra = [Column("label", AutoString()), Column("seen_at", UTCDateTime())] if table.name == "api_keys" else []
        Table(table.name, changed, *(c._copy() for c in table.columns), *extra)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={**migrate.context_options(conn.dialect.name), "target_metadata": changed})
        code = render_python_code(produce_migrations(context, changed).upgrade_ops, render_item=migrate.render_item)
    assert "sa.Column('label', sa.String(), nullable=True)" in code
    assert "sa.Column('seen_at', sa.DateTime(timezone=True), nullable=True)" in code
    assert "sqlmodel" not in code


def test_head_is_read_from_the_file_names() -> None:
    """The start-up check reads the head from file names; Alembic must agree, with one line of history."""
    script = migrate.script_directory()
    assert script.get_heads() == [head_revision()] == [HEAD]
    revisions = list(script.walk_revisions())
    assert all(Path(r.path).name == f"{r.revision}.py" for r in revisions)
    numbers = sorted(int(r.revision.split("_")[0]) for r in revisions)
    assert numbers == list(range(1, len(numbers) + 1))


def test_new_revision_follows_the_head(tmp_path: Path) -> None:
    """scripts/new-migration: the next number, a file named after its id; autogenerate finds nothing today."""
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory, ignore=shutil.ignore_patterns("__pycache__"))
    path = migrate.new_revision("Add key labels!", autogenerate=True, directory=directory)
    assert path == directory / "versions" / f"{NEXT}_add_key_labels.py"
    source = path.read_text()
    assert f'down_revision: str | None = "{HEAD}"' in source or f"down_revision: str | None = '{HEAD}'" in source
    assert "op." not in source  # the models and the head agree: nothing to do
    assert head_revision(directory / "versions") == f"{NEXT}_add_key_labels"
    assert not (VERSIONS_DIR / f"{NEXT}_add_key_labels.py").exists()


def test_provider_key_pools_revision_names_existing_keys_default_and_downgrades_to_one_per_provider(engine: Engine) -> None:
    """0004: the primary key becomes (provider, name); existing keys are named `default`."""
    migrate.upgrade(engine, "0003_usage_details")
    fill_with_plain_sql(engine)
    migrate.upgrade(engine)

    assert inspect(engine).get_pk_constraint("provider_credentials")["constrained_columns"] == ["provider", "name"]
    with Session(engine) as session:
        rows = session.exec(select(ProviderCredential)).all()
        assert [(r.provider, r.name, r.encrypted_key, r.disabled_at) for r in rows] == [("openai", "default", "enc", None)]
        session.add(ProviderCredential(provider="openai", name="backup", encrypted_key="enc2"))
        session.add(ProviderCredential(provider="gemini", name="zeta", encrypted_key="z"))
        session.add(ProviderCredential(provider="gemini", name="alpha", encrypted_key="a"))
        session.commit()

    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "0003_usage_details")
    assert inspect(engine).get_pk_constraint("provider_credentials")["constrained_columns"] == ["provider"]
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT provider, encrypted_key FROM provider_credentials ORDER BY provider")).all()
    assert [tuple(r) for r in kept] == [("gemini", "a"), ("openai", "enc")]  # `default`, else the first by name

    migrate.upgrade(engine)
    assert_head_schema(engine)


# --- the command line ------------------------------------------------------------


def test_db_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = db.make_engine(url)
    migrate.upgrade(engine, INITIAL_REVISION)
    engine.dispose()

    assert cli.main(["db", "current", "--database-url", url]) == 0
    assert capsys.readouterr().out == f"0001_initial; the newest is {HEAD}: run `tokensense db upgrade` (the gateway also upgrades when it starts)\n"
    assert cli.main(["db", "upgrade", "--database-url", url]) == 0
    assert capsys.readouterr().out == f"Upgraded {url} from 0001_initial to {HEAD}.\n"
    assert cli.main(["db", "upgrade", "--database-url", url]) == 0
    assert capsys.readouterr().out == f"{url} is at the newest schema revision, {HEAD}.\n"
    assert cli.main(["db", "current", "--json", "--database-url", url]) == 0
    assert capsys.readouterr().out == f'{{\n  "current": "{HEAD}",\n  "head": "{HEAD}",\n  "up_to_date": true\n}}\n'


def test_db_commands_on_a_database_from_a_newer_tokensense(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = db.make_engine(url)
    db.init_db(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    engine.dispose()

    assert cli.main(["db", "current", "--database-url", url]) == 0
    assert "0099_future, which this TokenSense does not know" in capsys.readouterr().out
    assert cli.main(["keys", "list", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: database error (") and "'0099_future'" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_upgrade_back_fills_the_rollups_from_the_records(engine: Engine) -> None:
    """Revision 0006 sums the existing records into usage_rollup in SQL; the reports then equal the records,
    and records written later join the back-filled rows (the same keys in SQL and Python)."""
    import random

    from tokensense.storage import analytics, repo

    migrate.upgrade(engine, "0005_responses")
    rng = random.Random(6)
    base = datetime(2025, 3, 31, 22, 0, tzinfo=UTC)
    rows = []
    for index in range(400):
        status = rng.choice([200, 200, 200, 402, 429, 500])
        rows.append({
            "request_id": f"r{index // 2}", "attempt": 1 + index % 2,  # retried calls: two attempts each
            "created_at": base + timedelta(microseconds=rng.randrange(3 * 3600 * 10**6)),
            "key_id": rng.choice([None, "k1", "k2"]), "key_name": rng.choice([None, "ci"]),
            "provider": "openai", "model": rng.choice(["gpt-4o", None]), "endpoint": rng.choice(["/v1/chat/completions", ""]),
            "status": status, "error": None, "stream": False, "input_tokens": rng.randrange(10**5),
            "output_tokens": rng.randrange(10**4), "cached_input_tokens": 0, "cache_write_tokens": 0,
            "reasoning_tokens": 0, "images": 0, "characters": 0, "seconds": rng.random() * 10,
            "cost_usd": None if rng.random() < 0.1 else (0.0 if status >= 400 else rng.random() / 7),
            "latency_ms": rng.choice([None, rng.random() * 5000]), "ttft_ms": None,
            "workflow": rng.choice([None, "", "triage", "answer"]), "step": rng.choice([None, "a"]),
            "execution_id": rng.choice([None, "e1"]), "source": rng.choice([None, "api"]),
            "project": rng.choice([None, "web"]), "details": None,
        })
    with engine.begin() as conn:
        conn.execute(Usage.__table__.insert(), rows)  # type: ignore[attr-defined]

    db.init_db(engine)

    assert_head_schema(engine)
    with Session(engine) as session:
        for fields in (["workflow"], ["workflow", "step"], ["key_name"], ["model", "status"], ["endpoint"]):
            for since in (None, base + timedelta(minutes=61, seconds=7.25), base + timedelta(hours=2)):
                assert (analytics.grouped_totals(session=session, fields=fields, since=since)
                        == analytics.grouped_totals(session=session, fields=fields, since=since, from_records=True))
        total = analytics.report_totals(session=session)
        assert total.requests == 400 and total.unpriced == sum(r["cost_usd"] is None for r in rows)
        rollup_rows = session.exec(select(func.count()).select_from(UsageRollup)).one()
        # The same minute and fields as back-filled records: added to their rows, no new ones.
        again = [UsageCreate(**{**row, "request_id": f"again-{n}"}) for n, row in enumerate(rows[:50])]
        repo.record_usages(session=session, usages=again)
        assert session.exec(select(func.count()).select_from(UsageRollup)).one() == rollup_rows
        assert analytics.report_totals(session=session).requests == 450
        assert (analytics.grouped_totals(session=session, fields=["workflow", "step"])
                == analytics.grouped_totals(session=session, fields=["workflow", "step"], from_records=True))


def test_upgrade_back_fills_the_day_rows_of_the_all_cut(engine: Engine) -> None:
    """Revision 0013 sums the `all` cut's hour rows into day rows: reports by fields only that cut has (which
    read day rows from the first UTC midnight of their window) equal the records again; downgrading drops them."""
    from sqlalchemy import delete

    from tokensense.storage import analytics, repo
    from tokensense.storage.rollups import DAY

    previous = migrate.script_directory().get_revision("0013_usage_rollup_days").down_revision
    assert isinstance(previous, str)
    migrate.upgrade(engine, previous)
    base = datetime(2025, 3, 30, 21, 30, tzinfo=UTC)
    usages = [UsageCreate(request_id=f"d{n}", created_at=base + timedelta(minutes=37 * n), model=f"m{n % 3}",
                          project=["web", None][n % 2], status=[200, 500][n % 5 == 0], input_tokens=n,
                          cost_usd=None if n % 7 == 0 else n / 3) for n in range(200)]  # five days
    rollup = UsageRollup.__table__  # type: ignore[attr-defined]
    day_rows = (rollup.c.cut == 9, rollup.c.grain == DAY)
    with Session(engine) as session:
        repo.record_usages(session=session, usages=usages)
        session.exec(delete(rollup).where(*day_rows))  # type: ignore[call-overload]
        session.commit()

    db.init_db(engine)

    def reports() -> list[object]:
        with Session(engine) as session:
            return [analytics.grouped_totals(session=session, fields=fields, since=since, from_records=source)
                    for fields in (["model", "project"], ["status"]) for since in (None, base + timedelta(hours=30))
                    for source in (False, True)]

    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(UsageRollup).where(*day_rows)).one() > 0
    found = reports()
    assert found[0::2] == found[1::2]  # rollups (day rows) == records, for each grouping and window
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), previous)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(UsageRollup).where(*day_rows)).one() == 0


def test_upgrade_back_fills_the_outcome_and_attribution_cuts(engine: Engine) -> None:
    """Revision 0014 sums the `all` cut's hour and day rows into the hour and day rows of cuts 6 and 7: exactly
    the rows the record writer adds (compared row by row), and reports by status, endpoint or model and project
    equal the records; downgrading drops them."""
    from sqlalchemy import delete

    from tokensense.storage import analytics, repo

    previous = migrate.script_directory().get_revision("0014_usage_rollup_cuts").down_revision
    assert isinstance(previous, str)
    migrate.upgrade(engine, previous)
    base = datetime(2025, 3, 30, 21, 30, tzinfo=UTC)
    usages = [UsageCreate(request_id=f"c{n}", created_at=base + timedelta(minutes=37 * n), model=f"m{n % 3}",
                          provider=["p1", "p2"][n % 2], endpoint=["/a", "", "/b"][n % 3], source=[None, "api"][n % 4 == 0],
                          project=["web", None][n % 2], workflow=[None, "", "w"][n % 3], step=[None, "s"][n % 5 == 0],
                          status=[200, 500, 402][n % 3], input_tokens=n, latency_ms=n * 1.5,
                          cost_usd=None if n % 7 == 0 else n / 3) for n in range(200)]  # five days
    rollup = UsageRollup.__table__  # type: ignore[attr-defined]
    new_rows = (rollup.c.cut.in_([6, 7]),)
    order = (rollup.c.cut, rollup.c.grain, rollup.c.bucket, rollup.c.dims_key)
    with Session(engine) as session:
        repo.record_usages(session=session, usages=usages)
        written = session.execute(select(rollup).where(*new_rows).order_by(*order)).all()
        session.exec(delete(rollup).where(*new_rows))  # type: ignore[call-overload]
        session.commit()
    assert {row.grain for row in written} == {3600, 86_400}

    db.init_db(engine)

    with Session(engine) as session:
        assert session.execute(select(rollup).where(*new_rows).order_by(*order)).all() == written
        for fields in (["status"], ["endpoint"], ["provider", "status"], ["model", "project"], ["workflow", "model"]):
            for since in (None, base + timedelta(hours=30, seconds=7.5)):
                assert (analytics.grouped_totals(session=session, fields=fields, since=since)
                        == analytics.grouped_totals(session=session, fields=fields, since=since, from_records=True))
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), previous)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(UsageRollup).where(*new_rows)).one() == 0

"""The database engine: SQLite (WAL) under TOKENSENSE_HOME by default, PostgreSQL when configured."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel, create_engine

from tokensense.settings import get_settings
from tokensense.storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from tokensense.storage.schema import head_revision, is_in_memory

SQLITE_BUSY_TIMEOUT_MS = 5000
VERSION_TABLE = "alembic_version"  # where Alembic records the schema revision

_engine: Engine | None = None
_engine_lock = threading.Lock()


def normalize_database_url(url: str) -> URL:
    """Parse `url`, pointing plain `postgresql://` (and `postgres://`) URLs at psycopg 3.

    SQLAlchemy's default PostgreSQL driver is psycopg2, which TokenSense does not
    install; an explicit driver (`postgresql+asyncpg://`, ...) is kept as given.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def display_url(url: str | URL) -> str:
    """`url` with its password hidden, for messages."""
    parsed = url if isinstance(url, URL) else make_url(url)
    return parsed.render_as_string(hide_password=True)


def _prepare_sqlite_directory(parsed: URL) -> None:
    """Create the folder of a SQLite file if it is missing, private to the user (0700).

    The default folder is TOKENSENSE_HOME, which also holds the secret key file.
    An existing folder is left as it is.
    """
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    folder = Path(database).parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask


def _set_sqlite_pragmas(dbapi_connection, connection_record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def make_engine(url: str | None = None, *, echo: bool = False) -> Engine:
    """A new engine for `url` (default: the configured database, SQLite under TOKENSENSE_HOME).

    SQLite connections use WAL journaling, a busy timeout and `synchronous=NORMAL`,
    and may be used from any thread (the gateway writes from a worker thread).
    An in-memory SQLite URL (`sqlite://`) shares one connection, so every session
    sees the same database.
    """
    parsed = normalize_database_url(url or get_settings().effective_database_url)

    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite_directory(parsed)
        kwargs: dict = {"connect_args": {"check_same_thread": False}}
        if not parsed.database or parsed.database == ":memory:":
            kwargs["poolclass"] = StaticPool
        engine = create_engine(parsed, echo=echo, **kwargs)
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine

    return create_engine(parsed, echo=echo, pool_pre_ping=True)


def schema_is_current(engine: Engine) -> bool:
    """Whether the database records the newest schema revision (one or two quick queries, no Alembic)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return False
        versions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return versions == [head_revision()]


def init_db(engine: Engine) -> None:
    """Bring the database schema to the newest revision (Alembic migrations; see docs/migrations.md).

    At the newest revision already, this is one check. Otherwise the migrations run
    under a lock, so instances starting together upgrade once: an empty database gets
    every revision; one that `create_all` made before TokenSense had migrations is
    stamped with the revision it matches, then upgraded. In-memory SQLite (tests)
    gets its tables directly.
    """
    if is_in_memory(engine):
        SQLModel.metadata.create_all(engine)
        return
    if schema_is_current(engine):
        return
    from tokensense.storage.migrate import upgrade_database

    upgrade_database(engine)


def get_engine() -> Engine:
    """The process-wide engine for the configured database, with its tables created."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                engine = make_engine()
                init_db(engine)
                _engine = engine
    return _engine


def reset_engine() -> None:
    """Dispose of the cached engine; the next `get_engine` reads the settings again."""
    global _engine
    with _engine_lock:
        if _engine is not None:
            _engine.dispose()
        _engine = None

"""Schema migrations with Alembic, configured in code: upgrade, stamp and inspect a SQLite or PostgreSQL database."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

from tokensense import __version__
from tokensense.storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from tokensense.storage.schema import INITIAL_REVISION, MIGRATIONS_DIR, head_revision, is_in_memory

TOKENSENSE_TABLES = frozenset({"api_keys", "provider_credentials", "usage"})

PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"tokensense schema migrations").digest()[:8], "big", signed=True)
"""The PostgreSQL advisory lock held while migrating (one key per database, whatever the schema)."""

SQLITE_LOCK_TIMEOUT_S = 120.0
"""How long a SQLite migration waits for another process's migration to finish."""


class SchemaVersionError(SQLAlchemyError):
    """The database's schema is one this TokenSense cannot bring up to date."""


# --- Alembic configuration -----------------------------------------------------


def alembic_config(connection: Connection | None = None, *, directory: Path = MIGRATIONS_DIR) -> Config:
    """An Alembic config for the scripts in `directory` (the shipped ones); env.py migrates `connection`."""
    config = Config()
    config.set_main_option("script_location", str(directory).replace("%", "%%"))
    config.set_main_option("file_template", "%%(rev)s")  # versions/0002_limits.py holds revision 0002_limits
    config.attributes["connection"] = connection
    return config


@functools.cache
def script_directory() -> ScriptDirectory:
    """The revision scripts, loaded once per process."""
    return ScriptDirectory.from_config(alembic_config())


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Write SQLModel's types into new revisions as the plain SQLAlchemy types they stand for."""
    if type_ == "type" and isinstance(obj, AutoString):
        length = obj.impl_instance.length
        return f"sa.String({length})" if length else "sa.String()"
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def context_options(dialect_name: str) -> dict[str, Any]:
    """What env.py and the schema comparison configure Alembic with."""
    return {
        "target_metadata": SQLModel.metadata,
        "render_as_batch": dialect_name == "sqlite",  # SQLite ALTERs go through table rebuilds
        "compare_type": True,  # SQLModel's AutoString and UTCDateTime compare as VARCHAR and timezone-aware DATETIME
        "render_item": render_item,
    }


# --- locking ---------------------------------------------------------------------


def _sqlite_writer(engine: Engine) -> Engine:
    """A one-connection engine on `engine`'s SQLite file whose transactions begin with BEGIN IMMEDIATE.

    IMMEDIATE takes SQLite's write lock at once, so a second process starting at the
    same time waits for the first one's migration and then finds the schema current.
    pysqlite's own transaction handling is off (`isolation_level=None`) so that the DDL
    joins the transaction too: the upgrade commits whole or not at all.
    """
    writer = create_engine(
        engine.url,
        poolclass=NullPool,
        connect_args={"check_same_thread": False, "timeout": SQLITE_LOCK_TIMEOUT_S, "isolation_level": None},
    )

    @event.listens_for(writer, "connect")
    def use_wal(dbapi_connection: Any, connection_record: Any) -> None:
        # As make_engine's connections do. A new file must be WAL before the lock is
        # taken: switching the journal mode needs a lock that a waiting process cannot get.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(writer, "begin")
    def begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return writer


@contextlib.contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the migration lock; it commits when the block ends.

    PostgreSQL: a transaction-level advisory lock (`pg_advisory_xact_lock`), released
    at commit or rollback; DDL is transactional there too. SQLite file: the database's
    write lock (BEGIN IMMEDIATE). In-memory SQLite has only one connection to lock out.
    """
    backend = engine.url.get_backend_name()
    if backend == "sqlite" and not is_in_memory(engine):
        writer = _sqlite_writer(engine)
        try:
            with writer.begin() as connection:
                yield connection
        finally:
            writer.dispose()
        return
    with engine.begin() as connection:
        if backend == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
        yield connection


# --- operations ------------------------------------------------------------------


def current_revision(bind: Engine | Connection) -> str | None:
    """The database's revision (from its `alembic_version` table); None if it has none."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return current_revision(connection)
    return MigrationContext.configure(bind).get_current_revision()


def is_known_revision(revision: str) -> bool:
    """Whether `revision` is one of the shipped revision scripts."""
    try:
        return script_directory().get_revision(revision) is not None
    except CommandError:
        return False


def upgrade(bind: Engine | Connection, revision: str = "head") -> None:
    """Run the revisions from the database's current one up to `revision`.

    Given an engine, this takes the migration lock; given a connection, the caller owns
    its transaction. `init_db` is what the gateway calls: it also handles databases made
    before migrations existed.
    """
    if isinstance(bind, Engine):
        with migration_connection(bind) as connection:
            upgrade(connection, revision)
        return
    command.upgrade(alembic_config(bind), revision)


def stamp(bind: Engine | Connection, revision: str) -> None:
    """Record `revision` as the database's revision without running anything."""
    if isinstance(bind, Engine):
        with migration_connection(bind) as connection:
            stamp(connection, revision)
        return
    command.stamp(alembic_config(bind), revision)


def schema_differences(connection: Connection) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the models; [] when they agree."""
    context = MigrationContext.configure(connection, opts=context_options(connection.dialect.name))
    return compare_metadata(context, SQLModel.metadata)


def upgrade_database(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to the head revision under the migration lock; return (before, after).

    - No `alembic_version` table but the TokenSense tables present: the database was made
      by `create_all` before migrations existed. It is stamped with the revision it
      matches (the head if it already agrees with the models, else `0001_initial`),
      then upgraded.
    - Empty (no TokenSense tables): every revision runs, from `0001_initial`.
    - Otherwise: the revisions after the recorded one run; none if it is the head.
    """
    with migration_connection(engine) as connection:
        return _bring_to_head(connection)


def _bring_to_head(connection: Connection) -> tuple[str | None, str]:
    before = MigrationContext.configure(connection).get_current_revision()
    script = script_directory()
    head = script.get_current_head()
    assert head is not None, "no migration scripts"
    if before == head:  # another process upgraded while this one waited for the lock
        return before, head
    if before is None:
        present = TOKENSENSE_TABLES & set(inspect(connection).get_table_names())
        if present == TOKENSENSE_TABLES:
            stamp(connection, head if not schema_differences(connection) else INITIAL_REVISION)
        elif present:
            raise SchemaVersionError(
                f"the database has the TokenSense tables {', '.join(sorted(present))} but not "
                f"{', '.join(sorted(TOKENSENSE_TABLES - present))}, and no migration history; "
                "point TokenSense at an empty database or one it created"
            )
    elif not is_known_revision(before):
        raise SchemaVersionError(
            f"the database is at schema revision {before!r}, which TokenSense {__version__} does not know "
            f"(its newest is {head!r}); a newer TokenSense upgraded it, so run that version or a later one"
        )
    upgrade(connection, "head")
    return before, head


# --- new revisions ---------------------------------------------------------------


def revision_id(message: str, *, after: str | None = None) -> str:
    """The id of the revision that follows `after` (default: the head): `0003_add_key_labels`."""
    number = int((after or head_revision()).split("_", 1)[0]) + 1
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40].strip("_") or "change"
    return f"{number:04d}_{slug}"


def new_revision(message: str, *, autogenerate: bool = False, directory: Path = MIGRATIONS_DIR) -> Path:
    """Write the next revision script, `versions/NNNN_<message>.py`, and return its path.

    With `autogenerate`, Alembic fills it with what the models have that a database at
    the head revision lacks (it builds that database in a temporary SQLite file). Read
    it before committing: autogenerate misses renames, data changes and server defaults.
    """
    rev_id = revision_id(message, after=head_revision(directory / "versions"))
    with contextlib.ExitStack() as stack:
        connection = None
        if autogenerate:
            folder = stack.enter_context(tempfile.TemporaryDirectory())
            engine = create_engine(f"sqlite:///{folder}/head.db", poolclass=NullPool)
            stack.callback(engine.dispose)
            connection = stack.enter_context(engine.begin())
            command.upgrade(alembic_config(connection, directory=directory), "head")
        made = command.revision(
            alembic_config(connection, directory=directory), message=message, rev_id=rev_id, autogenerate=autogenerate
        )
    head_revision.cache_clear()
    script_directory.cache_clear()
    script = made[0] if isinstance(made, list) else made
    assert isinstance(script, Script) and script.path
    return Path(script.path)

"""Alembic environment: runs the revisions on the connection that `tokensense.storage.migrate` passes in.

TokenSense configures Alembic in code (no alembic.ini): `migrate.alembic_config(connection)`
puts the connection in `config.attributes["connection"]`, inside a transaction that the
caller owns (and, on PostgreSQL and SQLite, holds the migration lock for). Without one,
the configured database (TOKENSENSE_DATABASE_URL, else SQLite in TOKENSENSE_HOME) is used.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from tokensense.storage import migrate

config = context.config


def run_offline(url: URL) -> None:
    """`--sql` mode: print the SQL instead of running it."""
    context.configure(url=url, literal_binds=True, **migrate.context_options(url.get_backend_name()))
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, **migrate.context_options(connection.dialect.name))
    with context.begin_transaction():  # a no-op when the caller's transaction is open
        context.run_migrations()


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    from tokensense.storage.db import make_engine, normalize_database_url

    url = config.get_main_option("sqlalchemy.url") or None
    if context.is_offline_mode():
        from tokensense.settings import get_settings

        run_offline(normalize_database_url(url or get_settings().effective_database_url))
        return
    engine = make_engine(url)
    try:
        with migrate.migration_connection(engine) as connection:
            run_on(connection)
    finally:
        engine.dispose()


run()

"""Whether the database can be used: reached, and for SQLite, written."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine


def database_problem(engine: Engine) -> str | None:
    """None if the database answers (and a SQLite file can be written); else a one-line reason."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database)
            folder = path.parent
            # WAL mode writes `-wal` and `-shm` files beside the database: the folder must be writable too.
            if not folder.is_dir():
                return f"the folder of the SQLite database does not exist: {folder}"
            if not os.access(folder, os.W_OK | os.X_OK):
                return f"the folder of the SQLite database is not writable: {folder}"
            if path.exists() and not os.access(path, os.R_OK | os.W_OK):
                return f"the SQLite database is not writable: {path}"
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()
        return f"{type(e).__name__}: {reason[0] if reason else ''}"
    return None

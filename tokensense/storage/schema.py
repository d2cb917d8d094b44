"""Where the schema's migrations live, the newest revision, and in-memory databases: cheap facts, no Alembic import.

`db` (every start) and `migrate` (only when the schema must change) both read these.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `tokensense usage --by` reads head_revision without importing SQLAlchemy (storage/lite.py)
    from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"

INITIAL_REVISION = "0001_initial"
"""The schema of TokenSense before migrations existed (what `create_all` made); pre-migration databases are stamped with it."""

REVISION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.py$")


@functools.cache
def head_revision(versions_dir: Path = VERSIONS_DIR) -> str:
    """The newest revision id, read from the file names alone (no Alembic import, no module loaded).

    Revisions are numbered `0001_...`, `0002_...` in one line of history, and each file
    is named after its revision id, so the head is the highest number. This keeps the
    check made at every start cheap; `tests/test_migrations.py` checks it against
    Alembic's own reading of the scripts.
    """
    names = sorted(p.name for p in versions_dir.iterdir() if REVISION_FILE.match(p.name))
    if not names:
        raise RuntimeError(f"no migration scripts in {versions_dir}")
    return names[-1].removesuffix(".py")


def is_in_memory(engine: Engine) -> bool:
    """Whether `engine` is an in-memory SQLite database (`sqlite://`, as the unit tests use)."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database or url.query.get("mode") == "memory"

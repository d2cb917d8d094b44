"""Grouped usage totals from the rollups through the database driver alone: `tokensense usage --by ... --since ...`
without SQLAlchemy, SQLModel or pydantic (they are most of the command's start-up; docs/analytics.md).

The same rows and the same arithmetic as `analytics.grouped_totals` (both build their SQL from
`cuts`: `window_parts`, `units_sql_text`), the same grouping and order; tests compare both on
random records, SQLite and PostgreSQL. Anything this path does not handle (a field only records
have, a URL it does not read, a schema that is not the newest, a database it cannot open) raises
`Unsupported`, and the command takes the full path, which also migrates and reports errors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tokensense.storage import cuts

ROLLUP_SUMS: tuple[str, ...] = ("requests", "input_tokens", "output_tokens", "cost_units", "unpriced")
"""What `tokensense usage --by` prints of each group."""


class Unsupported(Exception):
    """This path cannot answer; the full one (SQLAlchemy) will."""


def connect(url: str) -> tuple[Any, str]:
    """A DBAPI connection to `url` (a SQLAlchemy URL) and its dialect name; `Unsupported` for any URL this path
    does not read exactly as SQLAlchemy does, a SQLite file that does not exist yet, or a failed connection."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path == ":memory:" or any(c in path for c in "?%#") or path.startswith("file:"):
            raise Unsupported(url)
        if not os.path.isfile(path):
            raise Unsupported("no database file yet: the full path creates it")
        import sqlite3

        try:
            return sqlite3.connect(path, timeout=5.0, check_same_thread=False), "sqlite"
        except sqlite3.Error as e:
            raise Unsupported(str(e)) from e
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            conninfo = "postgresql://" + url.removeprefix(prefix)
            break
    else:
        raise Unsupported(url)
    try:
        import psycopg

        connection = psycopg.connect(conninfo, connect_timeout=10)
    except Exception as e:  # libpq refused the URL (an option only SQLAlchemy knows) or the server: full path
        raise Unsupported(str(e)) from e
    # A report sums up to a few hundred thousand rows: the planner's cost estimate passes jit_above_cost, and
    # compiling the expressions took 140 ms of a 860 ms query at 10 million records (EXPLAIN ANALYZE), more
    # than it saved. Off for this connection only.
    connection.execute("SET jit = off")
    return connection, "postgresql"


def schema_is_current(connection: Any) -> bool:
    """Whether the database is at the newest schema revision (else the full path upgrades it first)."""
    from tokensense.storage.schema import head_revision

    cursor = connection.cursor()
    try:
        cursor.execute("SELECT version_num FROM alembic_version")
        versions = [row[0] for row in cursor.fetchall()]
    except Exception:
        connection.rollback()
        return False
    return versions == [head_revision()]


def raw_horizon(connection: Any) -> int | None:
    """The retention horizon (epoch seconds): records before it were pruned; None if none were."""
    cursor = connection.cursor()
    cursor.execute("SELECT raw_before FROM usage_retention WHERE id = 1")
    row = cursor.fetchone()
    return None if row is None else int(row[0])


def _record_measures(dialect: str) -> dict[str, str]:
    """`rollups.record_measures_sql` for `ROLLUP_SUMS`, as SQL text over the `usage` table."""
    return {
        "requests": "1",
        "input_tokens": "usage.input_tokens",
        "output_tokens": "usage.output_tokens",
        "cost_units": cuts.units_sql_text("usage.cost_usd", str(cuts.COST_UNITS_PER_USD), dialect),
        "unpriced": "CASE WHEN usage.cost_usd IS NULL THEN 1 ELSE 0 END",
    }


def _bound(moment: datetime, dialect: str) -> Any:
    """`moment` as `usage.created_at` is compared with: SQLAlchemy's SQLite text, an aware UTC time otherwise."""
    utc = cuts.as_utc(moment)
    if dialect == "sqlite":
        return utc.replace(tzinfo=None).isoformat(" ", "microseconds")
    return utc


def _window_rows(cut: cuts.Cut, fields: Sequence[str], start: datetime | None, dialect: str) -> tuple[str, list[Any]]:
    """The SQL (a UNION ALL of records and rollup rows, columns `fields` then `ROLLUP_SUMS`) of `cut`'s window
    from `start`, and its parameters: `cuts.window_parts`, as `analytics` reads it."""
    mark = "?" if dialect == "sqlite" else "%s"
    params: list[Any] = []
    selects = []
    record_measures = _record_measures(dialect)
    for part in cuts.window_parts(cut, start):
        if part.grain is None:
            columns = [f"usage.{name} AS {name}" for name in fields]
            columns += [f"{record_measures[name]} AS {name}" for name in ROLLUP_SUMS]
            conditions = [f"usage.created_at >= {mark}"]
            params.append(_bound(part.low, dialect))  # type: ignore[arg-type]
            if part.high is not None:
                conditions.append(f"usage.created_at < {mark}")
                params.append(_bound(part.high, dialect))  # type: ignore[arg-type]
            selects.append(f"SELECT {', '.join(columns)} FROM usage WHERE {' AND '.join(conditions)}")
        else:
            conditions = [f"cut = {int(cut.id)}", f"grain = {int(part.grain)}"]
            if part.low is not None:
                conditions.append(f"bucket >= {int(part.low)}")  # type: ignore[arg-type]
            if part.high is not None:
                conditions.append(f"bucket < {int(part.high)}")  # type: ignore[arg-type]
            selects.append(
                f"SELECT {', '.join((*fields, *ROLLUP_SUMS))} FROM usage_rollup WHERE {' AND '.join(conditions)}"
            )
    return " UNION ALL ".join(selects), params


def _sums(row: Sequence[Any]) -> dict[str, Any]:
    requests, input_tokens, output_tokens, cost_units, unpriced = (int(v or 0) for v in row)
    return {
        "requests": requests,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": cost_units / cuts.COST_UNITS_PER_USD,
        "unpriced": unpriced,
    }


def grouped_report(
    connection: Any, dialect: str, *, fields: Sequence[str], since: datetime | None, limit: int | None = None
) -> tuple[list[dict[str, Any]], datetime | None]:
    """(`repo.query_usage(by=fields, since=since, limit=limit)`'s groups, the retention horizon) from the rollups.

    `Unsupported` when no cut has `fields` (execution ids are only in the records).
    """
    cut = cuts.cut_for(fields)
    if cut is None or not fields:
        raise Unsupported(f"no rollup cut has {', '.join(fields)}")
    horizon = raw_horizon(connection)
    start = None if since is None else cuts.effective_start(since, horizon)
    rows, params = _window_rows(cut, fields, start, dialect)
    keys = ", ".join(fields)
    sums = ", ".join(f"COALESCE(SUM({name}), 0)" for name in ROLLUP_SUMS)
    sql = (
        f"SELECT {keys}, {sums} FROM ({rows}) AS parts GROUP BY {keys} "
        f"ORDER BY SUM(cost_units) DESC, SUM(requests) DESC, {keys}"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    cursor = connection.cursor()
    cursor.execute(sql, params)
    width = len(fields)
    out = [{**dict(zip(fields, row[:width], strict=True)), **_sums(row[width:])} for row in cursor.fetchall()]
    return out, None if horizon is None else cuts.from_epoch(horizon)


def totals(connection: Any, dialect: str, *, since: datetime | None) -> dict[str, Any]:
    """`analytics.usage_totals(since=since)`'s requests, tokens, cost and unpriced count, from the `total` cut."""
    start = None if since is None else cuts.effective_start(since, raw_horizon(connection))
    rows, params = _window_rows(cuts.CUTS[0], (), start, dialect)
    sums = ", ".join(f"COALESCE(SUM({name}), 0)" for name in ROLLUP_SUMS)
    cursor = connection.cursor()
    cursor.execute(f"SELECT {sums} FROM ({rows}) AS parts", params)
    return _sums(cursor.fetchone())


# --- record listings (`tokensense usage` without --by) -----------------------------------------------

USAGE_COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "request_id",
    "attempt",
    "key_id",
    "key_name",
    "provider",
    "model",
    "endpoint",
    "status",
    "error",
    "stream",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "images",
    "characters",
    "seconds",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "workflow",
    "step",
    "execution_id",
    "source",
    "project",
    "details",
)
"""`repo.USAGE_RECORD_FIELDS` but `unpriced` (tests/test_lite_reports.py checks they agree)."""


def _iso_utc(value: Any) -> str:
    """`repo.iso_utc` of a `created_at` as the driver returns it (SQLite: SQLAlchemy's text, PostgreSQL: a datetime)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return cuts.as_utc(moment).isoformat()


def records(connection: Any, dialect: str, *, since: datetime | None, limit: int | None = None) -> list[dict[str, Any]]:
    """`repo.query_usage(since=since, limit=limit)` without `by`: one dict per record, newest first, the same
    values and types (`created_at` ISO 8601 in UTC, `stream` a bool, `details` parsed, `unpriced`)."""
    import json

    sql = f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage"
    params: list[Any] = []
    if since is not None:
        sql += " WHERE created_at >= " + ("?" if dialect == "sqlite" else "%s")
        params.append(_bound(since, dialect))
    sql += " ORDER BY created_at DESC, id DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    cursor = connection.cursor()
    cursor.execute(sql, params)
    out = []
    for row in cursor.fetchall():
        record = dict(zip(USAGE_COLUMNS, row, strict=True))
        record["created_at"] = _iso_utc(record["created_at"])
        record["stream"] = bool(record["stream"])
        if isinstance(record["details"], str):
            record["details"] = json.loads(record["details"])
        for name in ("seconds", "cost_usd", "latency_ms", "ttft_ms"):
            if record[name] is not None:
                record[name] = float(record[name])
        record["unpriced"] = record["cost_usd"] is None
        out.append(record)
    return out

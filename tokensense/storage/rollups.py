"""Usage rollups: per-minute and per-hour sums of the usage records, kept as records are written (docs/analytics.md).

Every batch of records written by `repo.record_usages` adds its sums to the rollup rows
of its buckets in the same transaction, so the rollups always hold exactly what the
committed records hold. A row is one time bucket (`grain` 60 or 3600 seconds) of one
*cut*: a set of attribution fields the records are grouped by. Small cuts (by key, by
workflow and step, by model, ...) serve the dashboard and have minute and hour rows; the
`all` cut groups by every attribution field but the execution id and has hour rows only
(it serves any `tokensense usage --by` combination).

Sums are integers, so that they do not depend on the order batches arrive in (several
instances add to the same rows): cost in units of 1e-10 USD (the precision costs are
priced to), latencies and media seconds in microseconds. Reports over raw records sum
the same integers, so both give identical numbers.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    case,
    cast,
    func,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from tokensense.storage.cuts import (
    COST_UNITS_PER_USD,
    CUTS,
    DAY,
    DAY_CUTS,
    DIMS,
    EPOCH,
    HOUR,
    MEASURES,
    MICROS,
    MINUTE,
    MINUTE_CUTS,
    Cut,
    bucket_sql_text,
    cut_for,
    epoch_seconds,
    from_epoch,
    to_units,
    units_sql_text,
)
from tokensense.storage.models import Usage, UsageRollup

__all__ = [  # the cuts and time helpers live in cuts.py (no SQLAlchemy there); importers keep reading them here
    "COST_UNITS_PER_USD", "CUTS", "DAY", "DAY_CUTS", "DIMS", "EPOCH", "HOUR", "MEASURES", "MICROS", "MINUTE", "MINUTE_CUTS",
    "ROLLUP_COLUMNS", "Cut", "add_to_rollups", "bucket_sql", "cut_for", "dims_key", "dims_key_sql", "epoch_seconds",
    "from_epoch", "rebuild_rollups", "record_measures", "record_measures_sql", "rollup_deltas", "rollup_select",
    "to_units", "units_sql",
]


class _Units(FunctionElement[int]):
    """`to_units(column, scale)` in SQL: the same IEEE double arithmetic, then floor."""

    type = BigInteger()
    inherit_cache = True
    name = "units"


@compiles(_Units)
def _units_default(element: _Units, compiler: Any, **kw: Any) -> str:
    value, scale = (compiler.process(clause, **kw) for clause in element.clauses)
    return units_sql_text(value, scale, compiler.dialect.name)


def units_sql(column: Any, scale: int) -> ColumnElement[int]:
    return _Units(column, literal(scale, BigInteger()))  # type: ignore[return-value]


def record_measures_sql() -> dict[str, ColumnElement[Any]]:
    """One usage record's contribution to each of `MEASURES`, as SQL over the `usage` table."""
    c = Usage.__table__.c  # type: ignore[attr-defined]
    return {
        "requests": literal(1, Integer()),
        "errors": case((c.status >= 400, 1), else_=0),
        "unpriced": case((c.cost_usd.is_(None), 1), else_=0),
        **{name: c[name] for name in ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens",
                                      "reasoning_tokens", "images", "characters")},
        "seconds_us": units_sql(c.seconds, MICROS),
        "cost_units": units_sql(c.cost_usd, COST_UNITS_PER_USD),
        "latency_count": case((c.latency_ms.is_(None), 0), else_=1),
        "latency_us": units_sql(c.latency_ms, 1000),
        "ttft_count": case((c.ttft_ms.is_(None), 0), else_=1),
        "ttft_us": units_sql(c.ttft_ms, 1000),
    }


def record_measures(row: Mapping[str, Any]) -> tuple[int, ...]:
    """One record's (a dict of usage columns) contribution to each of `MEASURES`."""
    cost = row["cost_usd"]
    latency = row["latency_ms"]
    ttft = row["ttft_ms"]
    return (
        1,
        1 if row["status"] >= 400 else 0,
        1 if cost is None else 0,
        row["input_tokens"],
        row["output_tokens"],
        row["cached_input_tokens"],
        row["cache_write_tokens"],
        row["reasoning_tokens"],
        row["images"],
        row["characters"],
        to_units(row["seconds"], MICROS),
        to_units(cost, COST_UNITS_PER_USD),
        0 if latency is None else 1,
        to_units(latency, 1000),
        0 if ttft is None else 1,
        to_units(ttft, 1000),
    )


# --- time buckets ------------------------------------------------------------------


class _Bucket(FunctionElement[int]):
    """The start (UTC epoch seconds) of the `grain`-second bucket a `usage.created_at` falls in."""

    type = BigInteger()
    inherit_cache = True
    name = "bucket_start"


@compiles(_Bucket)
def _bucket_default(element: _Bucket, compiler: Any, **kw: Any) -> str:
    created, grain = (compiler.process(clause, **kw) for clause in element.clauses)
    return bucket_sql_text(created, grain, compiler.dialect.name)


def bucket_sql(created: Any, grain: int) -> ColumnElement[int]:
    return _Bucket(created, literal(grain, Integer()))  # type: ignore[return-value]


# --- the key of a rollup row -------------------------------------------------------


def dims_key(values: Sequence[Any]) -> str:
    """The values of a cut's fields in one string: each `len:value`, `~` for NULL (so NULL is not '')."""
    parts = []
    for value in values:
        if value is None:
            parts.append("~")
        else:
            text = str(value)
            parts.append(f"{len(text)}:{text}")
    return "".join(parts)


def dims_key_sql(columns: Sequence[Any]) -> ColumnElement[str]:
    """`dims_key` in SQL (LENGTH counts characters in SQLite and PostgreSQL, as `len` does)."""
    if not columns:
        return literal("", String())  # type: ignore[return-value]
    parts: list[Any] = []
    for column in columns:
        text = cast(column, String())
        parts.append(func.coalesce(cast(func.length(text), String()) + literal(":") + text, literal("~")))
    key: Any = parts[0]
    for part in parts[1:]:
        key = key + part
    return key  # type: ignore[no-any-return]


# --- adding records ------------------------------------------------------------------

_DIM_GETTER = operator.itemgetter(*DIMS)


def _picker(cut: Cut) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """From the values of every field in `DIMS` order, those of `cut`'s fields (as a tuple)."""
    positions = [DIMS.index(name) for name in cut.dims]
    if not positions:
        return lambda values: ()
    if len(positions) == 1:
        (position,) = positions
        return lambda values: (values[position],)
    return operator.itemgetter(*positions)  # type: ignore[return-value]


_CUT_PLAN = [(cut.id, cut.dims, _picker(cut), cut.minutes) for cut in CUTS]


def rollup_deltas(rows: Iterable[Mapping[str, Any]], *, sign: int = 1,
                  removed: Iterable[Mapping[str, Any]] = ()) -> list[tuple[Any, ...]]:
    """The rollup rows to add for `rows` (dicts of usage columns), minus those of `removed`, sorted by primary key:
    tuples of `ROLLUP_COLUMNS`.

    The sort gives every writer the same lock order on PostgreSQL: instances adding
    to the same rows at once wait for each other but never deadlock. This runs in the
    writer thread, which shares the interpreter with the proxy's loop: records are
    first summed per minute and combination of fields, then each cut from those sums.
    """
    add = operator.add
    per_minute: dict[tuple[Any, ...], list[int]] = {}
    for records, factor in ((rows, sign), (removed, -sign)):
        for row in records:
            second = epoch_seconds(row["created_at"])
            key = (second - second % MINUTE, _DIM_GETTER(row))
            measures = record_measures(row)
            if factor != 1:
                measures = tuple(factor * m for m in measures)
            sums = per_minute.get(key)
            per_minute[key] = list(measures) if sums is None else list(map(add, sums, measures))
    # Minute rows of the small cuts and hour rows of `all` from the per-minute sums; the small cuts'
    # hour rows from their (fewer) minute rows.
    out: dict[tuple[Any, ...], list[int]] = {}
    for (minute, values), sums in per_minute.items():  # type: ignore[misc]
        for cut_id, _dims, pick, minutes in _CUT_PLAN:
            row_key = (cut_id, MINUTE, minute, pick(values)) if minutes else \
                (cut_id, HOUR, minute - minute % HOUR, pick(values))
            found = out.get(row_key)
            out[row_key] = sums if found is None else list(map(add, found, sums))
    hours: dict[tuple[Any, ...], list[int]] = {}
    for (cut_id, grain, bucket, cut_values), sums in out.items():
        if grain == MINUTE:
            row_key = (cut_id, HOUR, bucket - bucket % HOUR, cut_values)
            found = hours.get(row_key)
            hours[row_key] = sums if found is None else list(map(add, found, sums))
    out.update(hours)
    # Day rows of the cuts that have them, from their hour rows.
    days: dict[tuple[Any, ...], list[int]] = {}
    for (cut_id, grain, bucket, cut_values), sums in out.items():
        if grain == HOUR and cut_id in DAY_CUTS:
            row_key = (cut_id, DAY, bucket - bucket % DAY, cut_values)
            found = days.get(row_key)
            days[row_key] = sums if found is None else list(map(add, found, sums))
    out.update(days)
    keys: dict[tuple[Any, ...], str] = {}
    deltas = []
    for (cut_id, grain, bucket, cut_values), sums in out.items():
        if not any(sums):
            continue  # a change that cancels out (a record re-priced at the same cost)
        spelled = keys.get(cut_values)
        if spelled is None:
            spelled = keys[cut_values] = dims_key(cut_values)
        fields = list(_NO_FIELDS)
        for position, value in zip(_POSITIONS[cut_id], cut_values, strict=True):
            fields[position] = value
        deltas.append((cut_id, grain, bucket, spelled, *fields, *sums))
    deltas.sort(key=operator.itemgetter(0, 1, 2, 3))
    return deltas


_NO_FIELDS = (None,) * len(DIMS)
_POSITIONS = {cut.id: [DIMS.index(name) for name in cut.dims] for cut in CUTS}
ROLLUP_COLUMNS: tuple[str, ...] = ("cut", "grain", "bucket", "dims_key", *DIMS, *MEASURES)
"""The order of the values in the tuples `rollup_deltas` returns."""


@functools.cache
def _upsert_sql(dialect: str, cut_id: int | None = None, measures: tuple[int, ...] | None = None) -> str:
    """INSERT ... ON CONFLICT DO UPDATE adding to the row (the same text for SQLite and PostgreSQL but the marks).

    With `cut_id`: only that cut's fields are parameters, and of `MEASURES` only those at the positions
    `measures` (the others are 0 in every row: literal zeros, not added). Sent with the driver's executemany:
    SQLAlchemy's per-row parameter handling cost more than the database's work for these narrow rows, and
    so did the driver's for 30 parameters a row, most of them NULL or 0.
    """
    if dialect not in ("sqlite", "postgresql"):
        raise NotImplementedError(f"usage rollups need SQLite or PostgreSQL, not {dialect}")
    mark = "?" if dialect == "sqlite" else "%s"
    if cut_id is None:
        names, values, added = ROLLUP_COLUMNS, [mark] * len(ROLLUP_COLUMNS), MEASURES
    else:
        kept = measures if measures is not None else tuple(range(len(MEASURES)))
        dims = tuple(DIMS[position] for position in _POSITIONS[cut_id])
        names = ("cut", "grain", "bucket", "dims_key", *dims, *MEASURES)
        values = [mark] * (4 + len(dims)) + [mark if i in kept else "0" for i in range(len(MEASURES))]
        added = tuple(MEASURES[i] for i in kept)
    adds = ", ".join(f"{name} = usage_rollup.{name} + excluded.{name}" for name in added)
    return (f"INSERT INTO usage_rollup ({', '.join(names)}) VALUES ({', '.join(values)}) "
            f"ON CONFLICT (cut, grain, bucket, dims_key) DO UPDATE SET {adds}")


_FIRST_MEASURE = 4 + len(DIMS)


def _pg_array(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal of `values` (ints, strings, None), cast in SQL: psycopg's own array dumping
    costs a regular expression per element in Python, more than the upsert itself."""
    parts = []
    for value in values:
        if value is None:
            parts.append("NULL")
        elif isinstance(value, int):
            parts.append(str(value))
        else:
            parts.append('"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


@functools.cache
def _unnest_upsert_sql(cut_id: int, measures: tuple[int, ...]) -> str:
    """`_upsert_sql("postgresql", cut_id, measures)` with its rows given as one array per column (`unnest`), taken
    in the arrays' order (the sorted order: the same lock order for every writer)."""
    dims = tuple(DIMS[position] for position in _POSITIONS[cut_id])
    typed = [("cut", "smallint"), ("grain", "integer"), ("bucket", "bigint"), ("dims_key", "text")]
    typed += [(name, "integer" if name == "status" else "text") for name in dims]
    typed += [(MEASURES[i], "bigint") for i in measures]
    arrays = ", ".join(f"%s::text::{kind}[]" for _, kind in typed)
    aliases = ", ".join(name for name, _ in typed)
    picked = [*(name for name, _ in typed[: 4 + len(dims)]), *(name if i in measures else "0"
                                                                for i, name in enumerate(MEASURES))]
    adds = ", ".join(f"{MEASURES[i]} = usage_rollup.{MEASURES[i]} + excluded.{MEASURES[i]}" for i in measures)
    return (f"INSERT INTO usage_rollup (cut, grain, bucket, dims_key, {', '.join((*dims, *MEASURES))}) "
            f"SELECT {', '.join(picked)} FROM unnest({arrays}) WITH ORDINALITY AS rows ({aliases}, n) ORDER BY n "
            f"ON CONFLICT (cut, grain, bucket, dims_key) DO UPDATE SET {adds}")


def add_to_rollups(connection: Connection, rows: Iterable[Mapping[str, Any]], *, sign: int = 1,
                   removed: Iterable[Mapping[str, Any]] = ()) -> int:
    """Add the records `rows` to their rollup rows (`sign=-1`: take them away), and take away `removed`
    (a record's old version when it changes); how many rollup rows were touched.

    Call it in the transaction that writes the records, with only the records that
    transaction really inserted (or changed), in one call: one sorted pass of upserts
    (one executemany per cut, in the sorted order, with only the cut's fields and the
    measures some of its rows have: chat calls have no images, characters or media seconds).
    """
    deltas = rollup_deltas(rows, sign=sign, removed=removed)
    dialect = connection.dialect.name
    start = 0
    while start < len(deltas):
        cut_id = deltas[start][0]
        end = start
        while end < len(deltas) and deltas[end][0] == cut_id:
            end += 1
        group = deltas[start:end]
        kept = tuple(i for i in range(len(MEASURES)) if i == 0 or any(row[_FIRST_MEASURE + i] for row in group))
        picks = [4 + position for position in _POSITIONS[cut_id]] + [_FIRST_MEASURE + i for i in kept]
        if dialect == "postgresql":
            # One statement per cut over arrays (one a column): executemany's pipeline cost about 20 us of the
            # writer thread's CPU per row in psycopg, 2 to 3 rows a record; `unnest` keeps the sorted order.
            columns = zip(*((*row[:4], *(row[i] for i in picks)) for row in group), strict=True)
            connection.exec_driver_sql(_unnest_upsert_sql(cut_id, kept), tuple(map(_pg_array, columns)))
        else:
            params = [(*row[:4], *(row[i] for i in picks)) for row in group]
            connection.exec_driver_sql(_upsert_sql(dialect, cut_id, kept), params)
        start = end
    return len(deltas)


# --- building rollups from records in bulk ------------------------------------------


def rollup_select(cut: Cut, grain: int, *, where: Sequence[ColumnElement[bool]] = ()) -> Any:
    """SELECT the rollup rows of `cut` and `grain` from the usage records (GROUP BY in the database)."""
    table = Usage.__table__  # type: ignore[attr-defined]
    bucket = bucket_sql(table.c.created_at, grain)
    dims = [table.c[name] for name in cut.dims]
    measures = record_measures_sql()
    sums = [func.coalesce(func.sum(measures[name]), 0).label(name) for name in MEASURES]
    return (
        select(literal(cut.id, Integer()).label("cut"), literal(grain, Integer()).label("grain"), bucket.label("bucket"),
               dims_key_sql(dims).label("dims_key"), *dims, *sums)
        .where(*where)
        .group_by(bucket, *dims)
    )


def rebuild_rollups(connection: Connection) -> int:
    """Replace every rollup row by sums of the usage records (bulk loads, tests); returns the rows written.

    The records are read once, into a temporary table of per-minute sums by every field
    (the `all` cut at minute grain); each cut's rows are summed from it. Not for a live
    database: records pruned by retention exist only in the rollups, and a writer adding
    to a row while it is rebuilt would be lost.
    """
    table = UsageRollup.__table__  # type: ignore[attr-defined]
    connection.execute(table.delete())
    staged = rollup_select(CUTS[-1], MINUTE).with_only_columns(
        *(column for column in rollup_select(CUTS[-1], MINUTE).selected_columns
          if column.name not in ("cut", "grain", "dims_key")))
    sql = str(staged.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
    connection.execute(text("DROP TABLE IF EXISTS rollup_stage"))
    connection.execute(text("CREATE TEMPORARY TABLE rollup_stage AS " + sql.replace(":", "\\:")))
    stage = Table("rollup_stage", MetaData(), Column("bucket", BigInteger), *(Column(name) for name in DIMS),
                  *(Column(name, BigInteger) for name in MEASURES))
    written = 0
    for cut in CUTS:
        dims = [stage.c[name] for name in cut.dims]
        for grain in (*((MINUTE,) if cut.minutes else ()), HOUR, *((DAY,) if cut.days else ())):
            bucket = stage.c.bucket if grain == MINUTE else stage.c.bucket - stage.c.bucket % grain
            query = (
                select(literal(cut.id, Integer()), literal(grain, Integer()), bucket, dims_key_sql(dims), *dims,
                       *(func.sum(stage.c[name]) for name in MEASURES))
                .group_by(bucket, *dims)
            )
            columns = ["cut", "grain", "bucket", "dims_key", *cut.dims, *MEASURES]
            insert_rows = insert(table).from_select(columns, query).execution_options(preserve_rowcount=True)
            written += max(connection.execute(insert_rows).rowcount or 0, 0)
    connection.execute(text("DROP TABLE rollup_stage"))
    return written

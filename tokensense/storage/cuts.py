"""What the usage rollups hold and which rows a window reads: plain Python, no SQLAlchemy (docs/analytics.md).

Shared by `rollups` and `analytics` (SQLAlchemy) and by `lite`, the driver-only query path
of `tokensense usage --by` (which must start without importing SQLAlchemy): the cuts, the
integer arithmetic spelled in SQL, and `window_parts`, the one place that decides which
records and rollup rows make up a window. Both query paths build their SQL from these, so
they read the same rows with the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

COST_UNITS_PER_USD = 10**10
"""Rollups count cost in 1e-10 USD: `call_cost` rounds costs to 10 decimals."""
MICROS = 10**6

MINUTE = 60
HOUR = 3600
DAY = 86_400
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)

DIMS: tuple[str, ...] = (
    "key_id",
    "key_name",
    "project",
    "workflow",
    "step",
    "source",
    "provider",
    "model",
    "endpoint",
    "status",
)
"""The attribution fields rollups can group by (every one a usage record has but the execution id)."""

MEASURES: tuple[str, ...] = (
    "requests",
    "errors",
    "unpriced",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "images",
    "characters",
    "seconds_us",
    "cost_units",
    "latency_count",
    "latency_us",
    "ttft_count",
    "ttft_us",
)
"""The sums a rollup row holds, in this order everywhere."""


class Cut(NamedTuple):
    """A set of fields rollup rows are grouped by, and the grains it has besides hour rows."""

    id: int
    name: str
    dims: tuple[str, ...]
    minutes: bool
    """Minute rows: a window's partial first hour without reading an hour of records."""
    days: bool = False
    """Day rows (UTC days): a long window reads one row per combination and day, not per hour."""


CUTS: tuple[Cut, ...] = (
    Cut(0, "total", (), True),  # header totals, sparkline, change marker
    Cut(1, "project", ("project",), True),
    Cut(2, "source", ("source",), True),
    Cut(3, "key", ("key_id", "key_name"), True),  # budgets, by key
    Cut(4, "model", ("provider", "model"), True),
    Cut(5, "workflow", ("workflow", "step"), True),  # by workflow, a workflow's steps
    # by status, endpoint, and pairs of source, provider, model, endpoint, status (migration 0014)
    Cut(6, "outcome", ("source", "provider", "model", "endpoint", "status"), False, days=True),
    # by model and project, workflow and model, ... (migration 0014)
    Cut(7, "attribution", ("project", "workflow", "step", "provider", "model"), False, days=True),
    # any other grouping or filter: hour and day rows; a window's partial first hour from records
    Cut(9, "all", DIMS, False, days=True),
)
"""Smallest first: a query reads the first cut that has every field it groups or filters by."""

MINUTE_CUTS: tuple[int, ...] = tuple(cut.id for cut in CUTS if cut.minutes)
DAY_CUTS: tuple[int, ...] = tuple(cut.id for cut in CUTS if cut.days)


def cut_for(fields: Iterable[str]) -> Cut | None:
    """The smallest cut that has every one of `fields`; None when only raw records have them (execution_id)."""
    wanted = set(fields)
    for cut in CUTS:
        if wanted <= set(cut.dims):
            return cut
    return None


# --- integer sums ----------------------------------------------------------------


def to_units(value: float | None, scale: int) -> int:
    """`value * scale` rounded half away from zero, as `units_sql_text` computes it in SQL (0 for None)."""
    if value is None:
        return 0
    if value < 0:
        return -math.floor(-value * scale + 0.5)
    return math.floor(value * scale + 0.5)


def units_sql_text(value: str, scale: str, dialect: str) -> str:
    """`to_units(value, scale)` in SQL over the SQL expressions `value` and `scale`: the same IEEE double
    arithmetic, then floor (SQLite: CAST truncates toward zero, a floor for the non-negative operands; FLOOR
    is not always compiled in)."""
    if dialect == "sqlite":
        return (
            f"CASE WHEN {value} IS NULL THEN 0 WHEN {value} < 0 THEN -CAST(-{value} * {scale} + 0.5 AS INTEGER) "
            f"ELSE CAST({value} * {scale} + 0.5 AS INTEGER) END"
        )
    return (
        f"CASE WHEN {value} IS NULL THEN 0 WHEN {value} < 0 THEN -CAST(FLOOR(-{value} * {scale} + 0.5) AS BIGINT) "
        f"ELSE CAST(FLOOR({value} * {scale} + 0.5) AS BIGINT) END"
    )


def bucket_sql_text(created: str, grain: str, dialect: str) -> str:
    """The start (UTC epoch seconds) of the `grain`-second bucket the `usage.created_at` expression falls in."""
    if dialect == "sqlite":
        # created_at is stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC). strftime('%s') would round
        # 59.9999 seconds up into the next minute: cut the text at the minute instead.
        minute = f"CAST(strftime('%s', substr({created}, 1, 16) || ':00') AS INTEGER)"
        return f"({minute} - {minute} % {grain})"
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {created}) / {grain}) * {grain} AS BIGINT)"


# --- time -----------------------------------------------------------------------------


def as_utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def epoch_seconds(moment: datetime) -> int:
    """Whole UTC seconds since 1970 (floor); a naive `moment` is UTC. Integer arithmetic: no float rounding."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // _SECOND


def from_epoch(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


def effective_start(since: datetime, horizon: int | None) -> datetime:
    """`since` (aware UTC), or its whole hour when records before it were pruned (`horizon`, epoch seconds)."""
    second = epoch_seconds(since)
    if horizon is not None and second < horizon:
        return from_epoch(second - second % HOUR)
    return as_utc(since)


# --- which rows make up a window ----------------------------------------------------------


class Part(NamedTuple):
    """One piece of a window: records in [low, high) (`grain` None; datetimes, `high` None: no end), or the
    rollup rows of one grain with `low <= bucket < high` (epoch seconds; None: unbounded)."""

    grain: int | None
    low: datetime | int | None
    high: datetime | int | None


def _ceil(second: int, partial: bool, grain: int) -> int:
    """The first bucket boundary at or after the moment whose floor in seconds is `second` (`partial`: it has
    microseconds past that second)."""
    if second % grain == 0 and not partial:
        return second
    return second - second % grain + grain


def window_parts(cut: Cut, since: datetime | None, *, grid: int | None = None) -> list[Part]:
    """The records and rollup rows of `cut` whose sums are the window starting at `since` (already moved to its
    `effective_start`; None: everything), oldest first.

    - Hour rows for the whole hours of the window; for a cut with day rows (and no `grid`),
      hour rows up to the next UTC midnight and day rows from there.
    - For a window that starts inside an hour: minute rows for its whole minutes up to the
      next hour, and the records of the partial first minute (at most a minute of records).
      A cut without minute rows (`all`): the records of the partial first hour.
    - `grid=MINUTE` (a sparkline with buckets under an hour): minute rows to the end (records
      to the end for a cut without minute rows); `grid=HOUR`: no day rows.
    """
    days = cut.days and grid is None
    if since is None:
        return [Part(DAY if days else HOUR, None, None)]
    second = epoch_seconds(since)
    partial = as_utc(since).microsecond != 0
    parts: list[Part] = []
    if cut.minutes:
        minute = _ceil(second, partial, MINUTE)
        if minute > second or partial:
            parts.append(Part(None, since, from_epoch(minute)))
        if grid == MINUTE:
            parts.append(Part(MINUTE, minute, None))
            return parts
        hour = _ceil(minute, False, HOUR)
        if hour > minute:
            parts.append(Part(MINUTE, minute, hour))
    elif grid == MINUTE:
        return [Part(None, since, None)]
    else:
        hour = _ceil(second, partial, HOUR)
        if hour > second or partial:
            parts.append(Part(None, since, from_epoch(hour)))
    if days:
        day = _ceil(hour, False, DAY)
        if day > hour:
            parts.append(Part(HOUR, hour, day))
        parts.append(Part(DAY, day, None))
    else:
        parts.append(Part(HOUR, hour, None))
    return parts


# --- what `tokensense usage --by` groups by -------------------------------------------------

USAGE_GROUP_FIELDS: tuple[str, ...] = (
    "workflow",
    "step",
    "execution_id",
    "source",
    "project",
    "model",
    "provider",
    "key_name",
    "endpoint",
    "status",
    "batch",  # the batch job a record's line belongs to (its details' `batch_id`; read from the records)
)
USAGE_GROUP_ALIASES: dict[str, str] = {"key": "key_name"}

GROUP_FIELDS: tuple[str, ...] = (
    "workflow",
    "step",
    "execution_id",
    "model",
    "provider",
    "project",
    "source",
    "key_name",
)
"""The usage fields the dashboard (and `tokensense report`) group and filter spend by (`analytics.GROUP_FIELDS`)."""


def normalize_group_fields(by: Iterable[str]) -> list[str]:
    """The usage fields to group by, aliases resolved; `ValueError` naming the allowed ones."""
    fields: list[str] = []
    for raw in by:
        name = raw.strip().lower()
        name = USAGE_GROUP_ALIASES.get(name, name)
        if name not in USAGE_GROUP_FIELDS:
            raise ValueError(
                f"cannot group usage by {raw!r}; allowed fields: {', '.join(USAGE_GROUP_FIELDS)} (and key)"
            )
        if name not in fields:
            fields.append(name)
    if not fields:
        raise ValueError(f"give at least one field to group by: {', '.join(USAGE_GROUP_FIELDS)}")
    return fields

"""Spend analytics: totals, groupings, a time series and budgets from the usage rollups; the latest calls from the records.

Reports read the rollups (`tokensense.storage.rollups`, docs/analytics.md): hour rows for
the whole hours of a window, minute rows and at most a minute of records for its start.
Only what no rollup holds reads records: the request log, execution ids, record listings.
Every function can also read the records alone (`from_records=True`): the reference the
rollups are tested against.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import case, func, union_all
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Session, col, select

from tokensense.storage import cuts
from tokensense.storage.cuts import GROUP_FIELDS as GROUP_FIELDS  # defined there: `tokensense report` (no SQLAlchemy)
from tokensense.storage.cuts import window_parts
from tokensense.storage.models import ApiKey, Usage, UsageRetention, UsageRollup
from tokensense.storage.rollups import (
    COST_UNITS_PER_USD,
    CUTS,
    DIMS,
    HOUR,
    MEASURES,
    MINUTE,
    Cut,
    bucket_sql,
    cut_for,
    epoch_seconds,
    from_epoch,
    record_measures_sql,
)

REPORT_FIELDS: tuple[str, ...] = (*DIMS, "execution_id", "batch")
"""Every field a report can group or filter by (`tokensense usage --by`): the rollups', the execution id and the
batch job (both read from the records)."""

RECORD_DETAILS: dict[str, str] = {"batch": "batch_id"}
"""Report fields kept in the records' `details` (not a column of their own), by their key there."""


def _record_column(table: Any, name: str) -> Any:
    """A record's value of the report field `name`: its column, or its key in `details` (a string or NULL)."""
    key = RECORD_DETAILS.get(name)
    return table.c[name] if key is None else table.c.details[key].as_string()

_ROLLUP: Any = UsageRollup.__table__  # type: ignore[attr-defined]
_USAGE: Any = Usage.__table__  # type: ignore[attr-defined]

DRILL_PATH: tuple[str, ...] = ("workflow", "step", "execution_id")
"""Workflow → its steps → a step's executions: each level filters on the ones above."""

WINDOWS: dict[str, timedelta | None] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "all": None,
}
"""The time windows the dashboard offers; `None` means since the first record."""

BUDGET_PERIODS: tuple[str, ...] = ("total", "monthly", "daily")

Filters = Mapping[str, str | None]
"""Field → value to match exactly; a `None` value matches records without that field."""


class Totals(NamedTuple):
    """Spend and volume of the records in a window."""

    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    errors: int
    """Records whose status is 400 or above (upstream errors and TokenSense's own refusals)."""
    unpriced: int = 0
    """Records no price was known for (cost NULL: not in `cost_usd`)."""

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class GroupRow(NamedTuple):
    """One group of records (one workflow, one model, ...) with what it used."""

    value: str | None
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    share: float
    """This group's part of the cost of all groups matching the same filters (0..1); 0 when nothing cost anything."""

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class SpendSeries(NamedTuple):
    """Spend per equal time bucket, oldest first; bucket `i` starts at `start + i * bucket`."""

    start: datetime
    bucket: timedelta
    values: tuple[float, ...]


class KeyBudget(NamedTuple):
    """What a key spent in its budget period, against its budget."""

    key_id: str
    name: str
    budget_usd: float | None
    budget_period: str
    period_start: datetime | None
    """UTC start of the period; `None` for a `total` budget."""
    spent_usd: float

    @property
    def fraction(self) -> float | None:
        """Spent / budget (may exceed 1); `None` when the key has no budget."""
        if self.budget_usd is None:
            return None
        if self.budget_usd <= 0:
            return 1.0 if self.spent_usd > 0 else 0.0
        return self.spent_usd / self.budget_usd


class ChangeMarker(NamedTuple):
    """Cheap fingerprint of the tables: if it is unchanged, so are the dashboard's numbers
    (apart from the window sliding forward in time)."""

    usage_max_id: int
    usage_count: int
    key_count: int
    keys_revoked: int
    keys_updated_at: datetime | None
    """When a key's limits last changed (a budget raised, ...)."""
    usage_cost_units: int = 0
    """The rollups' total cost (1e-10 USD): moves when records are re-priced."""
    raw_before: int | None = None
    """The retention horizon (epoch seconds): moves when records are pruned."""


def as_utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_CREATED_AT_TYPE: Any = Usage.__table__.c.created_at.type  # type: ignore[attr-defined]


def _stored(moment: datetime) -> datetime:
    """`moment` in the form `usage.created_at` is bound with: aware UTC for a
    timezone-aware column (SQLModel's default for `datetime`), naive UTC otherwise."""
    utc = as_utc(moment)
    return utc if _CREATED_AT_TYPE.timezone else utc.replace(tzinfo=None)


def window_start(window: str, *, now: datetime) -> datetime | None:
    """Start of `window` (one of `WINDOWS`) ending at `now`; `None` for `all`."""
    try:
        span = WINDOWS[window]
    except KeyError:
        choices = ", ".join(WINDOWS)
        raise ValueError(f"unknown time window {window!r}: use one of {choices}") from None
    return None if span is None else as_utc(now) - span


def period_start(period: str, *, now: datetime) -> datetime | None:
    """Start of the budget period containing `now`, in UTC.

    `daily` starts at UTC midnight, `monthly` on the 1st of the month (UTC),
    `total` has no start (`None`). An unknown period counts as `total`.
    """
    now = as_utc(now)
    if period == "daily":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "monthly":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return None


def _field(name: str) -> Any:
    if name not in GROUP_FIELDS:
        choices = ", ".join(GROUP_FIELDS)
        raise ValueError(f"cannot group or filter usage by {name!r}: use one of {choices}")
    return col(getattr(Usage, name))


class _Unindexed(FunctionElement[Any]):
    """A column SQLite must not read through its index: `+column` there, the plain column elsewhere.

    Given `GROUP BY model`, SQLite walks `ix_usage_model` to skip a sort and then
    fetches every row to test the window: a full scan even for the last 15
    minutes; `GROUP BY +model` lets it use the `created_at` range instead. And a
    window holding a good share of the table is faster to read in one sequential
    scan than row by row through `ix_usage_created_at`, which SQLite, having no
    statistics, cannot know by itself.
    """

    inherit_cache = True
    name = "unindexed"

    def __init__(self, column: Any) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(_Unindexed)
def _unindexed_default(element: _Unindexed, compiler: Any, **kw: Any) -> str:
    (column,) = element.clauses
    return compiler.process(column, **kw)


@compiles(_Unindexed, "sqlite")
def _unindexed_sqlite(element: _Unindexed, compiler: Any, **kw: Any) -> str:
    (column,) = element.clauses
    return "+" + compiler.process(column, **kw)


SCAN_SHARE = 0.1
"""On SQLite, a window with more than this share of all records is read by a table scan."""


def _window_condition(session: Session, since: datetime) -> ColumnElement[bool]:
    """`created_at >= since`, for SQLite written as a table scan when the window is large.

    Counting the window is cheap (the index alone answers it). Measured on 200,000
    records over 30 days, a 7-day window reads 2-3x faster by scanning.
    """
    bound = _stored(since)
    created = col(Usage.created_at)
    if session.get_bind().dialect.name != "sqlite":
        return created >= bound
    in_window, total = session.exec(
        select(
            select(func.count()).where(created >= bound).scalar_subquery(),
            select(func.count()).select_from(Usage).scalar_subquery(),
        )
    ).one()
    if total and in_window > total * SCAN_SHARE:
        return _Unindexed(created) >= bound
    return created >= bound


# --- where the numbers come from: rollup rows, and records only where rollups cannot answer ---------


def raw_records_before(*, session: Session) -> datetime | None:
    """Records (and minute rollups) before this time were pruned by retention; None if nothing was pruned."""
    horizon = _raw_horizon(session)
    return None if horizon is None else from_epoch(horizon)


def _raw_horizon(session: Session) -> int | None:
    return session.exec(select(UsageRetention.raw_before).where(UsageRetention.id == 1)).first()


def effective_start(*, session: Session, since: datetime | None) -> datetime | None:
    """The start a report over `since` really has: `since`, or its whole hour when records before it were pruned.

    Hour rollups are kept forever; the records and minute rollups that give a window
    its exact start are not. A report starting before the retention horizon counts
    from the start of that hour (a few records more, never fewer).
    """
    if since is None:
        return None
    return cuts.effective_start(since, _raw_horizon(session))


def _rollup_part(cut: Cut, grain: int, low: int | None, high: int | None, fields: Sequence[str],
                 filters: Filters, timed: bool) -> Any:
    table = _ROLLUP
    columns = [table.c[name].label(name) for name in fields]
    if timed:
        columns.append(table.c.bucket.label("t"))
    columns += [table.c[name].label(name) for name in MEASURES]
    conditions = [table.c.cut == cut.id, table.c.grain == grain]
    if low is not None:
        conditions.append(table.c.bucket >= low)
    if high is not None:
        conditions.append(table.c.bucket < high)
    conditions += _filter_conditions(table, filters)
    return select(*columns).where(*conditions)


def _record_part(session: Session, low: datetime | None, high: datetime | None, fields: Sequence[str],
                 filters: Filters, timed: bool, *, window: bool = False) -> Any:
    table = _USAGE
    columns = [_record_column(table, name).label(name) for name in fields]
    if timed:
        columns.append(bucket_sql(table.c.created_at, MINUTE).label("t"))
    measures = record_measures_sql()
    columns += [measures[name].label(name) for name in MEASURES]
    conditions: list[ColumnElement[bool]] = []
    if low is not None:
        conditions.append(_window_condition(session, low) if window else col(Usage.created_at) >= _stored(low))
    if high is not None:
        conditions.append(col(Usage.created_at) < _stored(high))
    conditions += _filter_conditions(table, filters)
    return select(*columns).where(*conditions)


def _filter_conditions(table: Any, filters: Filters) -> list[ColumnElement[bool]]:
    conditions = []
    for name, value in filters.items():
        column = _record_column(table, name) if table is _USAGE else table.c[name]
        conditions.append(column.is_(None) if value is None else column == value)
    return conditions


def _parts(session: Session, *, fields: Sequence[str], since: datetime | None, filters: Filters,
           grid: int | None = None, from_records: bool = False) -> list[Any]:
    """SELECTs whose rows, summed, are the records since `since` matching `filters`, per `fields`.

    The rollup rows and records `cuts.window_parts` names (hour rows; minute rows and at
    most a minute of records for a window's start). Records only when no cut has the
    fields (execution ids), or `from_records`. With `grid`, each row has a time `t`: its
    bucket start (a record's minute).
    """
    timed = grid is not None
    cut = None if from_records else cut_for([*fields, *filters])
    if cut is None:
        return [_record_part(session, since, None, fields, filters, timed, window=True)]
    parts = []
    for part in window_parts(cut, effective_start(session=session, since=since), grid=grid):
        if part.grain is None:
            parts.append(_record_part(session, part.low, part.high, fields, filters, timed))  # type: ignore[arg-type]
        else:
            parts.append(_rollup_part(cut, part.grain, part.low, part.high, fields, filters, timed))  # type: ignore[arg-type]
    return parts


def _summed(parts: list[Any], keys: Sequence[str]) -> tuple[Any, list[Any], list[Any]]:
    """(subquery of the parts, their key columns, the sums of `MEASURES` labelled by name)."""
    union = parts[0] if len(parts) == 1 else union_all(*parts)
    rows = union.subquery("parts")
    key_columns = [rows.c[name] for name in keys]
    sums = [func.coalesce(func.sum(rows.c[name]), 0).label(name) for name in MEASURES]
    return rows, key_columns, sums


def _totals(values: Sequence[Any]) -> Totals:
    sums = dict(zip(MEASURES, (int(v or 0) for v in values), strict=True))
    return Totals(sums["requests"], sums["input_tokens"], sums["output_tokens"],
                  sums["cost_units"] / COST_UNITS_PER_USD, sums["errors"], sums["unpriced"])


def _check_fields(names: Iterable[str]) -> None:
    for name in names:
        if name not in REPORT_FIELDS:
            choices = ", ".join(REPORT_FIELDS)
            raise ValueError(f"cannot group or filter usage by {name!r}: use one of {choices}")


def usage_totals(*, session: Session, since: datetime | None = None, filters: Filters | None = None,
                 from_records: bool = False) -> Totals:
    """Requests, tokens, cost and errors of the records since `since` (all when `None`), filtered by `GROUP_FIELDS`.

    Read from the rollups; `from_records=True` sums the records instead (the reference
    the rollups are tested against: same numbers, slower, and blind to pruned records).
    """
    for name in filters or {}:
        _field(name)
    return report_totals(session=session, since=since, filters=filters, from_records=from_records)


def report_totals(*, session: Session, since: datetime | None = None, filters: Filters | None = None,
                  from_records: bool = False) -> Totals:
    """`usage_totals` filtered by any of `REPORT_FIELDS` (a key's spend: `filters={"key_id": ...}`)."""
    filters = dict(filters or {})
    _check_fields(filters)
    parts = _parts(session, fields=(), since=since, filters=filters, from_records=from_records)
    _, _, sums = _summed(parts, ())
    return _totals(session.exec(select(*sums)).one())


def _cost_units(session: Session, *, since: datetime | None, filters: Filters, from_records: bool) -> int:
    parts = _parts(session, fields=(), since=since, filters=filters, from_records=from_records)
    rows, _, _ = _summed(parts, ())
    return int(session.exec(select(func.coalesce(func.sum(rows.c.cost_units), 0))).one() or 0)


def grouped_totals(
    *,
    session: Session,
    fields: Sequence[str],
    since: datetime | None = None,
    filters: Filters | None = None,
    limit: int | None = None,
    from_records: bool = False,
) -> list[tuple[tuple[Any, ...], Totals, float]]:
    """(values of `fields`, their totals, their share of the cost of all groups), most expensive first
    (then most requests, then the values). Any of `REPORT_FIELDS`; execution ids are read from records."""
    filters = dict(filters or {})
    _check_fields([*fields, *filters])
    if not fields:
        raise ValueError("give at least one field to group by")
    parts = _parts(session, fields=fields, since=since, filters=filters, from_records=from_records)
    rows, keys, sums = _summed(parts, fields)
    cost = func.sum(rows.c.cost_units)
    statement = (
        select(*keys, *sums, func.sum(func.sum(rows.c.cost_units)).over())
        .group_by(*keys)
        .order_by(cost.desc(), func.sum(rows.c.requests).desc(), *keys)
    )
    if limit is not None:
        statement = statement.limit(limit)
    out = []
    for row in session.exec(statement):
        values = tuple(row[: len(fields)])
        totals = _totals(row[len(fields): len(fields) + len(MEASURES)])
        everything = int(row[-1] or 0)
        share = totals.cost_usd * COST_UNITS_PER_USD / everything if everything > 0 else 0.0
        out.append((values, totals, share))
    return out


def group_usage(
    *,
    session: Session,
    by: str,
    since: datetime | None = None,
    filters: Filters | None = None,
    limit: int | None = 200,
    from_records: bool = False,
) -> list[GroupRow]:
    """The records grouped by the field `by`, most expensive first (then most requests).

    `filters` narrows the records first: the drill-down from a workflow to its
    steps is `group_usage(by="step", filters={"workflow": "w"})`. The share of
    each row is against all groups, including those cut off by `limit`.
    """
    _field(by)
    for name in filters or {}:
        _field(name)
    rows = grouped_totals(session=session, fields=[by], since=since, filters=filters, limit=limit,
                          from_records=from_records)
    return [GroupRow(values[0], t.requests, t.input_tokens, t.output_tokens, t.cost_usd, share)
            for values, t, share in rows]


def first_usage_at(*, session: Session, filters: Filters | None = None, from_records: bool = False) -> datetime | None:
    """Time of the oldest record (matching `filters`), or `None` when there is none.

    From the oldest hour rollup row, refined to the record within that hour; the
    start of that hour if its records were pruned.
    """
    filters = dict(filters or {})
    _check_fields(filters)
    cut = None if from_records else cut_for(filters)
    record_conditions = _filter_conditions(_USAGE, filters)
    if cut is None:
        first = session.exec(select(func.min(Usage.created_at)).where(*record_conditions)).one()
        return None if first is None else as_utc(first)
    hour = session.exec(select(func.min(_ROLLUP.c.bucket)).where(
        _ROLLUP.c.cut == cut.id, _ROLLUP.c.grain == HOUR, *_filter_conditions(_ROLLUP, filters))).one()
    if hour is None:
        return None
    horizon = _raw_horizon(session)
    if horizon is not None and hour < horizon:
        return from_epoch(hour)
    first = session.exec(select(func.min(Usage.created_at)).where(
        col(Usage.created_at) >= _stored(from_epoch(hour)), col(Usage.created_at) < _stored(from_epoch(hour + HOUR)),
        *record_conditions)).one()
    return from_epoch(hour) if first is None else as_utc(first)


def spend_series(
    *,
    session: Session,
    start: datetime,
    end: datetime,
    buckets: int,
    filters: Filters | None = None,
    include_earlier: bool = False,
    from_records: bool = False,
) -> SpendSeries:
    """Cost per bucket from `start` to `end` in at most `buckets` equal buckets (for a sparkline).

    Buckets are whole minutes (whole hours when a bucket spans an hour or more, or the
    window reaches pruned records), laid from the minute (hour) `start` falls in, so each
    rollup row falls in one bucket; records before `start` in that first minute do not
    count. A 15-minute window asked for 60 buckets gets 16 one-minute buckets. Records after `end` (a clock slightly behind the writer's) count in the last
    bucket; with `include_earlier`, records before `start` count in the first one.
    """
    if buckets < 1:
        raise ValueError(f"a spend series needs at least one bucket, not {buckets}")
    filters = dict(filters or {})
    _check_fields(filters)
    start, end = as_utc(start), as_utc(end)
    span = max((end - start).total_seconds(), 1.0)
    horizon = _raw_horizon(session)
    first = epoch_seconds(start)
    grid = HOUR if span / buckets >= HOUR or (horizon is not None and first < horizon) else MINUTE
    width = max(math.ceil(span / buckets / grid), 1) * grid
    origin = first - first % grid
    buckets = min(buckets, (epoch_seconds(end) - origin) // width + 1)  # whole buckets can cover the span in fewer
    parts = _parts(session, fields=(), since=start, filters=filters, grid=grid, from_records=from_records)
    rows, _, _ = _summed(parts, ())
    statement = select(rows.c.t, func.sum(rows.c.cost_units)).group_by(rows.c.t)
    units = [0] * buckets
    for moment, cost in session.exec(statement):
        position = min(max((int(moment) - origin) // width, 0), buckets - 1)
        units[position] += int(cost or 0)
    if include_earlier:
        units[0] += (_cost_units(session, since=None, filters=filters, from_records=from_records)
                     - _cost_units(session, since=start, filters=filters, from_records=from_records))
    values = tuple(u / COST_UNITS_PER_USD for u in units)
    return SpendSeries(from_epoch(origin), timedelta(seconds=width), values)


def key_budgets(*, session: Session, now: datetime, include_revoked: bool = False,
                from_records: bool = False) -> list[KeyBudget]:
    """Every key's spend in its budget period, most used budget first, then keys without one.

    One aggregate query over the keys' hour rollup rows (periods start on whole hours):
    the monthly and daily sums are conditional sums; a `total` budget needs every hour row.
    """
    statement = select(ApiKey.id, ApiKey.name, ApiKey.budget_usd, ApiKey.budget_period)
    if not include_revoked:
        statement = statement.where(col(ApiKey.revoked_at).is_(None))
    keys = session.exec(statement).all()
    if not keys:
        return []

    month_start = period_start("monthly", now=now)
    day_start = period_start("daily", now=now)
    assert month_start is not None and day_start is not None
    periods = {period if period in BUDGET_PERIODS else "total" for _, _, _, period in keys}
    earliest = None if "total" in periods else (month_start if "monthly" in periods else day_start)
    if from_records:
        cost = record_measures_sql()["cost_units"]
        created = col(Usage.created_at)
        month: Any = created >= _stored(month_start)
        day: Any = created >= _stored(day_start)
        key_id: Any = col(Usage.key_id)
        conditions = [] if earliest is None else [_window_condition(session, earliest)]
        group: Any = _Unindexed(key_id)
    else:
        cost = _ROLLUP.c.cost_units
        month = _ROLLUP.c.bucket >= epoch_seconds(month_start)
        day = _ROLLUP.c.bucket >= epoch_seconds(day_start)
        key_id = _ROLLUP.c.key_id
        conditions = [_ROLLUP.c.cut == cut_for(["key_id"]).id, _ROLLUP.c.grain == HOUR]  # type: ignore[union-attr]
        if earliest is not None:
            conditions.append(_ROLLUP.c.bucket >= epoch_seconds(earliest))
        group = key_id
    spent = select(
        key_id,
        func.coalesce(func.sum(cost), 0),
        func.coalesce(func.sum(case((month, cost), else_=0)), 0),
        func.coalesce(func.sum(case((day, cost), else_=0)), 0),
    ).where(*conditions).group_by(group)
    by_key = {found: tuple(int(v) / COST_UNITS_PER_USD for v in sums) for found, *sums in session.exec(spent)}

    budgets = []
    for key, name, budget, period in keys:
        period = period if period in BUDGET_PERIODS else "total"
        total, monthly, daily = by_key.get(key, (0.0, 0.0, 0.0))
        used = {"total": total, "monthly": monthly, "daily": daily}[period]
        budgets.append(KeyBudget(key, name, budget, period, period_start(period, now=now), used))
    budgets.sort(key=_budget_order)
    return budgets


def _budget_order(budget: KeyBudget) -> tuple[int, float, str]:
    fraction = budget.fraction
    if fraction is None:
        return (1, -budget.spent_usd, budget.name)
    return (0, -fraction, budget.name)


def recent_usage(
    *,
    session: Session,
    limit: int = 100,
    since: datetime | None = None,
    filters: Filters | None = None,
) -> list[Usage]:
    """The latest `limit` records, newest first (from the records: `ix_usage_created_at`)."""
    conditions = [] if since is None else [col(Usage.created_at) >= _stored(since)]
    for name, value in (filters or {}).items():
        column = _field(name)
        conditions.append(column.is_(None) if value is None else column == value)
    statement = (
        select(Usage)
        .where(*conditions)
        .order_by(col(Usage.created_at).desc(), col(Usage.id).desc())
        .limit(limit)
    )
    return list(session.exec(statement).all())


def change_marker(*, session: Session) -> ChangeMarker:
    """The newest record id, what the rollups count, the keys' state and the retention horizon, in one round trip.

    Every committed batch of records moves the rollups' request count (whatever ids the
    records got, from whichever instance); a re-pricing moves their cost; a prune moves
    the horizon. Each sub-query reads an index or the few hour rows of the `total` cut.
    """
    total = (_ROLLUP.c.cut == CUTS[0].id, _ROLLUP.c.grain == HOUR)
    statement = select(
        select(func.coalesce(func.max(Usage.id), 0)).scalar_subquery(),
        select(func.coalesce(func.sum(_ROLLUP.c.requests), 0)).where(*total).scalar_subquery(),
        select(func.count()).select_from(ApiKey).scalar_subquery(),
        select(func.count(ApiKey.revoked_at)).scalar_subquery(),
        select(func.max(ApiKey.updated_at)).scalar_subquery(),
        select(func.coalesce(func.sum(_ROLLUP.c.cost_units), 0)).where(*total).scalar_subquery(),
        select(UsageRetention.raw_before).where(UsageRetention.id == 1).scalar_subquery(),
    )
    max_id, usage_count, key_count, revoked, updated, cost, horizon = session.exec(statement).one()
    return ChangeMarker(int(max_id or 0), int(usage_count or 0), int(key_count or 0), int(revoked or 0), updated,
                        int(cost or 0), None if horizon is None else int(horizon))


@dataclass(frozen=True)
class DashboardQuery:
    """What the dashboard shows: the window, the grouping and the drill-down filters."""

    window: str = "1h"
    group_by: str = "workflow"
    filters: tuple[tuple[str, str | None], ...] = ()
    buckets: int = 60
    group_limit: int = 200
    log_limit: int = 100


@dataclass(frozen=True)
class DashboardSnapshot:
    """The result of every query behind one dashboard refresh."""

    query: DashboardQuery
    now: datetime
    since: datetime | None
    marker: ChangeMarker
    totals: Totals
    groups: list[GroupRow]
    series: SpendSeries
    budgets: list[KeyBudget]
    recent: list[Usage]
    raw_before: datetime | None = None
    """Records before this time were pruned (retention); None if none were."""
    groups_from_records: bool = False
    """The grouped rows were read from records (execution ids), not rollups."""

    @property
    def drill_reaches_pruned(self) -> bool:
        """Whether rows read from records miss some of the window: its records before `raw_before` are pruned."""
        if not self.groups_from_records or self.raw_before is None:
            return False
        return self.since is None or self.since < self.raw_before


def dashboard_snapshot(
    *,
    session: Session,
    query: DashboardQuery,
    now: datetime,
    marker: ChangeMarker | None = None,
    from_records: bool = False,
) -> DashboardSnapshot:
    """Run all of one refresh's queries.

    The header totals and the sparkline cover the whole window; the grouped rows
    follow the drill-down filters; budgets follow each key's own period; the log
    is the latest records whatever the window. `from_records` reads records only
    (the reference, and the "before" of scripts/bench_dashboard.py).
    """
    raw = from_records
    now = as_utc(now)
    since = window_start(query.window, now=now)
    filters = dict(query.filters)
    if marker is None:
        marker = change_marker(session=session)
    series_start = since
    if series_start is None:
        series_start = first_usage_at(session=session, from_records=raw) or now - timedelta(hours=1)
        series_start = min(series_start, now - timedelta(minutes=1))
    series = spend_series(session=session, start=series_start, end=now, buckets=query.buckets, from_records=raw)
    return DashboardSnapshot(
        query=query,
        now=now,
        since=since,
        marker=marker,
        totals=usage_totals(session=session, since=since, from_records=raw),
        groups=group_usage(session=session, by=query.group_by, since=since, filters=filters, limit=query.group_limit,
                           from_records=raw),
        series=series,
        budgets=key_budgets(session=session, now=now, from_records=raw),
        recent=recent_usage(session=session, limit=query.log_limit),
        raw_before=None if marker.raw_before is None else from_epoch(marker.raw_before),
        groups_from_records=cut_for([query.group_by, *filters]) is None,
    )


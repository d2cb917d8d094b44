"""Budgets on attribution: the `budgets` table's repository, the spend subjects and periods they count.

A budget limits the spend of the records matching a *subject*: a key (its id), or
attribution fields (`{"project": "P"}`, `{"execution_id": "E", "workflow": "W"}`).
A subject is spelled as one string (`spend_subject`), so the budget counters, the
recorder's tally of records not written yet and the database agree on what they
count: a plain key id, or the JSON of the fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from tokensense.storage.analytics import report_totals
from tokensense.storage.models import BUDGET_LEVELS, BUDGET_PERIODS, Budget, UsageCreate, utcnow

SUBJECT_FIELDS: tuple[str, ...] = ("project", "workflow", "source", "execution_id")
"""The attribution fields a budget's subject can name (with `key_id`)."""

COUNTERS_PREFIX = "tokensense"
"""The prefix of the budget counters' keys in Redis (`tokensense.gateway.limits.RedisCounters`)."""

KEY_PERIODS = {"daily": "day", "monthly": "month", "total": "total"}
"""A key's budget periods (`keys create --budget-period`) in the words of budgets on attribution."""


def spend_subject(filters: Mapping[str, str]) -> str:
    """The subject string of records matching `filters`: a key id alone stays itself, else sorted JSON."""
    if set(filters) == {"key_id"}:
        return filters["key_id"]
    return json.dumps(dict(sorted(filters.items())), separators=(",", ":"), ensure_ascii=False)


def subject_filters(subject: str) -> dict[str, str]:
    """The record filters of a subject string (`spend_subject`'s inverse)."""
    if subject.startswith("{"):
        data = json.loads(subject)
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            return {str(k): v for k, v in data.items()}
        raise ValueError(f"not a spend subject: {subject!r}")
    return {"key_id": subject}


def record_subjects(record: UsageCreate) -> list[str]:
    """Every subject a record's cost counts in: its key, and each attribution budget subject it matches."""
    subjects = [record.key_id] if record.key_id else []
    for name in ("project", "workflow", "source"):
        value = getattr(record, name)
        if value:
            subjects.append(spend_subject({name: value}))
    if record.execution_id:
        subjects.append(spend_subject({"execution_id": record.execution_id}))
        if record.workflow:
            subjects.append(spend_subject({"execution_id": record.execution_id, "workflow": record.workflow}))
    return subjects


def subject_spent_since(*, session: Session, subject: str, since: datetime | None) -> float:
    """What the records of `subject` cost since `since` (None: ever): the rollups for keys, projects,
    workflows and sources; the records (index on execution_id) for an execution."""
    return report_totals(session=session, since=since, filters=subject_filters(subject)).cost_usd


# --- periods --------------------------------------------------------------------------


def period_window(period: str, now: datetime | None = None) -> tuple[str, datetime | None, float | None]:
    """(window id, UTC start, seconds until it resets) of a budget period; `total` never resets.

    Periods: `day`, `week` (starts Monday), `month`, `total`; a key's `daily`, `monthly` too.
    """
    now = now or datetime.now(UTC)
    name = KEY_PERIODS.get(period, period)
    prefix = period if period in KEY_PERIODS else name  # a key's windows keep their names (`daily:2026-05-01`)
    if name == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return f"{prefix}:{start:%Y-%m-%d}", start, (start + timedelta(days=1) - now).total_seconds()
    if name == "week":
        start = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        return f"week:{start:%Y-%m-%d}", start, (start + timedelta(days=7) - now).total_seconds()
    if name == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
        return f"{prefix}:{start:%Y-%m}", start, (nxt - now).total_seconds()
    return "total", None, None


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """A budget on attribution, from the database (`budgets set`) or config.toml (`[[budgets]]`)."""

    level: str  # project | workflow | source | execution
    name: str | None  # the project, workflow or source; for `execution`: None (every run) or a workflow
    usd: float
    period: str = "total"
    origin: str = "cli"  # cli | config

    @property
    def label(self) -> str:
        """How messages name it: `workflow \"W\"`, `each execution of workflow \"W\"`, `each execution`."""
        if self.level == "execution":
            return "each execution" if self.name is None else f"each execution of workflow `{self.name}`"
        return f"{self.level} `{self.name}`"

    def as_dict(self) -> dict[str, Any]:
        return {"level": self.level, "name": self.name, "usd": self.usd, "period": self.period, "origin": self.origin}


def _check(level: str, name: str | None, usd: float, period: str) -> None:
    if level not in BUDGET_LEVELS:
        raise ValueError(f"a budget's level is one of {', '.join(BUDGET_LEVELS)}, not {level!r}")
    if period not in BUDGET_PERIODS:
        raise ValueError(f"a budget's period is one of {', '.join(BUDGET_PERIODS)}, not {period!r}")
    if not (usd > 0 and usd < float("inf")):
        raise ValueError(f"a budget is a positive amount of US dollars, not {usd!r}")
    if level != "execution" and not name:
        raise ValueError(f"a {level} budget names the {level} it limits")


def _find(session: Session, level: str, name: str | None, period: str | None) -> list[Budget]:
    statement = select(Budget).where(Budget.level == level)
    statement = statement.where(col(Budget.name).is_(None) if name is None else Budget.name == name)
    if period is not None:
        statement = statement.where(Budget.period == period)
    return list(session.exec(statement).all())


def set_budget(*, session: Session, level: str, name: str | None, usd: float, period: str = "total") -> Budget:
    """Create the budget of (level, name, period), or change its amount."""
    _check(level, name, usd, period)
    found = _find(session, level, name, period)
    row = found[0] if found else Budget(level=level, name=name, usd=usd, period=period)
    row.usd = usd
    row.updated_at = utcnow()
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def list_budgets(*, session: Session) -> list[Budget]:
    return list(session.exec(select(Budget).order_by(col(Budget.level), col(Budget.name), col(Budget.period))).all())


def remove_budgets(*, session: Session, level: str, name: str | None, period: str | None = None) -> int:
    """Remove the budgets of (level, name) (of one period, if given); how many were removed."""
    found = _find(session, level, name, period)
    for row in found:
        session.delete(row)
    session.commit()
    return len(found)


def configured_limits(rules: Iterable[Any]) -> list[BudgetLimit]:
    """The budgets of config.toml (`BudgetRule`s of `[[budgets]]`) as `BudgetLimit`s."""
    out = []
    for rule in rules:
        if rule.each_execution:
            out.append(BudgetLimit("execution", rule.workflow or None, rule.usd, rule.period, "config"))
        else:
            level = next(n for n in ("project", "workflow", "source") if getattr(rule, n))
            out.append(BudgetLimit(level, getattr(rule, level), rule.usd, rule.period, "config"))
    return out


def counter_id(limit: BudgetLimit, execution: str | None = None) -> str:
    """The id of a budget's counter (Redis key part, hub slot): its subject and period. Budgets of the same
    subject and period (one in config.toml, one set by the CLI) share it: the smaller limit holds."""
    return f"{limit_subject(limit, execution)}@{limit.period}"


def limit_subject(limit: BudgetLimit, execution: str | None = None) -> str:
    """The spend subject a budget counts: its project, workflow or source; for an each-execution budget
    the execution `execution` (of the budget's workflow, when it names one)."""
    if limit.level == "execution":
        fields = {"execution_id": execution or ""}
        if limit.name is not None:
            fields["workflow"] = limit.name
        return spend_subject(fields)
    return spend_subject({limit.level: limit.name or ""})


def stored_limits(session: Session) -> list[BudgetLimit]:
    return [BudgetLimit(b.level, b.name, b.usd, b.period, "cli") for b in list_budgets(session=session)]


def budgets_fingerprint(session: Session) -> tuple[Any, ...]:
    """Changes whenever a budget is set or removed (the gateway reloads them then)."""
    from sqlalchemy import func

    return tuple(
        session.exec(select(func.count(), func.max(Budget.updated_at), func.min(Budget.id), func.max(Budget.id))).one()
    )


# --- spend per budget (budgets list, the dashboard) ----------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetSpend:
    """A budget and what was spent in its current period (an each-execution budget: its costliest run)."""

    limit: BudgetLimit
    window: str
    start: datetime | None
    spent_usd: float
    execution: str | None = None  # each-execution budgets: the costliest of the runs of the last hour

    @property
    def left_usd(self) -> float:
        return max(self.limit.usd - self.spent_usd, 0.0)


RECENT_RUNS = timedelta(hours=1)
"""Each-execution budgets show the costliest of the runs that made calls this recently."""


def budget_spend(*, session: Session, limit: BudgetLimit, now: datetime | None = None) -> BudgetSpend:
    """The settled spend of `limit` in its current period, from the rollups. An each-execution budget: the run
    that spent the most in the period among the runs of the last hour (found by the records' time index, each
    run's spend then read by the execution index)."""
    now = now or datetime.now(UTC)
    window, start, _ = period_window(limit.period, now)
    if limit.level != "execution":
        spent = subject_spent_since(session=session, subject=limit_subject(limit), since=start)
        return BudgetSpend(limit, window, start, spent)
    from tokensense.storage.analytics import grouped_totals

    recent = now - RECENT_RUNS
    rows = grouped_totals(
        session=session,
        fields=["execution_id"],
        since=recent if start is None else max(start, recent),
        filters={} if limit.name is None else {"workflow": limit.name},
        limit=6,
    )
    best = BudgetSpend(limit, window, start, 0.0)
    for values, _, _ in rows:
        run = values[0]
        if run is not None:
            spent = subject_spent_since(session=session, subject=limit_subject(limit, run), since=start)
            if best.execution is None or spent > best.spent_usd:
                best = BudgetSpend(limit, window, start, spent, run)
    return best


# --- what `budgets list` and the dashboard show ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """A budget on attribution with its spend in its current period, and what calls in flight reserve in it."""

    limit: BudgetLimit
    window: str
    start: datetime | None
    spent_usd: float
    reserved_usd: float | None  # None: not known here (no Redis: the gateway's own memory holds it)
    execution: str | None = None  # each-execution budgets: the costliest of the runs of the last hour

    @property
    def left_usd(self) -> float:
        return max(self.limit.usd - self.spent_usd - (self.reserved_usd or 0.0), 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.limit.as_dict(),
            "window": self.window,
            "period_start": self.start.isoformat() if self.start else None,
            "spent_usd": round(self.spent_usd, 10),
            "reserved_usd": None if self.reserved_usd is None else round(self.reserved_usd, 10),
            "left_usd": round(self.left_usd, 10),
            **({"execution": self.execution} if self.limit.level == "execution" else {}),
        }


def budget_rows(
    session: Session,
    *,
    configured: Iterable[object] = (),
    redis_url: str | None = None,
    now: datetime | None = None,
    keys: bool = False,
    held: Callable[[str, str], float | None] | None = None,
) -> list[BudgetRow]:
    """Every budget on attribution (the database's, then config.toml's `configured`), by level, with its spend
    (from the rollups) and, with Redis, what calls in flight reserve (blocking: reads the database and Redis).
    `keys`: the keys' budgets first (level `key`, origin `key`: changed with `keys update`).
    `held`: without Redis, what calls in flight reserve in a counter (counter id, window), when this process knows."""
    limits = stored_limits(session) + configured_limits(configured)
    limits.sort(key=lambda b: (BUDGET_LEVELS.index(b.level), b.name or "", BUDGET_PERIODS.index(b.period)))
    reserved = _reserved_reader(redis_url) if redis_url or held is None else _held_reader(held)
    rows = _key_rows(session, now or datetime.now(UTC), reserved) if keys else []
    for limit in limits:
        spend = budget_spend(session=session, limit=limit, now=now)
        in_flight = reserved(limit, spend.window, spend.execution) if reserved is not None else None
        rows.append(BudgetRow(limit, spend.window, spend.start, spend.spent_usd, in_flight, spend.execution))
    return rows


def _key_rows(session: Session, now: datetime, reserved: Callable[..., float | None] | None) -> list[BudgetRow]:
    from tokensense.storage.analytics import key_budgets

    rows = []
    for key in key_budgets(session=session, now=now):
        if key.budget_usd is None:
            continue
        limit = BudgetLimit("key", key.name, key.budget_usd, key.budget_period, "key")
        window, start, _ = period_window(key.budget_period, now)
        held = reserved(limit, window, None, key.key_id) if reserved is not None else None
        rows.append(BudgetRow(limit, window, start, key.spent_usd, held))
    return rows


def _held_reader(held: Callable[[str, str], float | None]) -> Callable[..., float | None]:
    """`_reserved_reader`'s answer from this process's own counters (`held(counter id, window)`)."""

    def read(limit: BudgetLimit, window: str, execution: str | None, key_id: str | None = None) -> float | None:
        if limit.level == "execution" and execution is None:
            return 0.0
        return held(key_id if key_id is not None else counter_id(limit, execution), window)

    return read


def _reserved_reader(redis_url: str | None) -> Callable[..., float | None] | None:
    """Reads what calls in flight hold in a budget's counter in Redis (every instance's share)."""
    if not redis_url:
        return None
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)

    def read(limit: BudgetLimit, window: str, execution: str | None, key_id: str | None = None) -> float | None:
        if limit.level == "execution" and execution is None:
            return 0.0
        counter = key_id if key_id is not None else counter_id(limit, execution)
        try:
            fields: dict[str, str] = client.hgetall(  # type: ignore[assignment]
                f"{COUNTERS_PREFIX}:budget:{counter}:{window}"
            )
        except Exception:  # Redis unreachable: not known
            return None
        return sum((max(float(v), 0.0) for k, v in fields.items() if k.startswith("r:")), 0.0)

    return read

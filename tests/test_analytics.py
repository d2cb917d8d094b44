"""Unit tests for the dashboard's SQL aggregations (`tokensense.storage.analytics`) on in-memory SQLite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from tests.conftest import service_missing
from tokensense.storage import analytics, repo
from tokensense.storage.analytics import DashboardQuery, GroupRow, Totals
from tokensense.storage.db import normalize_database_url
from tokensense.storage.models import ApiKey, UsageCreate

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


@contextmanager
def _sqlite_engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _postgres_engine() -> Iterator[Engine]:
    """An engine on a throwaway schema of the local PostgreSQL (or TOKENSENSE_TEST_POSTGRES_URL)."""
    url = os.environ.get("TOKENSENSE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        probe = create_engine(normalize_database_url(url), connect_args={"connect_timeout": 3})
        with probe.connect():
            pass
        probe.dispose()
    except Exception as e:
        service_missing(f"PostgreSQL at {url} is not reachable ({type(e).__name__}); set TOKENSENSE_TEST_POSTGRES_URL")
    schema = f"test_analytics_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_database_url(url))
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = create_engine(normalize_database_url(url), connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    """Every test runs on in-memory SQLite, and on PostgreSQL when one is configured."""
    backend = _sqlite_engine if request.param == "sqlite" else _postgres_engine
    with backend() as engine:
        SQLModel.metadata.create_all(engine)
        with Session(engine) as session:
            yield session


def add(session: Session, *, ago: timedelta, **fields: object) -> None:
    """One record, written the way the gateway writes them (records and rollups in one transaction)."""
    repo.record_usages(session=session, usages=[UsageCreate(created_at=NOW - ago, **fields)])  # type: ignore[arg-type]


def add_key(session: Session, name: str, *, budget: float | None, period: str = "total", revoked: bool = False) -> None:
    session.add(
        ApiKey(
            id=f"id-{name}",
            name=name,
            key_hash=f"hash-{name}",
            key_prefix="tsk_test",
            budget_usd=budget,
            budget_period=period,
            created_at=NOW - timedelta(days=90),
            revoked_at=NOW - timedelta(days=1) if revoked else None,
        )
    )
    session.commit()


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


@pytest.fixture
def workflows(session: Session) -> Session:
    """Two workflows with steps and executions, one call without a workflow, one old call."""
    add(session, ago=minutes(5), workflow="support", step="classify", execution_id="r1", model="gpt-4o",
        input_tokens=100, output_tokens=10, cost_usd=0.10, status=200)
    add(session, ago=minutes(6), workflow="support", step="classify", execution_id="r2", model="gpt-4o",
        input_tokens=200, output_tokens=20, cost_usd=0.20, status=200)
    add(session, ago=minutes(7), workflow="support", step="answer", execution_id="r1", model="claude-sonnet-4-5",
        input_tokens=300, output_tokens=30, cost_usd=0.25, status=500)
    add(session, ago=minutes(8), workflow="summarize", step="chunk", execution_id="s1", model="gpt-4o-mini",
        input_tokens=50, output_tokens=5, cost_usd=0.05, status=200)
    add(session, ago=minutes(9), model="gpt-4o-mini", input_tokens=10, output_tokens=1, cost_usd=0.01, status=429)
    add(session, ago=timedelta(hours=3), workflow="support", step="answer", execution_id="r0", model="gpt-4o",
        input_tokens=1000, output_tokens=100, cost_usd=1.00, status=200)
    return session


def test_window_start_and_unknown_window() -> None:
    assert analytics.window_start("15m", now=NOW) == NOW - minutes(15)
    assert analytics.window_start("7d", now=NOW) == NOW - timedelta(days=7)
    assert analytics.window_start("all", now=NOW) is None
    # A naive "now" is taken as UTC.
    assert analytics.window_start("1h", now=NOW.replace(tzinfo=None)) == NOW - timedelta(hours=1)
    with pytest.raises(ValueError, match="unknown time window '2h'"):
        analytics.window_start("2h", now=NOW)


def test_period_start_is_utc_midnight_and_first_of_month() -> None:
    moment = datetime(2025, 6, 15, 23, 30, tzinfo=UTC)
    assert analytics.period_start("daily", now=moment) == datetime(2025, 6, 15, tzinfo=UTC)
    assert analytics.period_start("monthly", now=moment) == datetime(2025, 6, 1, tzinfo=UTC)
    assert analytics.period_start("total", now=moment) is None
    # 1 July 01:30 in UTC+2 is still 30 June in UTC: periods follow UTC.
    plus_two = datetime(2025, 7, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert analytics.period_start("monthly", now=plus_two) == datetime(2025, 6, 1, tzinfo=UTC)
    assert analytics.period_start("daily", now=plus_two) == datetime(2025, 6, 30, tzinfo=UTC)


def test_totals_cover_the_window(workflows: Session) -> None:
    hour = analytics.usage_totals(session=workflows, since=NOW - timedelta(hours=1))
    assert hour == Totals(requests=5, input_tokens=660, output_tokens=66, cost_usd=pytest.approx(0.61), errors=2)
    everything = analytics.usage_totals(session=workflows)
    assert everything.requests == 6
    assert everything.cost_usd == pytest.approx(1.61)
    assert everything.tokens == 1660 + 166


def test_large_windows_are_scanned_small_ones_use_the_index(session: Session) -> None:
    for day in range(1, 31):
        add(session, ago=timedelta(days=day), cost_usd=1.0)
    add(session, ago=minutes(10), cost_usd=0.5)
    sqlite = session.get_bind().dialect.name == "sqlite"
    recent = analytics._window_condition(session, NOW - timedelta(hours=1))
    week = analytics._window_condition(session, NOW - timedelta(days=7, hours=1))
    assert "+usage.created_at" not in str(recent.compile(dialect=session.get_bind().dialect))
    assert ("+usage.created_at" in str(week.compile(dialect=session.get_bind().dialect))) == sqlite
    # Either way, the same records are counted.
    assert analytics.usage_totals(session=session, since=NOW - timedelta(hours=1)).requests == 1
    assert analytics.usage_totals(session=session, since=NOW - timedelta(days=7, hours=1)).cost_usd == 7.5


def test_totals_of_an_empty_table(session: Session) -> None:
    assert analytics.usage_totals(session=session) == Totals(0, 0, 0, 0.0, 0)


def test_group_by_workflow_orders_by_cost_and_shares_sum_to_one(workflows: Session) -> None:
    rows = analytics.group_usage(session=workflows, by="workflow", since=NOW - timedelta(hours=1))
    assert [row.value for row in rows] == ["support", "summarize", None]
    support = rows[0]
    assert support == GroupRow("support", 3, 600, 60, pytest.approx(0.55), pytest.approx(0.55 / 0.61))
    assert sum(row.share for row in rows) == pytest.approx(1.0)


def test_drill_down_workflow_to_steps_to_executions(workflows: Session) -> None:
    steps = analytics.group_usage(session=workflows, by="step", filters={"workflow": "support"})
    assert [(row.value, row.requests) for row in steps] == [("answer", 2), ("classify", 2)]
    recent_steps = analytics.group_usage(
        session=workflows, by="step", since=NOW - minutes(60), filters={"workflow": "support"}
    )
    assert [(row.value, row.cost_usd) for row in recent_steps] == [("classify", pytest.approx(0.30)), ("answer", 0.25)]
    executions = analytics.group_usage(
        session=workflows, by="execution_id", filters={"workflow": "support", "step": "classify"}
    )
    assert [(row.value, row.cost_usd) for row in executions] == [("r2", 0.20), ("r1", 0.10)]


def test_a_none_filter_matches_records_without_the_field(workflows: Session) -> None:
    rows = analytics.group_usage(session=workflows, by="model", filters={"workflow": None})
    assert [(row.value, row.requests) for row in rows] == [("gpt-4o-mini", 1)]


def test_limit_keeps_the_share_of_all_groups(workflows: Session) -> None:
    rows = analytics.group_usage(session=workflows, by="execution_id", limit=1)
    assert len(rows) == 1
    assert rows[0].value == "r0"
    assert rows[0].share == pytest.approx(1.00 / 1.61)


@pytest.mark.parametrize("field", ["model", "provider", "project", "source", "key_name", "step", "execution_id"])
def test_every_group_field_is_accepted(workflows: Session, field: str) -> None:
    rows = analytics.group_usage(session=workflows, by=field)
    assert sum(row.requests for row in rows) == 6


def test_unknown_group_field_is_refused(session: Session) -> None:
    with pytest.raises(ValueError, match="cannot group or filter usage by 'cost_usd'"):
        analytics.group_usage(session=session, by="cost_usd")
    with pytest.raises(ValueError, match="'endpoint'"):
        analytics.usage_totals(session=session, filters={"endpoint": "/v1/messages"})


def test_spend_series_puts_each_record_in_its_bucket(session: Session) -> None:
    add(session, ago=minutes(59), cost_usd=1.0)  # bucket 0 of 6 ten-minute buckets
    add(session, ago=minutes(45), cost_usd=2.0)  # bucket 1
    add(session, ago=minutes(41), cost_usd=0.5)  # bucket 1
    add(session, ago=minutes(1), cost_usd=4.0)  # bucket 5
    add(session, ago=minutes(-2), cost_usd=8.0)  # after "now" (writer's clock ahead): last bucket
    add(session, ago=minutes(90), cost_usd=16.0)  # before the window: not counted
    series = analytics.spend_series(session=session, start=NOW - timedelta(hours=1), end=NOW, buckets=6)
    assert series.start == NOW - timedelta(hours=1)
    assert series.bucket == minutes(10)
    assert series.values == (1.0, 2.5, 0.0, 0.0, 0.0, 12.0)
    with_earlier = analytics.spend_series(
        session=session, start=NOW - timedelta(hours=1), end=NOW, buckets=6, include_earlier=True
    )
    assert with_earlier.values[0] == 17.0


def test_spend_series_needs_a_bucket(session: Session) -> None:
    with pytest.raises(ValueError, match="at least one bucket"):
        analytics.spend_series(session=session, start=NOW - minutes(5), end=NOW, buckets=0)


def test_key_budgets_follow_each_keys_period(session: Session) -> None:
    add_key(session, "monthly", budget=10.0, period="monthly")
    add_key(session, "daily", budget=1.0, period="daily")
    add_key(session, "lifetime", budget=100.0, period="total")
    add_key(session, "free", budget=None)
    add_key(session, "gone", budget=5.0, revoked=True)
    for name in ("monthly", "daily", "lifetime", "free", "gone"):
        add(session, ago=timedelta(hours=1), key_id=f"id-{name}", cost_usd=0.5)  # today
        add(session, ago=timedelta(days=2), key_id=f"id-{name}", cost_usd=2.0)  # this month
        add(session, ago=timedelta(days=40), key_id=f"id-{name}", cost_usd=30.0)  # last month

    budgets = {budget.name: budget for budget in analytics.key_budgets(session=session, now=NOW)}
    assert set(budgets) == {"monthly", "daily", "lifetime", "free"}
    assert budgets["daily"].spent_usd == pytest.approx(0.5)
    assert budgets["daily"].period_start == datetime(2025, 6, 15, tzinfo=UTC)
    assert budgets["monthly"].spent_usd == pytest.approx(2.5)
    assert budgets["monthly"].period_start == datetime(2025, 6, 1, tzinfo=UTC)
    assert budgets["lifetime"].spent_usd == pytest.approx(32.5)
    assert budgets["lifetime"].period_start is None
    assert budgets["free"].fraction is None
    assert budgets["free"].spent_usd == pytest.approx(32.5)
    # Most used budget first, keys without a budget last.
    order = [budget.name for budget in analytics.key_budgets(session=session, now=NOW)]
    assert order == ["daily", "lifetime", "monthly", "free"]


def test_key_budgets_without_total_keys_read_only_this_month(session: Session) -> None:
    add_key(session, "monthly", budget=2.0, period="monthly")
    add(session, ago=timedelta(days=3), key_id="id-monthly", cost_usd=3.0)
    add(session, ago=timedelta(days=45), key_id="id-monthly", cost_usd=50.0)
    (budget,) = analytics.key_budgets(session=session, now=NOW)
    assert budget.spent_usd == pytest.approx(3.0)
    assert budget.fraction == pytest.approx(1.5)


def test_key_budgets_without_keys(session: Session) -> None:
    add(session, ago=minutes(1), key_id="nobody", cost_usd=1.0)
    assert analytics.key_budgets(session=session, now=NOW) == []


def test_recent_usage_is_newest_first(workflows: Session) -> None:
    recent = analytics.recent_usage(session=workflows, limit=3)
    assert [record.cost_usd for record in recent] == [0.10, 0.20, 0.25]
    assert len(analytics.recent_usage(session=workflows, limit=100)) == 6


def test_change_marker_moves_on_insert_revoke_and_limit_change(session: Session) -> None:
    empty = analytics.change_marker(session=session)
    assert empty == analytics.ChangeMarker(0, 0, 0, 0, None)
    add(session, ago=minutes(1), cost_usd=1.0)
    add_key(session, "k", budget=None)
    after = analytics.change_marker(session=session)
    assert after.usage_count == 1 and after.usage_max_id >= 1 and after.key_count == 1
    key = session.get(ApiKey, "id-k")
    assert key is not None
    key.revoked_at = NOW
    session.add(key)
    session.commit()
    revoked = analytics.change_marker(session=session)
    assert revoked.keys_revoked == 1
    key.budget_usd = 20.0
    key.updated_at = NOW
    session.add(key)
    session.commit()
    assert analytics.change_marker(session=session).keys_updated_at is not None
    assert analytics.change_marker(session=session) != revoked


def test_dashboard_snapshot_runs_every_query(workflows: Session) -> None:
    query = DashboardQuery(window="1h", group_by="step", filters=(("workflow", "support"),), buckets=12)
    snapshot = analytics.dashboard_snapshot(session=workflows, query=query, now=NOW)
    assert snapshot.since == NOW - timedelta(hours=1)
    assert snapshot.totals.requests == 5  # the header ignores the drill-down
    assert [row.value for row in snapshot.groups] == ["classify", "answer"]
    assert len(snapshot.series.values) == 12
    assert sum(snapshot.series.values) == pytest.approx(0.61)
    assert len(snapshot.recent) == 6
    assert snapshot.marker.usage_count == 6


def test_dashboard_snapshot_all_window_starts_at_the_first_record(workflows: Session) -> None:
    snapshot = analytics.dashboard_snapshot(session=workflows, query=DashboardQuery(window="all", buckets=10), now=NOW)
    assert snapshot.since is None
    assert snapshot.series.start == NOW - timedelta(hours=3)
    assert sum(snapshot.series.values) == pytest.approx(1.61)
    assert snapshot.series.values[0] == pytest.approx(1.00)

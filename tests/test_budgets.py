"""Issue 26: budgets on attribution: which apply to a call, their periods, subjects and the spend they count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from keyinfo import key_info
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from tokensense.config import BudgetsConfig
from tokensense.gateway.budgets import BudgetBook, budgets_for
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.limits import BudgetDecision
from tokensense.metering.recorder import UnwrittenSpend
from tokensense.storage import repo
from tokensense.storage.budgets import (
    BudgetLimit,
    budget_spend,
    period_window,
    record_subjects,
    remove_budgets,
    set_budget,
    spend_subject,
    subject_filters,
)
from tokensense.storage.models import UsageCreate

NOW = datetime(2026, 12, 9, 15, 30, tzinfo=UTC)  # a Wednesday


@pytest.fixture
def session():
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        yield session


def _key(**changes: object) -> KeyInfo:
    return key_info(**{"name": "ci", **changes})


def test_periods_start_at_utc_boundaries() -> None:
    assert period_window("day", NOW)[:2] == ("day:2026-12-09", datetime(2026, 12, 9, tzinfo=UTC))
    week, start, resets = period_window("week", NOW)
    assert (week, start) == ("week:2026-12-07", datetime(2026, 12, 7, tzinfo=UTC))  # the Monday
    assert resets == pytest.approx((datetime(2026, 12, 14, tzinfo=UTC) - NOW).total_seconds())
    assert period_window("month", NOW)[:2] == ("month:2026-12", datetime(2026, 12, 1, tzinfo=UTC))
    assert period_window("month", datetime(2026, 12, 31, 23, 59, tzinfo=UTC))[2] == 60
    assert period_window("total", NOW) == ("total", None, None)
    assert period_window("daily", NOW)[0] == "daily:2026-12-09"  # a key's periods keep their window names


def test_subjects_spell_filters_and_back() -> None:
    assert spend_subject({"key_id": "abc"}) == "abc" and subject_filters("abc") == {"key_id": "abc"}
    subject = spend_subject({"workflow": "w", "execution_id": "e"})
    assert subject_filters(subject) == {"execution_id": "e", "workflow": "w"}
    record = UsageCreate(key_id="k", project="p", workflow="w", source="s", execution_id="e", cost_usd=0.1)
    assert record_subjects(record) == [
        "k",
        '{"project":"p"}',
        '{"workflow":"w"}',
        '{"source":"s"}',
        '{"execution_id":"e"}',
        '{"execution_id":"e","workflow":"w"}',
    ]


def test_which_budgets_apply_to_a_call() -> None:
    config = BudgetsConfig.model_validate(
        [
            {"workflow": "w", "usd": 5, "period": "day"},
            {"project": "p", "usd": 50},
            {"each_execution": True, "usd": 2},
            {"each_execution": True, "workflow": "w", "usd": 0.5},
            {"workflow": "w", "usd": 3, "period": "day"},  # the same subject and period: the smaller holds
        ]
    )
    book = BudgetBook(None, config.limits)
    applied = budgets_for(_key(budget_usd=10.0), {"project": "p", "workflow": "w", "execution_id": "run-1"}, book)
    assert [(b.level, b.name, b.usd) for b in applied] == [
        ("key", "ci", 10.0),
        ("project", "p", 50),
        ("workflow", "w", 3),
        ("execution", "run-1", 2),
        ("execution", "run-1", 0.5),
    ]
    assert len({b.counter for b in applied}) == 5
    assert [b.tag for b in applied][-1] == "execution:run-1"
    assert budgets_for(_key(), {"workflow": "other", "execution_id": None}, book) == []
    only_runs = budgets_for(_key(), {"workflow": "other", "execution_id": "run-2"}, book)
    assert [(b.level, b.usd) for b in only_runs] == [("execution", 2)]  # not the one of workflow w's runs


def test_refusals_name_the_budget() -> None:
    book = BudgetBook(None, BudgetsConfig.model_validate([{"workflow": "w", "usd": 1, "period": "day"}]).limits)
    (budget,) = book.applicable({"workflow": "w"})
    error, headers = budget.refusal(BudgetDecision(False, 0.2, 0.79, 0.05, "reserved"))
    assert error.status == 429 and headers["retry-after"] and error.code == "budget_reserved"
    assert "workflow `w` ($1 per day)" in error.message and "$0.790000 reserved" in error.message
    error, _ = budget.refusal(BudgetDecision(False, 1.0, 0.0, 0.05, "spent"))
    assert error.status == 402 and "is spent ($1.000000 spent" in error.message
    error, _ = budget.refusal(BudgetDecision(False, 0.99, 0.0, 0.05, "insufficient"))
    assert error.status == 402 and "max_tokens" in error.message


def test_set_list_remove_and_the_book_reloads(session: Session) -> None:
    book = BudgetBook(session.get_bind())  # type: ignore[arg-type]
    book.refresh(force=True)
    assert not book.active
    set_budget(session=session, level="workflow", name="w", usd=5, period="day")
    set_budget(session=session, level="workflow", name="w", usd=7, period="day")  # changed, not added
    set_budget(session=session, level="execution", name=None, usd=1)
    book.refresh()
    assert sorted((b.level, b.name, b.usd) for b in book.limits) == [("execution", None, 1), ("workflow", "w", 7)]
    with pytest.raises(ValueError, match="period"):
        set_budget(session=session, level="workflow", name="w", usd=5, period="year")
    with pytest.raises(ValueError, match="names the project"):
        set_budget(session=session, level="project", name=None, usd=5)
    assert remove_budgets(session=session, level="workflow", name="w") == 1
    book.refresh()
    assert [(b.level, b.name) for b in book.limits] == [("execution", None)]


def test_spend_of_a_budget_from_the_rollups_and_the_records(session: Session) -> None:
    records = [
        UsageCreate(created_at=NOW - timedelta(minutes=30), workflow="w", execution_id="a", cost_usd=0.25),
        UsageCreate(created_at=NOW - timedelta(minutes=20), workflow="w", execution_id="b", cost_usd=0.5),
        UsageCreate(created_at=NOW - timedelta(days=1), workflow="w", execution_id="a", cost_usd=1.0),
        UsageCreate(created_at=NOW - timedelta(hours=1), workflow="x", execution_id="c", cost_usd=2.0),
    ]
    repo.record_usages(session=session, usages=records)
    today = budget_spend(session=session, limit=BudgetLimit("workflow", "w", 10, "day"), now=NOW)
    assert today.spent_usd == pytest.approx(0.75) and today.window == "day:2026-12-09"
    total = budget_spend(session=session, limit=BudgetLimit("workflow", "w", 10, "total"), now=NOW)
    assert total.spent_usd == pytest.approx(1.75)
    runs = budget_spend(session=session, limit=BudgetLimit("execution", "w", 10, "total"), now=NOW)
    # The costliest of the runs of the last hour, with its spend in the period (the day before too).
    assert (runs.execution, runs.spent_usd) == ("a", pytest.approx(1.25))
    assert repo.spent_since(session=session, key_id=spend_subject({"execution_id": "a"}), since=None) == pytest.approx(
        1.25
    )


def test_unwritten_spend_counts_every_subject_of_a_record() -> None:
    """Budget seeds count records not written yet: for budgets on attribution too, not only keys."""
    unwritten = UnwrittenSpend()
    record = UsageCreate(created_at=NOW, key_id="k", workflow="w", execution_id="e", cost_usd=0.5)
    unwritten.add([record])
    assert unwritten.read(spend_subject({"workflow": "w"}), None, lambda: 1.0) == 1.5
    assert unwritten.read(spend_subject({"execution_id": "e", "workflow": "w"}), NOW, lambda: 0.0) == 0.5
    assert unwritten.read("k", None, lambda: 0.0) == 0.5
    unwritten.committed([record])
    assert unwritten.read(spend_subject({"workflow": "w"}), None, lambda: 1.0) == 1.0
    assert unwritten.keys == 0


def test_key_windows_are_named_as_the_police_stage_names_them() -> None:
    """`budgets list` reads a key's reservations in Redis under the window the police stage counts in."""
    from tokensense.gateway.policy import budget_window

    for period in ("daily", "monthly", "total"):
        assert period_window(period, NOW) == budget_window(period, NOW)


def test_budget_rows_list_keys_then_attribution(session: Session) -> None:
    from tokensense.storage.budgets import budget_rows
    from tokensense.storage.models import ApiKey

    session.add(ApiKey(id="k1", name="ci", key_hash="h", key_prefix="tsk_", budget_usd=5.0, budget_period="daily"))
    session.add(ApiKey(id="k2", name="free", key_hash="h2", key_prefix="tsk_"))
    session.commit()
    repo.record_usages(session=session, usages=[UsageCreate(created_at=NOW, key_id="k1", workflow="w", cost_usd=0.5)])
    set_budget(session=session, level="workflow", name="w", usd=2)
    rows = budget_rows(session, now=NOW, keys=True)
    assert [(r.limit.level, r.limit.name, r.limit.origin, r.spent_usd) for r in rows] == [
        ("key", "ci", "key", 0.5),
        ("workflow", "w", "cli", 0.5),
    ]
    assert rows[0].window == "daily:2026-12-09" and rows[0].reserved_usd is None and rows[1].left_usd == 1.5
    assert [r.limit.level for r in budget_rows(session, now=NOW)] == ["workflow"]

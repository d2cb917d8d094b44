"""Issue 26: each-execution budgets alert at most once per budget and threshold per hour, with how many runs
crossed it since the last alert (one alert per run was noise); other levels alert once per period as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from tokensense.config import AlertsConfig, BudgetsConfig
from tokensense.gateway.budgets import BudgetBook
from tokensense.observability.alerts import AttributionBudgetWatcher, BudgetAlert, FileAlertLedger, alert_payload
from tokensense.storage import repo
from tokensense.storage.models import UsageCreate


@pytest.fixture
def engine():  # type: ignore[no-untyped-def]
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_run_alerts_are_one_summary_per_hour_and_threshold(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    book = BudgetBook(
        None,
        BudgetsConfig.model_validate(
            [
                {"each_execution": True, "workflow": "w", "usd": 1},
                {"workflow": "w", "usd": 1000},
            ]
        ).limits,
    )
    sent: list[BudgetAlert] = []
    now = [datetime(2026, 12, 6, 10, 5, tzinfo=UTC)]
    watcher = AttributionBudgetWatcher(
        engine,
        config=AlertsConfig(webhook_url="http://127.0.0.1:9/x", thresholds=[0.5, 1.0]),
        ledger=FileAlertLedger(tmp_path / "ledger.json"),
        send=sent.append,
        applicable=book.applicable,
        clock=lambda: now[0],
    )

    def run(name: str, cost: float) -> list[BudgetAlert]:
        record = UsageCreate(workflow="w", execution_id=name, cost_usd=cost, request_id=name)
        with Session(engine) as session:
            repo.record_usages(session=session, usages=[record])
        return watcher.check([record])

    first = run("run-1", 0.6)  # crosses 50%: the first alert of the hour
    assert [(a.level, a.threshold, a.runs, a.key_name, a.workflow) for a in first] == [
        ("execution", 0.5, 1, "run-1", "w")
    ]
    for i in range(2, 12):  # ten more runs cross 50% within the hour: held back
        assert run(f"run-{i}", 0.6) == []
    assert run("run-1", 0.0001) == []  # the same run again: counted once
    now[0] += timedelta(minutes=30)
    assert run("run-12", 0.7) == []
    now[0] = datetime(2026, 12, 6, 11, 1, tzinfo=UTC)  # the next hour: one alert sums them up
    (summary,) = run("run-13", 0.6)
    assert (summary.threshold, summary.runs, summary.key_name) == (0.5, 12, "run-13")
    assert "12 run(s) crossed 50%" in alert_payload(summary, "slack")["text"]
    assert alert_payload(summary)["runs"] == 12
    (full,) = run("run-14", 1.5)  # another threshold: its own hourly alert
    assert (full.threshold, full.runs) == (1.0, 1)
    assert len(sent) == 3

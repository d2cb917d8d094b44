"""Issue 26: Prometheus budget gauges for every level (limit, spent, reserved), one series per budget: an
each-execution budget is one series (its workflow), whatever the number of runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from tokensense.config import BudgetsConfig
from tokensense.gateway.limits import MemoryCounters
from tokensense.observability.metrics import BudgetCollector, BudgetGauge, GatewayMetrics, budget_gauges
from tokensense.storage import repo
from tokensense.storage.budgets import BudgetLimit, counter_id, period_window, set_budget
from tokensense.storage.models import ApiKey, UsageCreate


@pytest.fixture
def engine():  # type: ignore[no-untyped-def]
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _samples(metrics: GatewayMetrics, name: str) -> dict[tuple[str, str, str], float]:
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[(sample.labels["level"], sample.labels["name"], sample.labels["period"])] = sample.value
    return out


async def test_every_level_has_limit_spent_and_reserved_and_runs_are_one_series(engine) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    configured = BudgetsConfig.model_validate([{"project": "p", "usd": 100}]).limits
    with Session(engine) as session:
        session.add(
            ApiKey(id="k1", name="team", key_hash="h", key_prefix="ts-", budget_usd=50.0, budget_period="total")
        )
        session.commit()
        set_budget(session=session, level="workflow", name="w", usd=10.0, period="day")
        set_budget(session=session, level="execution", name="w", usd=2.0, period="total")
        records = [
            UsageCreate(
                created_at=now - timedelta(minutes=5),
                key_id="k1",
                project="p",
                workflow="w",
                execution_id=f"run-{i}",
                cost_usd=0.1 * (i + 1),
            )
            for i in range(40)  # forty runs: still one series for their budget
        ]
        repo.record_usages(session=session, usages=records)
    counters = MemoryCounters()
    workflow = BudgetLimit("workflow", "w", 10.0, "day")
    window = period_window("day")[0]
    await counters.reserve_budget(counter_id(workflow), window, 10.0, 0.75, lambda: 0.0, None)

    metrics = GatewayMetrics(process_metrics=False)
    metrics.watch_budgets(lambda: budget_gauges(engine, configured=configured, held=counters.held))
    limits = _samples(metrics, "tokensense_budget_level_limit_usd")
    spent = _samples(metrics, "tokensense_budget_level_spent_usd")
    reserved = _samples(metrics, "tokensense_budget_level_reserved_usd")
    assert limits == {
        ("key", "team", "total"): 50.0,
        ("project", "p", "total"): 100.0,
        ("workflow", "w", "day"): 10.0,
        ("execution", "w", "total"): 2.0,
    }
    total = sum(r.cost_usd or 0 for r in records)
    assert spent[("key", "team", "total")] == pytest.approx(total)
    assert spent[("project", "p", "total")] == pytest.approx(total)
    assert spent[("workflow", "w", "day")] == pytest.approx(total)
    assert spent[("execution", "w", "total")] == pytest.approx(4.0)  # the costliest run
    assert reserved[("workflow", "w", "day")] == pytest.approx(0.75)
    assert reserved[("project", "p", "total")] == 0.0
    assert len(reserved) == 4


def test_the_rows_are_read_at_most_once_per_ttl() -> None:
    reads = []
    now = [0.0]

    def read() -> list[BudgetGauge]:
        reads.append(now[0])
        return [BudgetGauge("source", "s", "day", 5.0, 1.0, None)]

    collector = BudgetCollector(read, ttl=15.0, clock=lambda: now[0])
    families = {f.name: f for f in collector.collect()}
    assert families["tokensense_budget_level_spent_usd"].samples[0].value == 1.0
    assert families["tokensense_budget_level_reserved_usd"].samples == []  # not known here: no series
    now[0] = 10.0
    list(collector.collect())
    now[0] = 16.0
    list(collector.collect())
    assert reads == [0.0, 16.0]

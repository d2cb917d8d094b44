"""The Textual dashboard, driven with Textual's pilot on SQLite files filled by the tests."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from textual.pilot import Pilot
from textual.widgets import DataTable, Static, TabbedContent
from textual.worker import WorkerCancelled

from tokensense.storage import repo
from tokensense.storage.db import init_db, make_engine
from tokensense.storage.models import ApiKey, UsageCreate
from tui.app import DashboardApp, run
from tui.formatting import format_cost, format_count
from tui.widgets import BudgetBar, RequestLog, SpendTable

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
"""The dashboards under test see this frozen clock, so windows and snapshots are stable."""

MAX_WAITS = 200
"""Bound on the pauses spent waiting for a poll (no test depends on how long one takes)."""

RECORDS: list[dict[str, object]] = [
    # minutes ago, then the usage fields
    dict(ago=2, workflow="support-bot", step="classify", execution_id="run-01", provider="openai", model="gpt-4o",
         key_name="prod", key_id="k-prod", project="web", source="api", status=200,
         input_tokens=1200, output_tokens=80, cost_usd=0.0038, latency_ms=640),
    dict(ago=3, workflow="support-bot", step="classify", execution_id="run-02", provider="openai", model="gpt-4o",
         key_name="prod", key_id="k-prod", project="web", source="api", status=200,
         input_tokens=900, output_tokens=60, cost_usd=0.0029, latency_ms=510),
    dict(ago=4, workflow="support-bot", step="answer", execution_id="run-01", provider="anthropic",
         model="claude-sonnet-4-5", key_name="prod", key_id="k-prod", project="web", source="api", status=200,
         input_tokens=5200, output_tokens=700, cost_usd=0.0261, latency_ms=4200),
    dict(ago=7, workflow="support-bot", step="answer", execution_id="run-02", provider="anthropic",
         model="claude-sonnet-4-5", key_name="prod", key_id="k-prod", project="web", source="api", status=529,
         input_tokens=0, output_tokens=0, cost_usd=0.0, latency_ms=1900),
    dict(ago=12, workflow="doc-summarizer", step="summarize", execution_id="doc-7", provider="gemini",
         model="gemini-2.5-flash", key_name="batch", key_id="k-batch", project="internal", source="cron", status=200,
         input_tokens=48000, output_tokens=2100, cost_usd=0.0197, latency_ms=8800),
    dict(ago=25, workflow="doc-summarizer", step="chunk", execution_id="doc-7", provider="openai",
         model="gpt-4o-mini", key_name="batch", key_id="k-batch", project="internal", source="cron", status=200,
         input_tokens=3000, output_tokens=400, cost_usd=0.0007, latency_ms=900),
    dict(ago=41, workflow=None, step=None, execution_id=None, provider="xai", model="grok-4",
         key_name="intern", key_id="k-intern", project=None, source="notebook", status=200,
         input_tokens=700, output_tokens=1500, cost_usd=0.0246, latency_ms=12800),
    dict(ago=55, workflow="code-review", step="review", execution_id="pr-311", provider="mistral",
         model="mistral-large-latest", key_name="ci", key_id="k-ci", project="web", source="ci", status=429,
         input_tokens=0, output_tokens=0, cost_usd=0.0, latency_ms=35),
    # Older than the default one-hour window:
    dict(ago=180, workflow="code-review", step="review", execution_id="pr-307", provider="anthropic",
         model="claude-sonnet-4-5", key_name="ci", key_id="k-ci", project="web", source="ci", status=200,
         input_tokens=22000, output_tokens=3100, cost_usd=0.1125, latency_ms=21000),
    dict(ago=60 * 30, workflow="support-bot", step="answer", execution_id="run-00", provider="openai",
         model="gpt-4o", key_name="prod", key_id="k-prod", project="web", source="api", status=200,
         input_tokens=8000, output_tokens=900, cost_usd=0.0290, latency_ms=3100),
    dict(ago=60 * 24 * 3, workflow="doc-summarizer", step="summarize", execution_id="doc-3", provider="gemini",
         model="gemini-2.5-flash", key_name="batch", key_id="k-batch", project="internal", source="cron", status=200,
         input_tokens=61000, output_tokens=2500, cost_usd=0.0240, latency_ms=9900),
]

KEYS = [
    ("prod", 5.0, "monthly"),
    ("batch", 0.05, "daily"),
    ("intern", 0.02, "total"),
    ("ci", None, "total"),
]


def fill(engine: Engine) -> None:
    with Session(engine) as session:
        for name, budget, period in KEYS:
            session.add(
                ApiKey(
                    id=f"k-{name}",
                    name=name,
                    key_hash=f"hash-{name}",
                    key_prefix="tsk_test",
                    budget_usd=budget,
                    budget_period=period,
                    created_at=NOW - timedelta(days=60),
                )
            )
        session.commit()
        records = []
        for fields in RECORDS:
            fields = dict(fields)
            ago = fields.pop("ago")
            assert isinstance(ago, int)
            records.append(UsageCreate(created_at=NOW - timedelta(minutes=ago), endpoint="/v1/chat/completions", **fields))  # type: ignore[arg-type]
        repo.record_usages(session=session, usages=records)  # as the gateway writes them: records and rollups


def expected(*, within: timedelta | None) -> list[dict[str, object]]:
    return [r for r in RECORDS if within is None or timedelta(minutes=r["ago"]) <= within]  # type: ignore[arg-type]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'dashboard.db'}")
    init_db(engine)
    fill(engine)
    yield engine
    engine.dispose()


def make_app(engine: Engine, **options: object) -> DashboardApp:
    return DashboardApp(engine, clock=lambda: NOW, poll_interval=0.05, **options)  # type: ignore[arg-type]


async def idle(pilot: Pilot[None], app: DashboardApp) -> None:
    """Let the running polls finish and their messages be handled."""
    try:
        await app.workers.wait_for_complete()
    except WorkerCancelled:
        pass  # a newer view replaced that poll (exclusive workers)
    # A short sleep, not `pause()`: that waits for the CPU to go idle, which a
    # dashboard polling every 50 ms never quite does.
    await pilot.pause(0.01)


async def settle(pilot: Pilot[None], app: DashboardApp) -> None:
    """Wait until the screen shows a poll's answer for the current view."""
    for _ in range(MAX_WAITS):
        await idle(pilot, app)
        if app.snapshot is not None and app.snapshot.query == app.current_query():
            return
    raise AssertionError("the dashboard never showed data for the current view")


def text_of(app: DashboardApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def column(table: DataTable, index: int = 0) -> list[str]:
    return [str(table.get_row_at(row)[index]) for row in range(table.row_count)]


async def test_header_totals_equal_the_records(engine: Engine) -> None:
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        records = expected(within=timedelta(hours=1))
        cost = sum(float(r["cost_usd"]) for r in records)  # type: ignore[arg-type]
        assert app.snapshot is not None
        totals = app.snapshot.totals
        assert totals.requests == len(records) == 8
        assert totals.cost_usd == pytest.approx(cost)
        assert totals.input_tokens == sum(int(r["input_tokens"]) for r in records)  # type: ignore[call-overload]
        assert totals.output_tokens == sum(int(r["output_tokens"]) for r in records)  # type: ignore[call-overload]
        assert totals.errors == 2
        summary = text_of(app, "#summary")
        assert format_cost(cost) in summary
        assert f"{format_count(len(records))} req" in summary
        assert "2 errors" in summary
        groups = app.query_one("#groups", SpendTable)
        assert column(groups) == ["support-bot", "(none)", "doc-summarizer", "code-review"]
        assert sum(row.requests for row in groups.rows_shown) == 8


async def test_enter_drills_into_steps_then_executions_and_escape_goes_back(engine: Engine) -> None:
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        groups = app.query_one("#groups", SpendTable)
        groups.move_cursor(row=groups.get_row_index("support-bot"))
        await pilot.press("enter")
        await settle(pilot, app)
        assert groups.field == "step"
        assert column(groups) == ["answer", "classify"]
        assert "support-bot" in text_of(app, "#breadcrumb")

        groups.move_cursor(row=groups.get_row_index("classify"))
        await pilot.press("enter")
        await settle(pilot, app)
        assert groups.field == "execution_id"
        assert sorted(column(groups)) == ["run-01", "run-02"]
        assert [row.cost_usd for row in groups.rows_shown] == [0.0038, 0.0029]
        crumb = text_of(app, "#breadcrumb")
        assert "support-bot" in crumb and "classify" in crumb and "executions" in crumb

        await pilot.press("escape")
        await settle(pilot, app)
        assert groups.field == "step"
        assert app.drill == ("support-bot",)
        await pilot.press("backspace")
        await settle(pilot, app)
        assert groups.field == "workflow"
        assert "support-bot" in column(groups)


async def test_drilling_into_records_without_a_workflow(engine: Engine) -> None:
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        groups = app.query_one("#groups", SpendTable)
        groups.move_cursor(row=column(groups).index("(none)"))
        await pilot.press("enter")
        await settle(pilot, app)
        assert app.drill == (None,)
        assert column(groups) == ["(none)"]
        assert groups.rows_shown[0].requests == 1


async def test_grouping_keys_and_window_keys_change_the_table(engine: Engine) -> None:
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        groups = app.query_one("#groups", SpendTable)

        await pilot.press("m")
        await settle(pilot, app)
        assert groups.field == "model"
        assert column(groups) == [
            "claude-sonnet-4-5", "grok-4", "gemini-2.5-flash", "gpt-4o", "gpt-4o-mini", "mistral-large-latest"
        ]
        await pilot.press("p")
        await settle(pilot, app)
        assert set(column(groups)) == {"openai", "anthropic", "gemini", "xai", "mistral"}
        await pilot.press("o")
        await settle(pilot, app)
        assert set(column(groups)) == {"web", "internal", "(none)"}
        await pilot.press("s")
        await settle(pilot, app)
        assert set(column(groups)) == {"api", "cron", "notebook", "ci"}
        await pilot.press("k")
        await settle(pilot, app)
        assert groups.field == "key_name"
        assert set(column(groups)) == {"prod", "batch", "intern", "ci"}

        # A wider window takes in the older records.
        await pilot.press("3")
        await settle(pilot, app)
        assert app.window == "24h"
        assert app.snapshot is not None
        assert app.snapshot.totals.requests == len(expected(within=timedelta(hours=24))) == 9
        ci = next(row for row in groups.rows_shown if row.value == "ci")
        assert ci.cost_usd == pytest.approx(0.1125)
        await pilot.press("5")
        await settle(pilot, app)
        assert app.snapshot.totals.requests == len(RECORDS)
        await pilot.press("1")
        await settle(pilot, app)
        assert app.snapshot.totals.requests == len(expected(within=timedelta(minutes=15))) == 5
        await pilot.press("t")
        await settle(pilot, app)
        assert app.window == "1h"

        await pilot.press("w")
        await settle(pilot, app)
        assert groups.field == "workflow"


async def test_a_record_written_while_the_dashboard_runs_appears(engine: Engine) -> None:
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        assert app.snapshot is not None
        before = app.snapshot.totals
        with Session(engine) as session:
            repo.record_usages(session=session, usages=[
                UsageCreate(
                    created_at=NOW - timedelta(seconds=5),
                    workflow="fresh-workflow",
                    step="only",
                    model="gpt-4o-mini",
                    status=200,
                    input_tokens=10,
                    output_tokens=5,
                    cost_usd=0.5,
                    latency_ms=120,
                )
            ])
        for _ in range(MAX_WAITS):
            await idle(pilot, app)
            if app.snapshot.totals.requests == before.requests + 1:
                break
        assert app.snapshot.totals.requests == before.requests + 1
        assert app.snapshot.totals.cost_usd == pytest.approx(before.cost_usd + 0.5)
        groups = app.query_one("#groups", SpendTable)
        assert column(groups)[0] == "fresh-workflow"
        log = app.query_one("#log", RequestLog)
        assert str(log.get_row_at(0)[3]) == "fresh-workflow"


async def test_an_idle_dashboard_does_not_rerun_the_queries(engine: Engine) -> None:
    app = DashboardApp(engine, clock=lambda: NOW, poll_interval=0.02, stale_after=3600)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        shown = app.refresh_count
        for _ in range(10):
            await pilot.pause(0.02)
            await idle(pilot, app)
        # Polls ran (the change marker), but nothing changed, so nothing was redrawn.
        assert app.refresh_count == shown


async def test_budget_bars_and_request_log(engine: Engine) -> None:
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        await pilot.press("b")
        await idle(pilot, app)
        assert app.query_one("#tabs", TabbedContent).active == "tab-budgets"
        bars = {bar.budget.name: bar for bar in app.query(BudgetBar) if bar.budget}
        assert list(bars) == ["intern", "batch", "prod", "ci"]
        intern = bars["intern"].budget
        assert intern is not None and intern.fraction == pytest.approx(0.0246 / 0.02)
        rendered = {name: str(bar.render()) for name, bar in bars.items()}
        assert "123%" in rendered["intern"] and "$0.0246 / $0.0200 total" in rendered["intern"]
        assert "$0.0204 / $0.0500 today" in rendered["batch"]
        assert "no budget" in rendered["ci"]

        await pilot.press("l")
        await idle(pilot, app)
        log = app.query_one("#log", RequestLog)
        assert log.row_count == len(RECORDS)
        first = [str(cell) for cell in log.get_row_at(0)]
        assert first == ["11:58:00", "200", "gpt-4o", "support-bot", "640ms", "1.28k", "$0.0038"]
        statuses = column(log, 1)
        assert "529" in statuses and "429" in statuses
        assert str(log.get_row_at(len(RECORDS) - 1)[0]) == "06-12 12:00"


async def test_readable_at_80_by_24(engine: Engine) -> None:
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        groups = app.query_one("#groups", SpendTable)
        assert groups.region.width == 80
        assert groups.region.height >= 10  # header and rows, below the header block and tabs
        assert groups.row_count == 4
        for key in ("b", "l", "d"):
            await pilot.press(key)
            await idle(pilot, app)
        assert app.query_one("#tabs", TabbedContent).active == "tab-spend"


async def test_database_errors_are_shown_not_raised(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no tables
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(MAX_WAITS):
            await idle(pilot, app)
            if "database unavailable" in text_of(app, "#summary"):
                break
        assert "database unavailable" in text_of(app, "#summary")
        assert app.snapshot is None
    engine.dispose()


def test_run_reports_an_unreachable_database(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(database_url="postgresql://tokensense:secret@127.0.0.1:1/tokensense")
    assert run(args) == 1
    error = capsys.readouterr().err
    assert "cannot open the database" in error
    assert "secret" not in error


def test_run_refuses_an_unknown_window(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(argparse.Namespace(database_url="sqlite://", window="2h")) == 2
    assert "unknown window '2h'" in capsys.readouterr().err


async def test_an_empty_database_says_so(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    init_db(engine)
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app)
        assert "no calls in the last 1h" in text_of(app, "#breadcrumb")
        assert app.query_one("#no-keys", Static).display
        assert app.query_one("#groups", SpendTable).row_count == 0
    engine.dispose()


# Snapshots: fixed data, frozen clock, fixed terminal size.


def snapshot_app(tmp_path: Path) -> DashboardApp:
    engine = make_engine(f"sqlite:///{tmp_path / 'snapshot.db'}")
    init_db(engine)
    fill(engine)
    return DashboardApp(engine, clock=lambda: NOW, poll_interval=0.05)


def test_snapshot_overview(snap_compare, tmp_path: Path) -> None:
    app = snapshot_app(tmp_path)

    async def loaded(pilot: Pilot[None]) -> None:
        await settle(pilot, app)

    assert snap_compare(app, terminal_size=(100, 30), run_before=loaded)


def test_snapshot_executions_at_80x24(snap_compare, tmp_path: Path) -> None:
    app = snapshot_app(tmp_path)

    async def drill(pilot: Pilot[None]) -> None:
        await settle(pilot, app)
        await pilot.press("enter")  # support-bot, the most expensive workflow
        await settle(pilot, app)
        await pilot.press("down", "enter")  # its second step, classify
        await settle(pilot, app)

    assert snap_compare(app, terminal_size=(80, 24), run_before=drill)


def add_attribution_budgets(engine: Engine) -> list[object]:
    """Budgets on a workflow, a project and each run in the database; one on a source from config.toml."""
    from tokensense.config import BudgetRule
    from tokensense.storage.budgets import set_budget

    with Session(engine) as session:
        set_budget(session=session, level="workflow", name="support-bot", usd=0.05, period="day")
        set_budget(session=session, level="project", name="web", usd=1.0, period="month")
        set_budget(session=session, level="execution", name=None, usd=0.03, period="total")
    return [BudgetRule(source="cron", usd=0.02, period="week")]


async def test_budgets_tab_lists_budgets_on_attribution(engine: Engine) -> None:
    """Issue 26: the Budgets tab lists every budget on attribution: level, name, period, spent, limit, a bar."""
    from tui.widgets import LimitBar

    configured = add_attribution_budgets(engine)
    app = DashboardApp(engine, clock=lambda: NOW, poll_interval=0.05, budgets_config=configured)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        await pilot.press("b")
        await idle(pilot, app)
        bars = {LimitBar.title(bar.row): str(bar.render()) for bar in app.query(LimitBar) if bar.row}
        assert list(bars) == ["project web", "workflow support-bot", "source cron", "each run (run-01)"]
        today = sum(float(r["cost_usd"]) for r in RECORDS  # type: ignore[arg-type]
                    if r["workflow"] == "support-bot" and NOW - timedelta(minutes=int(r["ago"])) >= NOW.replace(  # type: ignore[call-overload]
                        hour=0, minute=0, second=0, microsecond=0))
        assert f"{format_cost(today)} / $0.0500 today" in bars["workflow support-bot"]
        assert "this month" in bars["project web"] and "this week" in bars["source cron"]
        # The costliest of the runs of the last hour (pr-307, 3 hours ago, spent more).
        assert "$0.0299 / $0.0300 total" in bars["each run (run-01)"]
        assert app.query_one("#limits-title", Static).display


def test_snapshot_budgets(snap_compare, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'snapshot.db'}")
    init_db(engine)
    fill(engine)
    configured = add_attribution_budgets(engine)
    app = DashboardApp(engine, clock=lambda: NOW, poll_interval=0.05, budgets_config=configured)

    async def budgets(pilot: Pilot[None]) -> None:
        await settle(pilot, app)
        await pilot.press("b")
        await settle(pilot, app)

    assert snap_compare(app, terminal_size=(100, 30), run_before=budgets)



async def test_pruned_records_keep_the_totals_and_the_drill_down_says_so(engine: Engine) -> None:
    """After retention pruned records older than a day, the totals over all time are unchanged (hour
    rollups), and the drill-down to executions, which reads records, says that it misses some."""
    from tokensense.storage.retention import prune_usage

    app = make_app(engine, window="all")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        assert app.snapshot is not None
        before = app.snapshot.totals
    prune_usage(engine, older_than=timedelta(days=1), now=NOW)
    app = make_app(engine, window="all")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, app)
        assert app.snapshot is not None and app.snapshot.totals == before
        assert "pruned" not in text_of(app, "#breadcrumb")  # workflows come from the rollups
        groups = app.query_one("#groups", SpendTable)
        groups.move_cursor(row=groups.get_row_index("doc-summarizer"))
        await pilot.press("enter")
        await settle(pilot, app)
        groups.move_cursor(row=groups.get_row_index("summarize"))
        await pilot.press("enter")
        await settle(pilot, app)
        assert groups.field == "execution_id"
        assert app.snapshot.drill_reaches_pruned
        assert "records before" in text_of(app, "#breadcrumb") and "pruned" in text_of(app, "#breadcrumb")

"""The dashboard app: live spend by workflow (drilling into steps and executions), keys and calls."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from textual import on, work
from textual.app import App, ComposeResult, ScreenStackError
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.reactive import reactive
from textual.widgets import DataTable, Footer, Sparkline, Static, TabbedContent, TabPane
from textual.worker import Worker, get_current_worker

from tokensense.storage.analytics import (
    DRILL_PATH,
    WINDOWS,
    ChangeMarker,
    DashboardQuery,
    DashboardSnapshot,
    change_marker,
    dashboard_snapshot,
)
from tokensense.storage.budgets import BudgetRow, budget_rows, budgets_fingerprint
from tui.formatting import format_cost, format_count, format_span, format_tokens
from tui.messages import DashboardRefreshed, DatabaseUnavailable
from tui.widgets import BudgetBar, ChoiceStrip, LimitBar, RequestLog, SpendTable

GROUPINGS: tuple[tuple[str, str, str], ...] = (
    # (usage field, text in the strip, key)
    ("workflow", "workflow", "w"),
    ("model", "model", "m"),
    ("provider", "provider", "p"),
    ("project", "project", "o"),
    ("source", "source", "s"),
    ("key_name", "key", "k"),
)
"""The groupings the spend table offers; workflow drills into steps and executions."""

PLURALS = {
    "workflow": "workflows",
    "step": "steps",
    "execution_id": "executions",
    "model": "models",
    "provider": "providers",
    "project": "projects",
    "source": "sources",
    "key_name": "keys",
}

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


_GROUP = Binding.Group("Group", compact=True)
_WINDOW = Binding.Group("Window", compact=True)
_TAB = Binding.Group("Tab", compact=True)


class DashboardApp(App[None]):
    """Live spend from the usage table, refreshed by a polling worker thread."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "TokenSense"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS = [
        Binding("enter", "drill", "Drill in"),
        Binding("escape,backspace", "back", "Back"),
        *(
            Binding(key, f"group_by({field!r})", text, group=_GROUP)
            for field, text, key in GROUPINGS
        ),
        *(
            Binding(str(number), f"set_window({window!r})", window, group=_WINDOW)
            for number, window in enumerate(WINDOWS, start=1)
        ),
        Binding("t", "next_window", "Next window", show=False),
        Binding("d", "show_tab('tab-spend')", "Spend", group=_TAB),
        Binding("b", "show_tab('tab-budgets')", "Budgets", group=_TAB),
        Binding("l", "show_tab('tab-log')", "Log", group=_TAB),
        Binding("r", "refresh_now", "Refresh"),
        Binding("q", "quit", "Quit"),
    ]

    window: reactive[str] = reactive("1h", init=False)
    """The time window shown (a key of `WINDOWS`)."""

    grouping: reactive[str] = reactive("workflow", init=False)
    """The usage field the spend table groups by at the top level."""

    drill: reactive[tuple[str | None, ...]] = reactive((), init=False)
    """The workflow (and step) drilled into, along `DRILL_PATH`; empty at the top."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock = utc_now,
        window: str = "1h",
        grouping: str = "workflow",
        poll_interval: float = 0.5,
        stale_after: float = 5.0,
        budgets_config: Sequence[object] = (),
        redis_url: str | None = None,
    ) -> None:
        """`clock` gives the current time (aware, or naive UTC); tests freeze it.

        Every `poll_interval` seconds a worker reads a cheap change marker and
        runs the full queries only when it moved, when the view changed, or when
        the last full refresh is `stale_after` seconds old (the window slides).
        `budgets_config` are config.toml's `[[budgets]]` (shown with the database's); with `redis_url`
        the Budgets tab shows what calls in flight reserve.
        """
        super().__init__()
        if window not in WINDOWS:
            raise ValueError(f"unknown time window {window!r}: use one of {', '.join(WINDOWS)}")
        if grouping not in {field for field, _, _ in GROUPINGS}:
            raise ValueError(f"cannot group the dashboard by {grouping!r}")
        self.engine = engine
        self.clock = clock
        self.poll_interval = poll_interval
        self.stale_after = stale_after
        self.set_reactive(DashboardApp.window, window)
        self.set_reactive(DashboardApp.grouping, grouping)
        self.budgets_config = list(budgets_config)
        self.redis_url = redis_url
        self.limits: list[BudgetRow] = []
        """The budgets on attribution on screen, with their spend."""
        self._budgets_mark: tuple[Any, ...] | None = None
        self.snapshot: DashboardSnapshot | None = None
        """The numbers on screen (`None` until the first poll answered)."""
        self.refresh_count = 0
        """How many snapshots were shown (tests wait on it)."""
        self._poll_worker: Worker[None] | None = None
        self._polling_query: DashboardQuery | None = None
        self._last_full_refresh = float("-inf")
        self._last_query_seconds = 0.0
        self._database_error: str | None = None

    # Layout

    def compose(self) -> ComposeResult:
        with Vertical(id="header"):
            with Horizontal(id="title-row"):
                yield Static("TokenSense", id="title")
                yield ChoiceStrip(
                    "window",
                    [(name, name) for name in WINDOWS],
                    action="set_window",
                    active=self.window,
                    id="windows",
                )
            yield Static("loading…", id="summary")
            with Horizontal(id="spark-row"):
                yield Static("", id="spark-label")
                yield Sparkline([], id="spark")
        with TabbedContent(id="tabs", initial="tab-spend"):
            with TabPane("Spend", id="tab-spend"):
                yield ChoiceStrip(
                    "by",
                    [(field, text) for field, text, _ in GROUPINGS],
                    action="group_by",
                    active=self.grouping,
                    id="groupings",
                )
                yield Static("", id="breadcrumb")
                yield SpendTable(id="groups")
            with TabPane("Budgets", id="tab-budgets"):
                yield Static("No keys yet: create one with `tokensense keys create NAME`.", id="no-keys")
                with VerticalScroll(id="budgets"):
                    yield Vertical(id="key-budgets")
                    yield Static("Budgets on projects, workflows, sources and runs", id="limits-title")
                    yield Vertical(id="limits")
            with TabPane("Log", id="tab-log"):
                yield RequestLog(id="log")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._show_breadcrumb()
        self.query_one("#groups", SpendTable).focus()
        self.set_interval(self.poll_interval, self._poll_tick)
        self.request_refresh(force=True)

    # Polling

    def current_query(self) -> DashboardQuery:
        """The queries the screen needs now, from the window, grouping and drill-down."""
        if self.grouping == "workflow":
            by = DRILL_PATH[len(self.drill)]
            filters = tuple(zip(DRILL_PATH, self.drill))
        else:
            by, filters = self.grouping, ()
        sparks = self.query("#spark")
        width = sparks.first().size.width if sparks else 0
        return DashboardQuery(window=self.window, group_by=by, filters=filters, buckets=max(width, 10) if width else 60)

    def _widgets_present(self) -> bool:
        """False while the app shuts down: its widgets are gone, late ticks and messages remain."""
        try:
            return bool(self.query("#spark"))
        except ScreenStackError:
            return False

    def _poll_tick(self) -> None:
        if not self._widgets_present():
            return
        # On a big database a full refresh can take a good part of a second: leave
        # the worker idle at least as long as the last one took, so a busy gateway
        # does not keep the dashboard querying back to back.
        if time.monotonic() - self._last_full_refresh < self._last_query_seconds:
            return
        self.request_refresh(force=False)

    def request_refresh(self, *, force: bool) -> None:
        """Start a poll unless one for the same view is already running.

        `force` runs the full queries even if the change marker has not moved.
        """
        query = self.current_query()
        shown = self.snapshot.query if self.snapshot else None
        force = force or query != shown or time.monotonic() - self._last_full_refresh >= self.stale_after
        running = self._poll_worker is not None and not self._poll_worker.is_finished
        if running and query == self._polling_query:
            return
        known = None if force or self.snapshot is None else self.snapshot.marker
        self._polling_query = query
        self._poll_worker = self._poll_database(query, known)

    @work(thread=True, exclusive=True, group="poll")
    def _poll_database(self, query: DashboardQuery, known: ChangeMarker | None) -> None:
        """Read the database in a thread and post what changed; never touches widgets."""
        worker = get_current_worker()
        now = self.clock()
        started = time.perf_counter()
        try:
            with Session(self.engine) as session:
                marker = change_marker(session=session)
                budgets_mark = _budgets_mark(session)
                if marker == known and budgets_mark == self._budgets_mark:
                    return
                snapshot = dashboard_snapshot(session=session, query=query, now=now, marker=marker)
                limits = budget_rows(session, configured=self.budgets_config, redis_url=self.redis_url, now=now) \
                    if budgets_mark is not None else []
        except SQLAlchemyError as error:
            if not worker.is_cancelled:
                self.post_message(DatabaseUnavailable(str(error).splitlines()[0]))
            return
        if not worker.is_cancelled:
            self.post_message(DashboardRefreshed(snapshot, time.perf_counter() - started, limits, budgets_mark))

    @on(DashboardRefreshed)
    def _show_snapshot(self, message: DashboardRefreshed) -> None:
        snapshot = message.snapshot
        if not self._widgets_present():
            return
        if snapshot.query != self.current_query():
            return  # the view changed while this poll ran; a newer one is on its way
        self.snapshot = snapshot
        self.refresh_count += 1
        self._last_full_refresh = time.monotonic()
        self._last_query_seconds = message.seconds
        if self._database_error is not None:
            self._database_error = None
            self.notify("The database answers again.", title="Database")
        self._show_summary(snapshot)
        self._show_breadcrumb()
        self._show_sparkline(snapshot)
        self.query_one("#groups", SpendTable).show_groups(snapshot.groups, field=snapshot.query.group_by)
        self._show_budgets(snapshot)
        self._budgets_mark = message.budgets_mark
        self._show_limits(message.limits)
        self.query_one("#log", RequestLog).show_records(snapshot.recent, now=snapshot.now)

    @on(DatabaseUnavailable)
    def _show_database_error(self, message: DatabaseUnavailable) -> None:
        if not self._widgets_present():
            return
        if message.error != self._database_error:
            self.notify(
                f"{message.error}\nCheck that the database is up; the dashboard keeps retrying.",
                title="Cannot read the database",
                severity="error",
            )
        self._database_error = message.error
        self.query_one("#summary", Static).update(
            Content.from_markup("[b $error]database unavailable[/] [dim]retrying…[/]")
        )

    # Showing a snapshot

    def _show_summary(self, snapshot: DashboardSnapshot) -> None:
        totals = snapshot.totals
        errors = (
            Content.from_markup(" · [b $error]$n errors[/]", n=format_count(totals.errors))
            if totals.errors
            else Content("")
        )
        unpriced = (
            Content.from_markup(" · [b $warning]$n unpriced[/]", n=format_count(totals.unpriced))
            if totals.unpriced
            else Content("")
        )
        summary = Content.assemble(
            Content.from_markup("[b $success]$cost[/]", cost=format_cost(totals.cost_usd)),
            Content.from_markup(
                " · [b]$requests[/] req · [b]$input[/] in · [b]$output[/] out",
                requests=format_count(totals.requests),
                input=format_tokens(totals.input_tokens),
                output=format_tokens(totals.output_tokens),
            ),
            errors,
            unpriced,
        )
        self.query_one("#summary", Static).update(summary)

    def _show_sparkline(self, snapshot: DashboardSnapshot) -> None:
        series = snapshot.series
        self.query_one("#spark", Sparkline).data = list(series.values)
        peak = max(series.values, default=0.0)
        self.query_one("#spark-label", Static).update(
            Content.from_markup(
                "[dim]per $span[/]\n[dim]max[/] $peak",
                span=format_span(series.bucket.total_seconds()),
                peak=format_cost(peak),
            )
        )

    def _show_limits(self, limits: list[BudgetRow]) -> None:
        self.limits = limits
        container = self.query_one("#limits", Vertical)
        bars = list(container.query_children(LimitBar))
        if [bar.row.limit if bar.row else None for bar in bars] == [row.limit for row in limits]:
            for bar, row in zip(bars, limits):
                bar.row = row
        else:
            container.remove_children()
            container.mount_all(LimitBar(row) for row in limits)
        self.query_one("#limits-title", Static).display = bool(limits)

    def _show_budgets(self, snapshot: DashboardSnapshot) -> None:
        container = self.query_one("#key-budgets", Vertical)
        bars = list(container.query_children(BudgetBar))
        names = [bar.budget.key_id if bar.budget else None for bar in bars]
        if names == [budget.key_id for budget in snapshot.budgets]:
            for bar, budget in zip(bars, snapshot.budgets):
                bar.budget = budget
        else:
            container.remove_children()
            container.mount_all(BudgetBar(budget) for budget in snapshot.budgets)
        self.query_one("#no-keys", Static).display = not snapshot.budgets

    def _show_breadcrumb(self) -> None:
        crumb = self.query_one("#breadcrumb", Static)
        parts: list[Content | str] = []
        if self.grouping != "workflow":
            parts.append(Content.from_markup("[dim]all $what[/]", what=PLURALS[self.grouping]))
        else:
            parts.append(Content.from_markup("[dim]all workflows[/]"))
            for value in self.drill:
                shown = "(none)" if value is None else value
                parts.append(Content.from_markup(" [dim]›[/] [b]$value[/]", value=shown))
            if self.drill:
                parts.append(Content.from_markup(" [dim]› $what[/]", what=PLURALS[DRILL_PATH[len(self.drill)]]))
        snapshot = self.snapshot
        if snapshot is not None and not snapshot.groups and snapshot.query == self.current_query():
            window = "ever" if self.window == "all" else f"in the last {self.window}"
            parts.append(Content.from_markup("  [i $text-warning]no calls $window[/]", window=window))
        if (snapshot is not None and snapshot.query == self.current_query() and snapshot.drill_reaches_pruned
                and snapshot.raw_before is not None):
            # Execution ids are read from records; retention deleted those before raw_before.
            parts.append(Content.from_markup("  [i $text-warning]records before $when pruned[/]",
                                             when=f"{snapshot.raw_before:%Y-%m-%d %H:%M}"))
        crumb.update(Content.assemble(*parts))

    # View changes

    def watch_window(self, window: str) -> None:
        self.query_one("#windows", ChoiceStrip).active = window
        self.request_refresh(force=True)

    def watch_grouping(self, grouping: str) -> None:
        self.query_one("#groupings", ChoiceStrip).active = grouping
        self._show_breadcrumb()
        self.request_refresh(force=True)

    def watch_drill(self, drill: tuple[str | None, ...]) -> None:
        self._show_breadcrumb()
        self.request_refresh(force=True)

    def drill_into(self, value: str | None) -> None:
        """Show the steps of a workflow, or the executions of a step."""
        if self.grouping != "workflow":
            self.notify("Drill-down goes from workflows to steps to executions: press w to group by workflow.")
            return
        if len(self.drill) + 1 >= len(DRILL_PATH):
            self.notify("Executions are the deepest level: press Escape to go back up.")
            return
        self.drill = (*self.drill, value)

    @on(DataTable.RowSelected, "#groups")
    def _group_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        table = self.query_one("#groups", SpendTable)
        found, value = table.selected_value()
        if found:
            self.drill_into(value)

    def action_drill(self) -> None:
        if self.query_one("#tabs", TabbedContent).active != "tab-spend":
            return
        found, value = self.query_one("#groups", SpendTable).selected_value()
        if found:
            self.drill_into(value)

    def action_back(self) -> None:
        if self.drill:
            self.drill = self.drill[:-1]

    def action_group_by(self, field: str) -> None:
        self.drill = ()
        self.grouping = field
        self.action_show_tab("tab-spend")

    def action_set_window(self, window: str) -> None:
        self.window = window

    def action_next_window(self) -> None:
        names = list(WINDOWS)
        self.window = names[(names.index(self.window) + 1) % len(names)]

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab

    def action_refresh_now(self) -> None:
        self.request_refresh(force=True)

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        focus = {"tab-spend": "#groups", "tab-log": "#log"}.get(event.pane.id or "")
        if focus:
            self.query_one(focus).focus()


def read_only(engine: Engine) -> None:
    """Every connection of `engine` refuses writes (SQLite `query_only`, PostgreSQL read-only transactions)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _refuse_writes(connection: Any, record: Any) -> None:
        cursor = connection.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute("PRAGMA query_only = ON")
        elif engine.dialect.name == "postgresql":
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            connection.commit()
        cursor.close()


def _budgets_mark(session: Session) -> tuple[Any, ...] | None:
    """Changes when a budget on attribution is set or removed; None without the budgets table (not upgraded)."""
    try:
        return budgets_fingerprint(session)
    except SQLAlchemyError:
        session.rollback()
        return None


def run(args: argparse.Namespace) -> int:
    """`tokensense dashboard`: open the database (`args.database_url`, else the settings') and show it."""
    from tokensense.settings import get_settings
    from tokensense.storage.db import display_url, init_db, make_engine

    url = getattr(args, "database_url", None) or get_settings().effective_database_url
    window = getattr(args, "window", None) or "1h"
    if window not in WINDOWS:
        print(f"tokensense dashboard: unknown window {window!r}; use one of {', '.join(WINDOWS)}", file=sys.stderr)
        return 2
    try:
        engine = make_engine(url)
        if getattr(args, "read_only", False):
            read_only(engine)  # a browser session (`dashboard --web` upgraded the schema already)
        else:
            init_db(engine)
    except SQLAlchemyError as error:
        reason = str(error).splitlines()[0]
        print(
            f"tokensense dashboard: cannot open the database {display_url(url)}: {reason}\n"
            "Check TOKENSENSE_DATABASE_URL (or --database-url) and that the server is running.",
            file=sys.stderr,
        )
        return 1
    from tokensense.config import ConfigError, load_config

    settings = get_settings()
    try:
        budgets_config: list[object] = list(load_config(settings).budgets.limits)
    except ConfigError:
        budgets_config = []
    app = DashboardApp(engine, window=window, budgets_config=budgets_config, redis_url=settings.redis_url)
    try:
        app.run()
    finally:
        engine.dispose()
    return app.return_code or 0

"""One budget on attribution as a bar: level and name, bar, percent, spent (+ reserved) / limit and period."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tokensense.storage.budgets import BudgetRow
from tui.formatting import format_cost
from tui.widgets.spend_bar import spend_line

PERIOD_NAMES = {"total": "total", "month": "this month", "week": "this week", "day": "today"}


class LimitBar(Widget):
    """A project, workflow, source or each-execution budget: its spend and reservations against its limit.

    The bar fills with what is spent (green below 75 %, amber below 100 %, red at or over), then with what
    calls in flight reserve (dim), when that is known (Redis).
    """

    DEFAULT_CSS = """
    LimitBar {
        height: 1;
        & > .limit-bar--ok { color: $success; }
        & > .limit-bar--warning { color: $warning; }
        & > .limit-bar--over { color: $error; }
        & > .limit-bar--reserved { color: $accent 60%; }
        & > .limit-bar--track { color: $foreground 20%; }
    }
    """

    COMPONENT_CLASSES = {
        "limit-bar--ok",
        "limit-bar--warning",
        "limit-bar--over",
        "limit-bar--reserved",
        "limit-bar--track",
    }

    row: reactive[BudgetRow | None] = reactive(None)
    """The budget and its spend; `None` before the first refresh."""

    def __init__(self, row: BudgetRow, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.set_reactive(LimitBar.row, row)

    @staticmethod
    def title(row: BudgetRow) -> str:
        limit = row.limit
        if limit.level == "execution":  # with the costliest of the runs of the last hour
            title = "each run" + (f" of {limit.name}" if limit.name else "")
            return title + (f" ({row.execution})" if row.execution else "")
        return f"{limit.level} {limit.name}"

    def render(self) -> Text:
        row = self.row
        if row is None:
            return Text()
        width = self.size.width
        limit = row.limit.usd
        period = PERIOD_NAMES.get(row.limit.period, row.limit.period)
        reserved = "" if row.reserved_usd is None else f" +{format_cost(row.reserved_usd)} res"
        return spend_line(
            self, "limit-bar", name=self.title(row), name_width=max(8, min(26, width // 3)),
            info=f"{format_cost(row.spent_usd)}{reserved} / {format_cost(limit)} {period}",
            info_width=max(12, min(34, width // 3)),
            fraction=row.spent_usd / limit if limit > 0 else 1.0,
            held=(row.reserved_usd or 0.0) / limit if limit > 0 else 0.0,
        )

"""One key's spend in its budget period as a bar: name, bar, percent, spent / budget."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tokensense.analytics import KeyBudget
from tui.formatting import format_cost

PERIOD_NAMES = {"total": "total", "monthly": "this month", "daily": "today"}


class BudgetBar(Widget):
    """A key's budget use; green below 75 %, amber below 100 %, red at or over budget."""

    DEFAULT_CSS = """
    BudgetBar {
        height: 1;
        & > .budget-bar--ok { color: $success; }
        & > .budget-bar--warning { color: $warning; }
        & > .budget-bar--over { color: $error; }
        & > .budget-bar--track { color: $foreground 20%; }
        & > .budget-bar--none { color: $foreground 50%; }
    }
    """

    COMPONENT_CLASSES = {
        "budget-bar--ok",
        "budget-bar--warning",
        "budget-bar--over",
        "budget-bar--track",
        "budget-bar--none",
    }

    budget: reactive[KeyBudget | None] = reactive(None)
    """The key's budget and spend; `None` before the first refresh."""

    def __init__(self, budget: KeyBudget, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.set_reactive(BudgetBar.budget, budget)

    def render(self) -> Text:
        budget = self.budget
        if budget is None:
            return Text()
        width = self.size.width
        name_width = max(8, min(20, width // 4))
        name = Text(budget.name[:name_width].ljust(name_width) + " ", style="bold", no_wrap=True)
        period = PERIOD_NAMES.get(budget.budget_period, budget.budget_period)
        fraction = budget.fraction
        if fraction is None or budget.budget_usd is None:
            info = Text(f" {format_cost(budget.spent_usd)} {period}", no_wrap=True)
            bar_width = max(0, width - name.cell_len - info.cell_len)
            middle = Text("no budget".center(bar_width)[:bar_width], style=self.get_component_rich_style("budget-bar--none"))
            return Text.assemble(name, middle, info, no_wrap=True)

        if fraction >= 1:
            level = "budget-bar--over"
        elif fraction >= 0.75:
            level = "budget-bar--warning"
        else:
            level = "budget-bar--ok"
        percent = f"{fraction * 100:4.0f}%"
        info = Text.assemble(
            (f" {percent} ", self.get_component_rich_style(level)),
            f"{format_cost(budget.spent_usd)} / {format_cost(budget.budget_usd)} {period}",
            no_wrap=True,
        )
        bar_width = max(0, width - name.cell_len - info.cell_len)
        filled = min(bar_width, round(min(fraction, 1.0) * bar_width))
        bar = Text.assemble(
            ("━" * filled, self.get_component_rich_style(level)),
            ("━" * (bar_width - filled), self.get_component_rich_style("budget-bar--track")),
        )
        return Text.assemble(name, bar, info, no_wrap=True)

"""One key's spend in its budget period as a bar: name, bar, percent, spent / budget."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tokensense.storage.analytics import KeyBudget
from tui.formatting import format_cost
from tui.widgets.spend_bar import spend_line

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
        # A fixed-width right part keeps the bars of all keys the same length.
        info_width = max(12, min(30, width // 3))
        name = Text(budget.name[:name_width].ljust(name_width) + " ", style="bold", no_wrap=True)
        period = PERIOD_NAMES.get(budget.budget_period, budget.budget_period)
        fraction = budget.fraction
        if fraction is None or budget.budget_usd is None:
            bar_width = max(0, width - name.cell_len - 6 - info_width)
            info = f"{format_cost(budget.spent_usd)} {period}"
            return Text.assemble(
                name,
                ("no budget".ljust(bar_width + 6)[: bar_width + 6], self.get_component_rich_style("budget-bar--none")),
                info[:info_width].ljust(info_width),
                no_wrap=True,
            )

        return spend_line(
            self, "budget-bar", name=budget.name, name_width=name_width,
            info=f"{format_cost(budget.spent_usd)} / {format_cost(budget.budget_usd)} {period}",
            info_width=info_width, fraction=fraction,
        )

"""The grouped spend table: one row per workflow (or step, execution, model, ...)."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from tokensense.storage.analytics import GroupRow
from tui.formatting import format_cost, format_count, format_tokens

NONE_KEY = "\x00none"
"""Row key of the group of records without a value (no workflow header, ...)."""

FIELD_TITLES = {
    "workflow": "Workflow",
    "step": "Step",
    "execution_id": "Execution",
    "model": "Model",
    "provider": "Provider",
    "project": "Project",
    "source": "Source",
    "key_name": "Key",
}


class SpendTable(DataTable[Text]):
    """Groups with requests, input and output tokens, cost and share of cost.

    Refreshing keeps the cursor on the same group and the scroll position.
    """

    BINDINGS = [Binding("enter", "select_cursor", "Drill in")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True, cell_padding=1)
        self.field = ""
        self.rows_shown: list[GroupRow] = []

    def show_groups(self, rows: list[GroupRow], *, field: str) -> None:
        if field == self.field and rows == self.rows_shown:
            return
        if field != self.field:
            self.clear(columns=True)
            self.add_column(FIELD_TITLES.get(field, field), key="value", width=24)
            self.add_column(Text("Reqs", justify="right"), key="requests", width=7)
            self.add_column(Text("In", justify="right"), key="input", width=7)
            self.add_column(Text("Out", justify="right"), key="output", width=7)
            self.add_column(Text("Cost", justify="right"), key="cost", width=10)
            self.add_column(Text("Share", justify="right"), key="share", width=6)
            selected: str | None = None
            scroll_y = 0.0
        else:
            selected = self.selected_key()
            scroll_y = self.scroll_y
            self.clear()
        self.field = field
        self.rows_shown = list(rows)
        for row in rows:
            label = Text(row.value, overflow="ellipsis") if row.value is not None else Text("(none)", style="dim italic")
            self.add_row(
                label,
                Text(format_count(row.requests), justify="right"),
                Text(format_tokens(row.input_tokens), justify="right"),
                Text(format_tokens(row.output_tokens), justify="right"),
                Text(format_cost(row.cost_usd), justify="right"),
                Text(f"{row.share * 100:.0f}%", justify="right"),
                key=NONE_KEY if row.value is None else row.value,
            )
        if selected is not None:
            try:
                self.move_cursor(row=self.get_row_index(selected), animate=False, scroll=False)
            except RowDoesNotExist:
                pass
            self.scroll_to(y=scroll_y, animate=False)

    def selected_key(self) -> str | None:
        """Row key under the cursor, or `None` when the table is empty."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def selected_value(self) -> tuple[bool, str | None]:
        """(there is a row under the cursor, its group value)."""
        key = self.selected_key()
        if key is None:
            return False, None
        return True, None if key == NONE_KEY else key

"""The request log: the latest calls with status, model, workflow, latency, tokens and cost."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from tokensense.storage.models import Usage
from tui.formatting import format_cost, format_latency, format_time, format_tokens


def status_text(status: int) -> Text:
    if 200 <= status < 300:
        style = "green"
    elif status >= 400 or status == 0:
        style = "bold red"
    else:
        style = "yellow"
    return Text(str(status), style=style, justify="right")


def model_text(record: Usage) -> Text:
    """The model of a record; a retry or fallback (attempt 2, 3, ... of its call) shows its number: `#2 model`."""
    model = record.model or "-"
    attempt = getattr(record, "attempt", 1) or 1
    if attempt > 1:
        return Text.assemble((f"#{attempt} ", "bold yellow"), model, overflow="ellipsis")
    return Text(model, overflow="ellipsis")


class RequestLog(DataTable[Text]):
    """Newest call first. While the cursor is on the first row it stays on the newest call."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True, cell_padding=1)
        self.ids_shown: list[int | None] = []
        self.today_shown: object = None

    def on_mount(self) -> None:
        self.add_column("Time (UTC)", key="time", width=11)
        self.add_column(Text("St", justify="right"), key="status", width=3)
        self.add_column("Model", key="model", width=16)
        self.add_column("Workflow", key="workflow", width=12)
        self.add_column(Text("Latency", justify="right"), key="latency", width=7)
        self.add_column(Text("Tokens", justify="right"), key="tokens", width=6)
        self.add_column(Text("Cost", justify="right"), key="cost", width=8)

    def show_records(self, records: list[Usage], *, now: datetime) -> None:
        ids = [record.id for record in records]
        if ids == self.ids_shown and now.date() == self.today_shown:
            return
        at_top = self.cursor_row == 0
        selected = None
        if self.row_count and not at_top:
            selected = self.coordinate_to_cell_key(self.cursor_coordinate)[0].value
        scroll_y = self.scroll_y
        self.clear()
        self.ids_shown = ids
        self.today_shown = now.date()
        for record in records:
            self.add_row(
                Text(format_time(record.created_at, now=now)),
                status_text(record.status),
                model_text(record),
                Text(record.workflow or "-", overflow="ellipsis", style="" if record.workflow else "dim"),
                Text(format_latency(record.latency_ms), justify="right"),
                Text(format_tokens(record.input_tokens + record.output_tokens), justify="right"),
                Text(format_cost(record.cost_usd), justify="right"),
                key=str(record.id),
            )
        if selected is not None:
            try:
                self.move_cursor(row=self.get_row_index(selected), animate=False, scroll=False)
            except RowDoesNotExist:
                pass
            self.scroll_to(y=scroll_y, animate=False)

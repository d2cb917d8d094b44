"""The line both budget bars draw: name, a bar of what is spent (then reserved), percent, and a fixed-width info."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget


def spend_line(widget: Widget, prefix: str, *, name: str, name_width: int, info: str, info_width: int,
               fraction: float, held: float = 0.0) -> Text:
    """`fraction` of the limit spent and `held` reserved by calls in flight, drawn with `widget`'s component
    classes `{prefix}--ok|warning|over|track` (and `{prefix}--reserved` when anything is held): green below
    75 %, amber below 100 %, red at or over. A fixed-width info keeps the bars of every row the same length."""
    width = widget.size.width
    label = Text(name[:name_width].ljust(name_width) + " ", style="bold", no_wrap=True)
    level = "over" if fraction >= 1 else "warning" if fraction >= 0.75 else "ok"
    style = widget.get_component_rich_style(f"{prefix}--{level}")
    bar_width = max(0, width - label.cell_len - 6 - info_width)
    filled = min(bar_width, round(min(fraction, 1.0) * bar_width))
    holding = min(bar_width - filled, round(min(held, 1.0) * bar_width))
    reserved = widget.get_component_rich_style(f"{prefix}--reserved") if holding else style
    return Text.assemble(
        label,
        ("━" * filled, style),
        ("━" * holding, reserved),
        ("━" * (bar_width - filled - holding), widget.get_component_rich_style(f"{prefix}--track")),
        (f"{fraction * 100:5.0f}% ", style),
        info[:info_width].ljust(info_width),
        no_wrap=True,
    )

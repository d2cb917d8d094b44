"""A one-line row of choices (time windows, groupings) with the active one highlighted."""

from __future__ import annotations

from collections.abc import Sequence

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget


class ChoiceStrip(Widget):
    """Shows `label` and its choices; clicking a choice runs `action('value')` on the app."""

    DEFAULT_CSS = """
    ChoiceStrip {
        height: 1;
        width: auto;
    }
    """

    active: reactive[str] = reactive("")
    """The value of the highlighted choice."""

    def __init__(
        self,
        label: str,
        choices: Sequence[tuple[str, str]],
        *,
        action: str,
        active: str = "",
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        """`choices` are (value, text) pairs; `action` names an app action taking the value."""
        super().__init__(id=id, classes=classes)
        self.label = label
        self.choices = tuple(choices)
        self.action = action
        self.set_reactive(ChoiceStrip.active, active)

    def render(self) -> Content:
        parts: list[Content | str] = [Content.from_markup("[dim]$label[/]", label=self.label)]
        for value, text in self.choices:
            style = "reverse bold" if value == self.active else ""
            parts.append(" ")
            # Values and texts are the app's own constants, not user data.
            parts.append(Content.from_markup(f"[{style} @click=app.{self.action}({value!r})] {text} [/]"))
        return Content.assemble(*parts)

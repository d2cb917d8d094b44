"""Widgets of the dashboard: choice strips, budget bars (keys, attribution) and the two tables."""

from __future__ import annotations

from tui.widgets.budget_bar import BudgetBar
from tui.widgets.choice_strip import ChoiceStrip
from tui.widgets.limit_bar import LimitBar
from tui.widgets.request_log import RequestLog
from tui.widgets.spend_table import SpendTable

__all__ = ["BudgetBar", "ChoiceStrip", "LimitBar", "RequestLog", "SpendTable"]

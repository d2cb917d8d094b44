"""Messages the dashboard's polling worker posts to the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

from tokensense.storage.analytics import DashboardSnapshot
from tokensense.storage.budgets import BudgetRow


@dataclass
class DashboardRefreshed(Message):
    """A poll ran every query: the numbers to show."""

    snapshot: DashboardSnapshot
    seconds: float
    """How long the queries took."""
    limits: list[BudgetRow] = field(default_factory=list)
    """The budgets on attribution, with their spend (the Budgets tab)."""
    budgets_mark: tuple[Any, ...] | None = None
    """The budgets table's fingerprint when they were read."""


@dataclass
class DatabaseUnavailable(Message):
    """A poll could not read the database (it will be tried again)."""

    error: str

"""Messages the dashboard's polling worker posts to the app."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from tokensense.storage.analytics import DashboardSnapshot


@dataclass
class DashboardRefreshed(Message):
    """A poll ran every query: the numbers to show."""

    snapshot: DashboardSnapshot
    seconds: float
    """How long the queries took."""


@dataclass
class DatabaseUnavailable(Message):
    """A poll could not read the database (it will be tried again)."""

    error: str

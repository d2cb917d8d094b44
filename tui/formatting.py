"""How the dashboard writes money, counts, tokens, durations and times."""

from __future__ import annotations

from datetime import datetime

from tokensense.storage.analytics import as_utc


def format_cost(usd: float | None) -> str:
    """Dollars: cents from one dollar up, four decimals below (LLM calls are cheap); `unpriced` for None."""
    if usd is None:
        return "unpriced"
    if usd == 0:
        return "$0.00"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    return f"${usd:.4f}"


def format_count(count: int) -> str:
    return f"{count:,}"


def format_tokens(tokens: int) -> str:
    """Compact token counts: 950, 1.23k, 12.3k, 456k, 4.56M, 1.2B."""
    if abs(tokens) < 1000:
        return str(tokens)
    for size, suffix in ((1_000, "k"), (1_000_000, "M"), (1_000_000_000, "B")):
        value = tokens / size
        if abs(value) < 999.5 or suffix == "B":
            break
    if abs(value) < 9.995:
        return f"{value:.2f}{suffix}"
    if abs(value) < 99.95:
        return f"{value:.1f}{suffix}"
    return f"{value:,.0f}{suffix}"


def format_latency(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return f"{ms / 60_000:.1f}m"


def format_time(moment: datetime, *, now: datetime) -> str:
    """UTC time of day for today's records, month-day and minutes for older ones."""
    moment, now = as_utc(moment), as_utc(now)
    if moment.date() == now.date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%m-%d %H:%M")


def format_span(seconds: float) -> str:
    """A bucket width: 15s, 1m, 24m, 2.8h, 1.2d."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.2g}h"
    return f"{seconds / 86400:.2g}d"

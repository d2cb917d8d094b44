"""Anthropic `usage` objects in TokenSense terms: cache reads, 5-minute and 1-hour writes, server tools, tier."""

from __future__ import annotations

from typing import Any

from tokensense.core.usage import TokenUsage
from tokensense.providers.usage_fields import UsageReader

_R = UsageReader("anthropic")


def usage_from_anthropic(usage: Any) -> TokenUsage | None:
    """Anthropic `usage` in TokenSense terms.

    Anthropic's `input_tokens` excludes the tokens read from or written to the
    prompt cache; TokenSense's `input_tokens` counts every prompt token, so the
    three are added up. `cache_creation` splits the writes by lifetime (1-hour
    writes cost 2x input, 5-minute ones 1.25x); `server_tool_use` counts web
    searches ($10 per 1,000) and web fetches (free beyond their tokens).
    """
    if not isinstance(usage, dict):
        return None
    cache_read = _R.count(usage, "cache_read_input_tokens")
    creation = _R.obj(usage, "cache_creation")
    write_5m = _R.count(creation, "ephemeral_5m_input_tokens", "cache_creation.")
    write_1h = _R.count(creation, "ephemeral_1h_input_tokens", "cache_creation.")
    cache_write = _R.count(usage, "cache_creation_input_tokens") or write_5m + write_1h
    server_tools = _R.obj(usage, "server_tool_use")
    details = _R.obj(usage, "output_tokens_details")
    units = {
        "cache_write_5m_tokens": write_5m,
        "cache_write_1h_tokens": write_1h,
        "web_searches": _R.count(server_tools, "web_search_requests", "server_tool_use."),
    }
    counters = {
        "web_fetch_requests": _R.count(server_tools, "web_fetch_requests", "server_tool_use."),
        "code_execution_requests": _R.count(server_tools, "code_execution_requests", "server_tool_use."),
    }
    return TokenUsage(
        input_tokens=_R.count(usage, "input_tokens") + cache_read + cache_write,
        output_tokens=_R.count(usage, "output_tokens"),
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=_R.count(details, "thinking_tokens", "output_tokens_details."),
        units={k: v for k, v in units.items() if v},
        counters={k: v for k, v in counters.items() if v},
        service_tier=_R.text(usage, "service_tier"),
    ).consistent()

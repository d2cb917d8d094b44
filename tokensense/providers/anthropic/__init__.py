"""Anthropic Messages API."""

from __future__ import annotations

from typing import Any, ClassVar

from tokensense.providers.base import ProviderAdapter, StreamUsage, _int
from tokensense.metering.usage import TokenUsage


def usage_from_anthropic(usage: Any) -> TokenUsage | None:
    """Anthropic `usage` in TokenSense terms.

    Anthropic's `input_tokens` excludes the tokens read from or written to the
    prompt cache; TokenSense's `input_tokens` counts every prompt token, so the
    three are added up.
    """
    if not isinstance(usage, dict):
        return None
    cache_read = _int(usage.get("cache_read_input_tokens"))
    cache_write = _int(usage.get("cache_creation_input_tokens"))
    return TokenUsage(
        input_tokens=_int(usage.get("input_tokens")) + cache_read + cache_write,
        output_tokens=_int(usage.get("output_tokens")),
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


class AnthropicStreamUsage(StreamUsage):
    """`message_start` carries the input usage, `message_delta` the cumulative output."""

    def __init__(self) -> None:
        self._usage: dict[str, Any] = {}

    def feed(self, event: str | None, data: dict) -> None:
        kind = data.get("type") or event
        if kind == "message_start":
            usage = (data.get("message") or {}).get("usage")
        elif kind == "message_delta":
            usage = data.get("usage")
        else:
            return
        if isinstance(usage, dict):
            # message_delta repeats fields cumulatively; later values win.
            self._usage.update({k: v for k, v in usage.items() if v is not None})

    def result(self) -> TokenUsage:
        return usage_from_anthropic(self._usage) or TokenUsage()

    @property
    def raw(self) -> dict[str, Any]:
        return dict(self._usage)


class AnthropicAdapter(ProviderAdapter):
    name: ClassVar[str] = "anthropic"
    display_name: ClassVar[str] = "Anthropic"
    default_base_url: ClassVar[str] = "https://api.anthropic.com"
    env_key: ClassVar[str] = "ANTHROPIC_API_KEY"
    prices_id: ClassVar[str] = "anthropic"
    model_prefixes: ClassVar[tuple[str, ...]] = ("claude-",)
    auth_header: ClassVar[str] = "x-api-key"
    api_version: ClassVar[str] = "2023-06-01"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    usage_key: ClassVar[bytes | None] = b"usage"

    def usage_from_object(self, usage: dict) -> TokenUsage | None:
        return usage_from_anthropic(usage)

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        return usage_from_anthropic(body.get("usage")) if isinstance(body, dict) else None

    def stream_usage(self) -> StreamUsage:
        return AnthropicStreamUsage()

    def usage_markers(self) -> tuple[bytes, ...]:
        return (b'"usage"',)

"""Google Gemini API (generativelanguage.googleapis.com)."""

from __future__ import annotations

from typing import Any, ClassVar

from tokensense.providers.base import ProviderAdapter, StreamUsage, _int
from tokensense.metering.usage import TokenUsage


def usage_from_gemini(meta: Any) -> TokenUsage | None:
    """Gemini `usageMetadata` in TokenSense terms.

    Gemini reports thinking tokens (`thoughtsTokenCount`) apart from
    `candidatesTokenCount`, and bills them as output: TokenSense adds them to
    `output_tokens` and also keeps them as `reasoning_tokens`.
    """
    if not isinstance(meta, dict):
        return None
    thoughts = _int(meta.get("thoughtsTokenCount"))
    return TokenUsage(
        input_tokens=_int(meta.get("promptTokenCount")) + _int(meta.get("toolUsePromptTokenCount")),
        output_tokens=_int(meta.get("candidatesTokenCount")) + thoughts,
        cached_input_tokens=_int(meta.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def _usage_metadata(body: Any) -> Any:
    if isinstance(body, list):  # streamGenerateContent without alt=sse answers a JSON array
        metas = [c.get("usageMetadata") for c in body if isinstance(c, dict) and c.get("usageMetadata")]
        return metas[-1] if metas else None
    if isinstance(body, dict):
        return body.get("usageMetadata")
    return None


class GeminiStreamUsage(StreamUsage):
    """Every Gemini chunk carries `usageMetadata`; the last one is complete."""

    def __init__(self) -> None:
        self._meta: dict[str, Any] | None = None

    def feed(self, event: str | None, data: dict) -> None:
        meta = data.get("usageMetadata")
        if isinstance(meta, dict):
            self._meta = meta

    def result(self) -> TokenUsage:
        return usage_from_gemini(self._meta) or TokenUsage()

    @property
    def raw(self) -> dict[str, Any]:
        return dict(self._meta or {})


class GeminiAdapter(ProviderAdapter):
    name: ClassVar[str] = "gemini"
    display_name: ClassVar[str] = "Google Gemini"
    default_base_url: ClassVar[str] = "https://generativelanguage.googleapis.com"
    env_key: ClassVar[str] = "GEMINI_API_KEY"
    prices_id: ClassVar[str] = "google"
    model_prefixes: ClassVar[tuple[str, ...]] = ("gemini-", "imagen-")
    auth_header: ClassVar[str] = "x-goog-api-key"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    usage_key: ClassVar[bytes | None] = b"usageMetadata"

    def usage_from_object(self, usage: dict) -> TokenUsage | None:
        return usage_from_gemini(usage)

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        return usage_from_gemini(_usage_metadata(body))

    def stream_usage(self) -> StreamUsage:
        return GeminiStreamUsage()

    def usage_markers(self) -> tuple[bytes, ...]:
        return (b"usageMetadata",)

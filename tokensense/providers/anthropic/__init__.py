"""Anthropic Messages API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape
from tokensense.core.usage import TokenUsage
from tokensense.providers.anthropic.batches import MESSAGE_BATCHES, message_batch_routes
from tokensense.providers.anthropic.usage import usage_from_anthropic
from tokensense.providers.base import ProviderAdapter, StreamUsage, Translator, Upstream
from tokensense.providers.batch_api import BatchApi
from tokensense.providers.model_lists import ModelListShape
from tokensense.providers.routes import ClientRoute, ErrorPath, error_path

__all__ = ["ANTHROPIC_ERRORS", "AnthropicAdapter", "AnthropicStreamUsage", "usage_from_anthropic"]


class AnthropicErrors(ErrorShape):
    """`{"type": "error", "error": {"type", "message"}}`: the anthropic SDKs raise by the error's type."""

    name = "anthropic"
    TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        502: "api_error",
        504: "timeout_error",
    }

    def body(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
        return {"type": "error", "error": {"type": self.TYPES.get(status, "api_error"), "message": message}}


ANTHROPIC_ERRORS = AnthropicErrors()

# The Messages API's paths; its token counting is free.
ANTHROPIC_ROUTES: tuple[ClientRoute, ...] = (
    ClientRoute(("POST",), "/v1/messages", Endpoint.MESSAGES, ANTHROPIC_ERRORS, retried=True, intercepted=True,
                genai_operation="chat"),
    ClientRoute(("POST",), "/v1/messages/count_tokens", Endpoint.COUNT_TOKENS, ANTHROPIC_ERRORS, free=True,
                retried=True, intercepted=True),
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
    otel_name: ClassVar[str | None] = "anthropic"
    display_name: ClassVar[str] = "Anthropic"
    default_base_url: ClassVar[str] = "https://api.anthropic.com"
    env_key: ClassVar[str] = "ANTHROPIC_API_KEY"
    prices_id: ClassVar[str] = "anthropic"
    model_prefixes: ClassVar[tuple[str, ...]] = ("claude-",)
    aliases: ClassVar[tuple[str, ...]] = ("claude",)
    hosts: ClassVar[tuple[str, ...]] = ("api.anthropic.com",)
    native: ClassVar[frozenset[Endpoint]] = frozenset({Endpoint.MESSAGES, Endpoint.COUNT_TOKENS})
    client_routes: ClassVar[tuple[ClientRoute, ...]] = (*ANTHROPIC_ROUTES, *message_batch_routes(ANTHROPIC_ERRORS))
    batch_api: ClassVar[BatchApi | None] = MESSAGE_BATCHES
    error_paths: ClassVar[tuple[ErrorPath, ...]] = (error_path("/v1/messages", ANTHROPIC_ERRORS),)
    api_versions: ClassVar[tuple[str, ...]] = ("v1",)
    passthrough_paths: ClassVar[tuple[str, ...]] = ("v1/files", "v1/skills")
    sdk_user_agents: ClassVar[tuple[str, ...]] = ("Anthropic/",)  # `Anthropic/Python 0.x`
    sdk_headers: ClassVar[tuple[str, ...]] = ("anthropic-version",)

    # Largest output by model family (tokens), from Anthropic's models overview.
    output_caps: ClassVar[Mapping[str, int]] = {
        "claude-3-haiku": 4_096,
        "claude-3-opus": 4_096,
        "claude-3-sonnet": 4_096,
        "claude-3-5": 8_192,
        "claude-3-7": 64_000,
        "claude-sonnet-4": 64_000,
        "claude-haiku-4": 64_000,
        "claude-opus-4": 32_000,
        "claude-opus-4-5": 64_000,
    }

    def model_list_shape(self) -> ModelListShape | None:
        from tokensense.providers.anthropic.models import MODEL_LIST

        return MODEL_LIST

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    def default_headers(self) -> dict[str, str]:
        # The Messages API requires a version; OpenAI-format clients translated here do not send one.
        return {"anthropic-version": "2023-06-01"}

    def chat_translator(self) -> Translator:
        return _CHAT

    def responses_translator(self) -> Any:
        from tokensense.providers.anthropic.responses import ResponsesTranslation

        return ResponsesTranslation()

    def upstream(self, endpoint: Endpoint, model: str, *, stream: bool, action: str | None = None,
                 version: str | None = None) -> Upstream:
        if endpoint is Endpoint.COUNT_TOKENS:
            return Upstream(endpoint, "/v1/messages/count_tokens")
        return Upstream(Endpoint.MESSAGES, "/v1/messages")  # native Messages, and translated chat

    usage_key: ClassVar[bytes | None] = b"usage"

    def usage_from_object(self, usage: dict) -> TokenUsage | None:
        return usage_from_anthropic(usage)

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        return usage_from_anthropic(body.get("usage")) if isinstance(body, dict) else None

    def stream_usage(self) -> StreamUsage:
        return AnthropicStreamUsage()

    def usage_markers(self) -> tuple[bytes, ...]:
        return (b'"usage"',)


def _chat_translator() -> Translator:
    from tokensense.providers.anthropic import chat

    return Translator(request=chat.chat_request_to_provider, answer=chat.chat_response_from_provider,
                      stream=chat.ChatStreamTranslator, error=chat.error_from_provider, model_in_body=True)


_CHAT = _chat_translator()

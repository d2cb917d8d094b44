"""OpenAI, and the OpenAI-compatible providers xAI and Mistral."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from tokensense.core.endpoints import RESPONSES_ENDPOINTS, Endpoint
from tokensense.core.errors import ErrorFormat
from tokensense.core.usage import TokenUsage
from tokensense.providers.audio_format import AUDIO
from tokensense.providers.base import MediaRoute, ProviderAdapter, ResponsesStreamReader, StreamUsage
from tokensense.providers.images_format import check_image_request, images_answer_usage
from tokensense.providers.model_lists import ListedModel, ModelListShape
from tokensense.providers.openai_usage import service_tier_of, usage_from_openai

__all__ = ["MistralAdapter", "OpenAIAdapter", "XAIAdapter", "usage_from_openai"]


# The paths OpenAI-format clients call (with or without the /v1 prefix their base URL may carry).
_OPENAI_NATIVE_PATHS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/chat/completions": Endpoint.CHAT,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
    "/embeddings": Endpoint.EMBEDDINGS,
    "/v1/images/generations": Endpoint.IMAGES,
    "/v1/audio/speech": Endpoint.SPEECH,
    "/v1/audio/transcriptions": Endpoint.TRANSCRIPTIONS,
}


class OpenAIModelList(ModelListShape):
    """OpenAI's model list, the shape of the gateway's own catalog (with its `pricing` extension): the list every
    client gets that no other SDK's shape claims, naming every model (chat is translated for the others)."""

    error_format: ClassVar[ErrorFormat] = ErrorFormat.OPENAI
    fallback: ClassVar[bool] = True

    def entry(self, model: ListedModel) -> dict:
        entry: dict[str, Any] = {"id": model.id, "object": "model", "created": 0, "owned_by": model.provider}
        if model.pricing is not None:
            entry["pricing"] = model.pricing
        return entry

    def listing(self, models: list[ListedModel], query: Mapping[str, str]) -> dict:
        return {"object": "list", "data": [self.entry(m) for m in models]}


MODEL_LIST = OpenAIModelList()


class OpenAIStreamUsage(StreamUsage):
    """OpenAI streams report usage once, in the last chunk (with `include_usage`)."""

    def __init__(self, provider: str = "openai", reasoning_outside: bool = False) -> None:
        self._usage: TokenUsage | None = None
        self._provider = provider
        self._reasoning_outside = reasoning_outside

    def feed(self, event: str | None, data: dict) -> None:
        usage = usage_from_openai(data.get("usage"), provider=self._provider, reasoning_outside=self._reasoning_outside,
                                  service_tier=service_tier_of(data))
        if usage is not None:
            self._usage = usage

    def result(self) -> TokenUsage:
        return self._usage or TokenUsage()


class OpenAIAdapter(ProviderAdapter):
    name: ClassVar[str] = "openai"
    otel_name: ClassVar[str | None] = "openai"
    display_name: ClassVar[str] = "OpenAI"
    default_base_url: ClassVar[str] = "https://api.openai.com"
    env_key: ClassVar[str] = "OPENAI_API_KEY"
    prices_id: ClassVar[str] = "openai"
    model_prefixes: ClassVar[tuple[str, ...]] = (
        "gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-", "dall-e-", "gpt-image-", "tts-", "whisper-",
    )
    hosts: ClassVar[tuple[str, ...]] = ("api.openai.com",)
    native: ClassVar[frozenset[Endpoint]] = frozenset({
        Endpoint.CHAT, Endpoint.EMBEDDINGS, Endpoint.IMAGES, Endpoint.SPEECH, Endpoint.TRANSCRIPTIONS,
        *RESPONSES_ENDPOINTS,
    })
    openai_format: ClassVar[bool] = True

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

    # Largest output by model family (tokens), from OpenAI's model pages.
    output_caps: ClassVar[Mapping[str, int]] = {
        "gpt-3.5": 4_096,
        "gpt-4-": 8_192,
        "gpt-4": 8_192,
        "gpt-4-turbo": 4_096,
        "gpt-4o": 16_384,
        "gpt-4.1": 32_768,
        "gpt-4.5": 16_384,
        "gpt-5": 128_000,
        "o1-mini": 65_536,
        "o1": 100_000,
        "o3": 100_000,
        "o4-mini": 100_000,
    }

    def model_list_shape(self) -> ModelListShape | None:
        return MODEL_LIST

    def media_route(self, endpoint: Endpoint, model: str, *, declared: bool) -> MediaRoute | None:
        if endpoint is Endpoint.IMAGES and (declared or model.startswith(("dall-e-", "gpt-image-", "chatgpt-image"))):
            return MediaRoute("images", "/v1/images/generations", check=check_image_request,
                              answer_usage=images_answer_usage)
        if endpoint is Endpoint.SPEECH and (declared or model.startswith("tts-") or "-tts" in model):
            return MediaRoute("speech", "/v1/audio/speech", audio=AUDIO)
        if endpoint is Endpoint.TRANSCRIPTIONS and (declared or model.startswith("whisper-") or "transcribe" in model):
            return MediaRoute("transcription", "/v1/audio/transcriptions", audio=AUDIO)
        return None

    def media_models(self, endpoint: Endpoint) -> str | None:
        return {Endpoint.IMAGES: "OpenAI dall-e-*/gpt-image-*", Endpoint.SPEECH: "OpenAI tts-*/gpt-4o-mini-tts",
                Endpoint.TRANSCRIPTIONS: "OpenAI whisper-*/gpt-4o-*transcribe"}.get(endpoint)

    def responses_usage(self, answer: Any) -> TokenUsage | None:
        return usage_from_response(answer, provider=self.name, reasoning_outside=self.reasoning_outside_completion)

    def responses_stream_usage(self) -> ResponsesStreamReader | None:
        return ResponsesStreamUsage(self.name, self.reasoning_outside_completion)

    def intercept_route(self, method: str, path: str) -> tuple[Endpoint, str | None] | None:
        endpoint = _OPENAI_NATIVE_PATHS.get(path) if method == "POST" else None
        return (endpoint, None) if endpoint is not None and endpoint in self.native else None

    usage_key: ClassVar[bytes | None] = b"usage"

    # xAI reports reasoning tokens apart from completion tokens (and bills them as output).
    reasoning_outside_completion: ClassVar[bool] = False

    def usage_from_object(self, usage: dict) -> TokenUsage | None:
        return usage_from_openai(usage, provider=self.name, reasoning_outside=self.reasoning_outside_completion)

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        if not isinstance(body, dict):
            return None
        return usage_from_openai(body.get("usage"), provider=self.name,
                                 reasoning_outside=self.reasoning_outside_completion,
                                 service_tier=service_tier_of(body))

    def stream_usage(self) -> StreamUsage:
        return OpenAIStreamUsage(self.name, self.reasoning_outside_completion)

    def usage_markers(self) -> tuple[bytes, ...]:
        return (b'"usage"',)


class XAIAdapter(OpenAIAdapter):
    name: ClassVar[str] = "xai"
    otel_name: ClassVar[str | None] = "x_ai"
    display_name: ClassVar[str] = "xAI"
    default_base_url: ClassVar[str] = "https://api.x.ai"
    env_key: ClassVar[str] = "XAI_API_KEY"
    prices_id: ClassVar[str] = "x-ai"
    model_prefixes: ClassVar[tuple[str, ...]] = ("grok-",)
    reasoning_outside_completion: ClassVar[bool] = True
    aliases: ClassVar[tuple[str, ...]] = ("x-ai", "grok")
    hosts: ClassVar[tuple[str, ...]] = ("api.x.ai",)
    native: ClassVar[frozenset[Endpoint]] = frozenset({Endpoint.CHAT, Endpoint.EMBEDDINGS, Endpoint.IMAGES,
                                                       *RESPONSES_ENDPOINTS})

    output_caps: ClassVar[Mapping[str, int]] = {"grok-3": 131_072, "grok-4": 131_072}

    def media_route(self, endpoint: Endpoint, model: str, *, declared: bool) -> MediaRoute | None:
        if endpoint is Endpoint.IMAGES:
            return MediaRoute("images", "/v1/images/generations", check=check_image_request,
                              answer_usage=images_answer_usage)
        return None

    def media_models(self, endpoint: Endpoint) -> str | None:
        return "xAI" if endpoint is Endpoint.IMAGES else None


class MistralAdapter(OpenAIAdapter):
    name: ClassVar[str] = "mistral"
    otel_name: ClassVar[str | None] = "mistral_ai"
    display_name: ClassVar[str] = "Mistral"
    default_base_url: ClassVar[str] = "https://api.mistral.ai"
    env_key: ClassVar[str] = "MISTRAL_API_KEY"
    prices_id: ClassVar[str] = "mistral"
    model_prefixes: ClassVar[tuple[str, ...]] = (
        "mistral-", "magistral-", "codestral-", "ministral-", "pixtral-", "open-mistral-", "open-mixtral-",
    )
    hosts: ClassVar[tuple[str, ...]] = ("api.mistral.ai",)
    native: ClassVar[frozenset[Endpoint]] = frozenset({Endpoint.CHAT, Endpoint.EMBEDDINGS, Endpoint.TRANSCRIPTIONS})

    output_caps: ClassVar[Mapping[str, int]] = {"mistral": 32_768}

    def media_route(self, endpoint: Endpoint, model: str, *, declared: bool) -> MediaRoute | None:
        if endpoint is Endpoint.TRANSCRIPTIONS:
            return MediaRoute("transcription", "/v1/audio/transcriptions", audio=AUDIO)
        return None

    def media_models(self, endpoint: Endpoint) -> str | None:
        return "Mistral" if endpoint is Endpoint.TRANSCRIPTIONS else None


# --- Responses API (/v1/responses): usage of answers and streams ---------------------------------

RESPONSES_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
"""The stream events that carry the finished `response`, its `usage` included."""

RESPONSES_TOOL_CALL_ITEMS: dict[str, str] = {"web_search_call": "web_searches", "file_search_call": "file_searches"}
"""Output item types of built-in tools billed per call, and the counter each adds to."""


def responses_tool_calls(output: Any) -> dict[str, int]:
    """The billable built-in tool calls among a response's output items (`{"web_searches": 2}`)."""
    counts: dict[str, int] = {}
    for item in output if isinstance(output, list) else ():
        kind = item.get("type") if isinstance(item, dict) else None
        counter = RESPONSES_TOOL_CALL_ITEMS.get(kind) if isinstance(kind, str) else None
        if counter:
            counts[counter] = counts.get(counter, 0) + 1
    return counts


def _with_tool_calls(usage: TokenUsage, tool_calls: dict[str, int]) -> TokenUsage:
    # Web searches are a billable unit (priced per call); file searches are counted by the caller.
    if tool_calls.get("web_searches"):
        units = dict(usage.units or {})
        units["web_searches"] = units.get("web_searches", 0) + tool_calls["web_searches"]
        return usage.model_copy(update={"units": units})
    return usage


def usage_from_response(response: Any, *, provider: str = "openai", reasoning_outside: bool = False) -> TokenUsage | None:
    """Usage of a Responses API `response` object (an unstreamed answer, or the one a terminal event carries)."""
    if not isinstance(response, dict):
        return None
    usage = usage_from_openai(response.get("usage"), provider=provider, reasoning_outside=reasoning_outside,
                              service_tier=service_tier_of(response))
    if usage is None:
        return None
    return _with_tool_calls(usage, responses_tool_calls(response.get("output")))


class ResponsesStreamUsage(ResponsesStreamReader):
    """Responses streams report usage once, in the terminal event's `response` (completed, incomplete or failed).

    `tool_calls` counts the built-in tool calls billed per call (web and file searches) in that response.
    """

    def __init__(self, provider: str = "openai", reasoning_outside: bool = False) -> None:
        self._provider = provider
        self._reasoning_outside = reasoning_outside
        self._usage: TokenUsage | None = None
        self.tool_calls: dict[str, int] = {}
        self.response_id: str | None = None
        self.status: str | None = None

    def feed(self, event: str | None, data: dict) -> None:
        kind = data.get("type") or event
        if kind == "response.created":
            response = data.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self.response_id = response["id"]
            return
        if kind not in RESPONSES_TERMINAL_EVENTS:
            return
        response = data.get("response")
        if not isinstance(response, dict):
            return
        self.status = response.get("status") if isinstance(response.get("status"), str) else None
        if isinstance(response.get("id"), str):
            self.response_id = response["id"]
        self.tool_calls = responses_tool_calls(response.get("output"))
        usage = usage_from_response(response, provider=self._provider, reasoning_outside=self._reasoning_outside)
        if usage is not None:
            self._usage = usage

    def result(self) -> TokenUsage:
        return self._usage or TokenUsage()

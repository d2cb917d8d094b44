"""OpenAI, and the OpenAI-compatible providers xAI and Mistral."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from tokensense.core.endpoints import RESPONSES_ENDPOINTS, Endpoint
from tokensense.core.errors import ErrorShape
from tokensense.core.usage import TokenUsage
from tokensense.providers.audio_format import AUDIO
from tokensense.providers.base import MediaRoute, ProviderAdapter, ResponsesStreamReader, StreamUsage, Upstream
from tokensense.providers.batch_api import BatchApi
from tokensense.providers.images_format import check_image_request, images_answer_usage
from tokensense.providers.mistral_batches import MISTRAL_BATCHES, mistral_batch_routes
from tokensense.providers.model_lists import ListedModel, ModelListShape
from tokensense.providers.openai_batches import OPENAI_BATCHES, openai_batch_routes
from tokensense.providers.openai_realtime import (
    REALTIME_CALLS,
    REALTIME_CLIENT_SECRETS,
    REALTIME_DEFAULT_MODEL,
    OpenAIRealtime,
)
from tokensense.providers.openai_usage import service_tier_of, usage_from_openai
from tokensense.providers.openai_videos import (
    VIDEOS,
    VIDEOS_CONTENT,
    VIDEOS_DELETE,
    VIDEOS_LIST,
    VIDEOS_RETRIEVE,
    VideoJobs,
    video_routes,
)
from tokensense.providers.owned import OwnedRules
from tokensense.providers.routes import ClientRoute, PassthroughPath, Route

if TYPE_CHECKING:
    from tokensense.providers.sockets import SocketProtocol

__all__ = ["FIM", "MISTRAL_ROUTES", "OPENAI_ERRORS", "OPENAI_ROUTES", "VIDEO_ROUTES", "MistralAdapter", "OpenAIAdapter",
           "XAIAdapter", "usage_from_openai"]


class OpenAIErrors(ErrorShape):
    """`{"error": {"message", "type", "param", "code"}}`: what the openai SDKs (and most others) parse."""

    name = "openai"
    TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "insufficient_quota",
        403: "permission_error",
        404: "not_found_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        502: "api_error",
        504: "timeout_error",
    }

    def body(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
        return {"error": {"message": message, "type": self.TYPES.get(status, "api_error"), "param": param,
                          "code": code}}


OPENAI_ERRORS = OpenAIErrors()
OPENAI_REALTIME = OpenAIRealtime(OPENAI_ERRORS)  # the Realtime API's WebSocket (voice sessions)


def _openai_route(path: str, endpoint: Endpoint, *, method: str = "POST", **properties: Any) -> ClientRoute:
    return ClientRoute((method,), path, endpoint, OPENAI_ERRORS, **properties)


# A stored response's id in the path (`/v1/responses/{id}`): not one of the Responses API's own sub-paths.
_RESPONSE_ID = r"/(?:v1/)?responses/(?P<resource>(?!(?:input_tokens|compact)(?:/|$))[^/]+)"

# The paths OpenAI-format clients call (with or without the /v1 prefix their base URL may carry); every
# OpenAI-format provider (OpenAI, xAI, Mistral, the ones declared in config.toml) serves them for its models.
OPENAI_ROUTES: tuple[ClientRoute, ...] = (
    _openai_route(r"/(?:v1/)?chat/completions", Endpoint.CHAT, retried=True, intercepted=True,
                  genai_operation="chat"),
    _openai_route(r"/(?:v1/)?embeddings", Endpoint.EMBEDDINGS, retried=True, intercepted=True,
                  genai_operation="embeddings"),
    _openai_route(r"/v1/images/generations", Endpoint.IMAGES, intercepted=True),
    _openai_route(r"/v1/audio/speech", Endpoint.SPEECH, intercepted=True),
    _openai_route(r"/v1/audio/transcriptions", Endpoint.TRANSCRIPTIONS, intercepted=True),
    _openai_route(r"/v1/audio/translations", Endpoint.TRANSLATIONS, intercepted=True),
    _openai_route(r"/v1/images/edits", Endpoint.IMAGE_EDITS, intercepted=True),
    _openai_route(r"/v1/images/variations", Endpoint.IMAGE_VARIATIONS, intercepted=True),
    _openai_route(r"/(?:v1/)?completions", Endpoint.COMPLETIONS, intercepted=True, genai_operation="text_completion"),
    # Free at OpenAI: recorded at cost 0, never refused by a budget (access and rate limits still apply).
    _openai_route(r"/(?:v1/)?moderations", Endpoint.MODERATIONS, free=True, intercepted=True,
                  default_model="omni-moderation-latest"),
    _openai_route(r"/(?:v1/)?responses", Endpoint.RESPONSES, genai_operation="chat"),
    _openai_route(r"/v1/responses/input_tokens", Endpoint.RESPONSES_INPUT_TOKENS, free=True),
    _openai_route(r"/v1/responses/compact", Endpoint.RESPONSES_COMPACT),
    _openai_route(_RESPONSE_ID, Endpoint.RESPONSES_RETRIEVE, method="GET"),
    _openai_route(_RESPONSE_ID, Endpoint.RESPONSES_DELETE, method="DELETE"),
    _openai_route(_RESPONSE_ID + "/cancel", Endpoint.RESPONSES_CANCEL),
    _openai_route(_RESPONSE_ID + "/input_items", Endpoint.RESPONSES_INPUT_ITEMS, method="GET"),
    # Ephemeral keys for browsers' realtime sessions: free (recorded at cost 0). The model is in the body's
    # `session`, not where the route table reads models: the record names the Realtime API's default model.
    _openai_route(r"/v1/realtime/client_secrets", REALTIME_CLIENT_SECRETS, free=True, model_in_body=False,
                  parse=lambda entry, match: entry.route(model=REALTIME_DEFAULT_MODEL)),
)


# OpenAI's own: a WebRTC call's SDP exchange (not JSON: an `application/sdp` offer or a multipart form) and its
# actions (`/v1/realtime/calls/{call_id}/hangup`, ...), passed through as they are with the key swap and recorded
# free (the call is metered on its sideband socket).
def _realtime_call_route(entry: ClientRoute, match: re.Match[str]) -> Route:
    path = PassthroughPath(match.group(0), "realtime", ("openai",), kind="free")
    return entry.route(model=REALTIME_DEFAULT_MODEL, resource=match["call"])._replace(passthrough=path)


REALTIME_CALLS_ROUTE = _openai_route(
    r"/v1/realtime/calls(?:/(?P<call>rtc_[A-Za-z0-9_-]{1,200})/(?:hangup|accept|reject|refer))?", REALTIME_CALLS,
    free=True, model_in_body=False, body_streams=False, parse=_realtime_call_route)


# OpenAI's own: the videos API (Sora 2), its jobs kept to the key that started them.
VIDEO_ROUTES = video_routes(OPENAI_ERRORS)
VIDEO_JOBS = VideoJobs()
_VIDEO_ENDPOINTS = frozenset({VIDEOS, VIDEOS_RETRIEVE, VIDEOS_CONTENT, VIDEOS_LIST, VIDEOS_DELETE})


class OpenAIModelList(ModelListShape):
    """OpenAI's model list, the shape of the gateway's own catalog (with its `pricing` extension): the list every
    client gets that no other SDK's shape claims, naming every model (chat is translated for the others)."""

    error_format: ClassVar[ErrorShape] = OPENAI_ERRORS
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
        "omni-moderation-", "text-moderation-", "davinci-", "babbage-", "sora-",
    )
    hosts: ClassVar[tuple[str, ...]] = ("api.openai.com",)
    native: ClassVar[frozenset[Endpoint]] = frozenset({
        Endpoint.CHAT, Endpoint.EMBEDDINGS, Endpoint.IMAGES, Endpoint.SPEECH, Endpoint.TRANSCRIPTIONS,
        Endpoint.TRANSLATIONS, Endpoint.IMAGE_EDITS, Endpoint.IMAGE_VARIATIONS, Endpoint.COMPLETIONS,
        Endpoint.MODERATIONS, *RESPONSES_ENDPOINTS, REALTIME_CLIENT_SECRETS,
    })
    openai_format: ClassVar[bool] = True
    # Its Files and Batch APIs too (providers/openai_batches.py); OpenAI-compatible providers list OPENAI_ROUTES only.
    client_routes: ClassVar[tuple[ClientRoute, ...]] = (*OPENAI_ROUTES, REALTIME_CALLS_ROUTE, *VIDEO_ROUTES,
                                                        *openai_batch_routes(OPENAI_ERRORS))
    batch_api: ClassVar[BatchApi | None] = OPENAI_BATCHES
    api_versions: ClassVar[tuple[str, ...]] = ("v1",)
    # Its API's resources that no route meters (the batches and long-tail routes, where they exist, win).
    passthrough_paths: ClassVar[tuple[str, ...]] = (
        "v1/vector_stores", "v1/files", "v1/uploads", "v1/batches", "v1/fine_tuning", "v1/assistants", "v1/threads",
        "v1/conversations", "v1/containers", "v1/evals", "v1/chatkit", "v1/videos",
    )
    # The openai SDKs: `OpenAI/Python 1.x`, `OpenAI/JS 4.x`; Stainless' `x-stainless-*` headers (a browser sets no
    # User-Agent) are a hint only: the anthropic SDKs send them too.
    sdk_user_agents: ClassVar[tuple[str, ...]] = ("OpenAI/",)
    sdk_hint_headers: ClassVar[tuple[str, ...]] = ("x-stainless-lang", "x-stainless-package-version")

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
        # A realtime response writes at most 4,096 tokens (its `max_output_tokens: "inf"`).
        "gpt-realtime": 4_096,
        "gpt-4o-realtime": 4_096,
        "gpt-4o-mini-realtime": 4_096,
    }

    free_models: ClassVar[tuple[str, ...]] = ("omni-moderation-latest", "omni-moderation-2024-09-26",
                                               "text-moderation-latest", "text-moderation-stable")

    def model_list_shape(self) -> ModelListShape | None:
        return MODEL_LIST

    def socket_protocols(self) -> tuple[SocketProtocol, ...]:
        return (OPENAI_REALTIME,)

    def upstream(self, endpoint: Endpoint, model: str, *, stream: bool, action: str | None = None,
                 version: str | None = None) -> Upstream:
        if endpoint is REALTIME_CLIENT_SECRETS:
            return Upstream(endpoint, "/v1/realtime/client_secrets")
        return super().upstream(endpoint, model, stream=stream, action=action, version=version)

    def media_route(self, endpoint: Endpoint, model: str, *, declared: bool) -> MediaRoute | None:
        if endpoint is Endpoint.IMAGES and (declared or model.startswith(("dall-e-", "gpt-image-", "chatgpt-image"))):
            return MediaRoute("images", "/v1/images/generations", check=check_image_request,
                              answer_usage=images_answer_usage)
        if endpoint is Endpoint.SPEECH and (declared or model.startswith("tts-") or "-tts" in model):
            return MediaRoute("speech", "/v1/audio/speech", audio=AUDIO)
        if endpoint is Endpoint.TRANSCRIPTIONS and (declared or model.startswith("whisper-") or "transcribe" in model):
            return MediaRoute("transcription", "/v1/audio/transcriptions", audio=AUDIO)
        if endpoint is Endpoint.TRANSLATIONS and (declared or model.startswith("whisper-")):
            return MediaRoute("transcription", "/v1/audio/translations", audio=AUDIO)
        if endpoint is Endpoint.IMAGE_EDITS and (declared or model.startswith(("dall-e-2", "gpt-image-"))):
            return MediaRoute("images", "/v1/images/edits", answer_usage=images_answer_usage)
        if endpoint is Endpoint.IMAGE_VARIATIONS and (declared or model.startswith("dall-e-2")):
            return MediaRoute("images", "/v1/images/variations", answer_usage=images_answer_usage)
        return None

    def owned_rules(self, endpoint: Endpoint) -> OwnedRules | None:
        return VIDEO_JOBS if endpoint in _VIDEO_ENDPOINTS and self.name == "openai" else None

    def media_models(self, endpoint: Endpoint) -> str | None:
        return {Endpoint.IMAGES: "OpenAI dall-e-*/gpt-image-*", Endpoint.SPEECH: "OpenAI tts-*/gpt-4o-mini-tts",
                Endpoint.TRANSCRIPTIONS: "OpenAI whisper-*/gpt-4o-*transcribe",
                Endpoint.TRANSLATIONS: "OpenAI whisper-*", Endpoint.IMAGE_EDITS: "OpenAI dall-e-2/gpt-image-*",
                Endpoint.IMAGE_VARIATIONS: "OpenAI dall-e-2"}.get(endpoint)

    def responses_usage(self, answer: Any) -> TokenUsage | None:
        return usage_from_response(answer, provider=self.name, reasoning_outside=self.reasoning_outside_completion)

    def responses_stream_usage(self) -> ResponsesStreamReader | None:
        return ResponsesStreamUsage(self.name, self.reasoning_outside_completion)

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
    client_routes: ClassVar[tuple[ClientRoute, ...]] = OPENAI_ROUTES
    reasoning_outside_completion: ClassVar[bool] = True
    aliases: ClassVar[tuple[str, ...]] = ("x-ai", "grok")
    hosts: ClassVar[tuple[str, ...]] = ("api.x.ai",)
    batch_api: ClassVar[BatchApi | None] = None
    native: ClassVar[frozenset[Endpoint]] = frozenset({Endpoint.CHAT, Endpoint.EMBEDDINGS, Endpoint.IMAGES,
                                                       *RESPONSES_ENDPOINTS})

    passthrough_paths: ClassVar[tuple[str, ...]] = ("v1/files", "v1/tokenize-text", "v1/api-key", "v1/language-models")
    sdk_user_agents: ClassVar[tuple[str, ...]] = ()  # clients use the openai SDK
    sdk_hint_headers: ClassVar[tuple[str, ...]] = ()
    output_caps: ClassVar[Mapping[str, int]] = {"grok-3": 131_072, "grok-4": 131_072}
    free_models: ClassVar[tuple[str, ...]] = ()

    def media_route(self, endpoint: Endpoint, model: str, *, declared: bool) -> MediaRoute | None:
        if endpoint is Endpoint.IMAGES:
            return MediaRoute("images", "/v1/images/generations", check=check_image_request,
                              answer_usage=images_answer_usage)
        return None

    def media_models(self, endpoint: Endpoint) -> str | None:
        return "xAI" if endpoint is Endpoint.IMAGES else None


FIM = Endpoint("fim.completions")
"""Mistral's fill-in-the-middle completions (`/v1/fim/completions`, Codestral): chat-completion answers."""

MISTRAL_ROUTES: tuple[ClientRoute, ...] = (
    *OPENAI_ROUTES,
    _openai_route(r"/v1/fim/completions", FIM, intercepted=True, genai_operation="text_completion"),
    _openai_route(r"/v1/ocr", Endpoint.OCR, intercepted=True),
)


def ocr_usage(answer: Any) -> TokenUsage:
    """An OCR answer's pages processed (`usage_info.pages_processed`), the unit the catalog prices OCR by."""
    info = answer.get("usage_info") if isinstance(answer, dict) else None
    pages = info.get("pages_processed") if isinstance(info, dict) else None
    if isinstance(pages, bool) or not isinstance(pages, int) or pages < 0:
        pages = 0
    return TokenUsage(units={"input_document_pages": pages} if pages else {})


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
    native: ClassVar[frozenset[Endpoint]] = frozenset({Endpoint.CHAT, Endpoint.EMBEDDINGS, Endpoint.TRANSCRIPTIONS,
                                                       FIM, Endpoint.OCR})
    client_routes: ClassVar[tuple[ClientRoute, ...]] = (*MISTRAL_ROUTES, *mistral_batch_routes(OPENAI_ERRORS))
    batch_api: ClassVar[BatchApi | None] = MISTRAL_BATCHES  # `/v1/batch/jobs` and their files: metered, owned
    # Its fine-tuning jobs and conversations share OpenAI's paths: the asking SDK (or the body's model) decides.
    passthrough_paths: ClassVar[tuple[str, ...]] = (
        "v1/files", "v1/agents", "v1/libraries", "v1/batch", "v1/ocr", "v1/fine_tuning", "v1/conversations",
    )
    # The mistralai SDKs (Speakeasy-made) send `mistral-client-python/1.9.0`, `mistral-client-typescript/1.7.0`.
    sdk_user_agents: ClassVar[tuple[str, ...]] = ("mistral-client-",)
    sdk_hint_headers: ClassVar[tuple[str, ...]] = ()

    output_caps: ClassVar[Mapping[str, int]] = {"mistral": 32_768, "codestral": 32_768}
    free_models: ClassVar[tuple[str, ...]] = ()

    def upstream(self, endpoint: Endpoint, model: str, *, stream: bool, action: str | None = None,
                 version: str | None = None) -> Upstream:
        if endpoint is FIM:
            return Upstream(FIM, "/v1/fim/completions")
        return super().upstream(endpoint, model, stream=stream, action=action, version=version)

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        # An OCR answer has `usage_info` (pages), no `usage`: read wherever an answer is (intercept mode, reprice).
        if isinstance(body, dict) and "usage" not in body and isinstance(body.get("usage_info"), dict):
            return ocr_usage(body)
        return super().usage_from_body(body)

    def media_route(self, endpoint: Endpoint, model: str, *, declared: bool) -> MediaRoute | None:
        if endpoint is Endpoint.TRANSCRIPTIONS:
            return MediaRoute("transcription", "/v1/audio/transcriptions", audio=AUDIO)
        if endpoint is Endpoint.OCR and (declared or model.startswith("mistral-ocr-")):
            return MediaRoute("pages", "/v1/ocr", answer_usage=ocr_usage)
        return None

    def media_models(self, endpoint: Endpoint) -> str | None:
        return {Endpoint.TRANSCRIPTIONS: "Mistral", Endpoint.OCR: "Mistral mistral-ocr-*"}.get(endpoint)


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

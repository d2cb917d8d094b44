"""Google Gemini API (generativelanguage.googleapis.com)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape, GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.providers.base import MediaRoute, ProviderAdapter, StreamUsage, Translator, Upstream, model_segment
from tokensense.providers.batch_api import BatchApi
from tokensense.providers.gemini.batches import GEMINI_BATCHES, gemini_batch_routes
from tokensense.providers.gemini.caches import CACHE_ENDPOINTS, ContextCaches, cache_routes
from tokensense.providers.gemini.live import GeminiLive
from tokensense.providers.gemini.usage import usage_from_gemini
from tokensense.providers.model_lists import ModelListShape
from tokensense.providers.owned import OwnedRules
from tokensense.providers.routes import ClientRoute, ErrorPath, error_path
from tokensense.providers.sockets import SocketProtocol

__all__ = ["GOOGLE_ERRORS", "NATIVE", "GeminiAdapter", "GeminiStreamUsage", "usage_from_gemini"]

# The Gemini API's own endpoint, `POST /{v1beta|v1}/models/{model}:{action}` (its records' endpoint id).
NATIVE = Endpoint("gemini")

# The `models/{model}:{action}` actions TokenSense forwards; any other action is a 404.
ACTIONS = frozenset({
    "generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents", "predict",
})


class GoogleErrors(ErrorShape):
    """`{"error": {"code", "message", "status"}}`: google-genai and the Google API clients read the status name."""

    name = "google"
    STATUS: ClassVar[dict[int, str]] = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        402: "RESOURCE_EXHAUSTED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        413: "INVALID_ARGUMENT",
        429: "RESOURCE_EXHAUSTED",
        502: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }

    def body(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
        return {"error": {"code": status, "message": message, "status": self.STATUS.get(status, "UNKNOWN")}}


GOOGLE_ERRORS = GoogleErrors()
GEMINI_LIVE = GeminiLive(GOOGLE_ERRORS)  # the Live API's WebSocket (voice sessions)

GEMINI_ROUTES: tuple[ClientRoute, ...] = (
    # The model names the path; the action, not the body, says whether the answer streams; countTokens is free.
    ClientRoute(("POST",), r"/(?P<version>v1beta|v1)/models/(?P<model>[^:/]+):(?P<action>[A-Za-z]+)", NATIVE,
                GOOGLE_ERRORS, model_in_body=False, actions=ACTIONS,
                unknown_action="TokenSense does not forward the Gemini action `{action}`.",
                stream_actions=frozenset({"streamGenerateContent"}), free_actions=frozenset({"countTokens"}),
                body_streams=False, retried=True, intercepted=True, genai_operation="generate_content"),
    # google-genai's model list and single model (answered by the gateway, in Google's shape).
    ClientRoute(("GET",), "/v1beta/models", Endpoint.MODELS, GOOGLE_ERRORS),
    ClientRoute(("GET",), r"/v1beta/models/(?P<resource>[^/:]+)", Endpoint.MODEL, GOOGLE_ERRORS),
    # Context caches: kept to the key that made them, their storage booked by the hour (caches.py).
    *cache_routes(GOOGLE_ERRORS),
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
    otel_name: ClassVar[str | None] = "gcp.gemini"
    display_name: ClassVar[str] = "Google Gemini"
    default_base_url: ClassVar[str] = "https://generativelanguage.googleapis.com"
    env_key: ClassVar[str] = "GEMINI_API_KEY"
    prices_id: ClassVar[str] = "google"
    model_prefixes: ClassVar[tuple[str, ...]] = ("gemini-", "imagen-")
    aliases: ClassVar[tuple[str, ...]] = ("google",)
    hosts: ClassVar[tuple[str, ...]] = ("generativelanguage.googleapis.com",)
    native: ClassVar[frozenset[Endpoint]] = frozenset({NATIVE})
    # Batch mode first: `models/{model}:batchGenerateContent` is not one of the synchronous route's actions.
    client_routes: ClassVar[tuple[ClientRoute, ...]] = (*gemini_batch_routes(GOOGLE_ERRORS), *GEMINI_ROUTES)
    batch_api: ClassVar[BatchApi | None] = GEMINI_BATCHES
    error_paths: ClassVar[tuple[ErrorPath, ...]] = (error_path(r"/v1beta/|/v1/models/.*:", GOOGLE_ERRORS),)
    api_versions: ClassVar[tuple[str, ...]] = ("v1beta", "v1", "v1alpha")
    passthrough_paths: ClassVar[tuple[str, ...]] = (
        "v1beta/cachedContents", "v1beta/files", "v1beta/tunedModels", "v1beta/corpora", "v1beta/operations",
        "v1beta/fileSearchStores", "v1beta/batches", "v1beta/generatedFiles",
    )
    sdk_user_agents: ClassVar[tuple[str, ...]] = ("google-genai-sdk/",)
    sdk_headers: ClassVar[tuple[str, ...]] = ("x-goog-api-client",)

    # Largest output by model family (tokens), from the Gemini API's model pages.
    output_caps: ClassVar[Mapping[str, int]] = {
        "gemini-1.5": 8_192,
        "gemini-2.0": 8_192,
        "gemini-2.5": 65_536,
        "gemini-3": 65_536,
        # The Live API's models answer a turn with at most 8,192 tokens.
        "gemini-live": 8_192,
        "gemini-2.5-flash-native-audio": 8_192,
        "gemini-2.0-flash-live": 8_192,
    }

    def model_list_shape(self) -> ModelListShape | None:
        from tokensense.providers.gemini.models import MODEL_LIST

        return MODEL_LIST

    def socket_protocols(self) -> tuple[SocketProtocol, ...]:
        return (GEMINI_LIVE,)

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    def chat_translator(self) -> Translator:
        return _CHAT

    def responses_translator(self) -> Any:
        from tokensense.providers.gemini.responses import ResponsesTranslation

        return ResponsesTranslation()

    def upstream(self, endpoint: Endpoint, model: str, *, stream: bool, action: str | None = None,
                 version: str | None = None) -> Upstream:
        """`/{version}/models/{model}:{action}`, every part validated; translated chat is generateContent."""
        if endpoint is Endpoint.CHAT:
            action = "streamGenerateContent" if stream else "generateContent"
            query = (("alt", "sse"),) if stream else ()
            return Upstream(NATIVE, f"/v1beta/models/{model_segment(model)}:{action}", query)
        if action not in ACTIONS:
            raise GatewayError(404, f"TokenSense does not forward the Gemini action `{action}`.",
                               code="unknown_endpoint")
        version = version if version in ("v1", "v1beta") else "v1beta"
        return Upstream(NATIVE, f"/{version}/models/{model_segment(model)}:{action}")

    def media_route(self, endpoint: Endpoint, model: str, *, declared: bool) -> MediaRoute | None:
        if endpoint is Endpoint.IMAGES and (declared or model.startswith("imagen-")):
            from tokensense.providers.gemini.images import IMAGEN

            return MediaRoute("images", f"/v1beta/models/{model_segment(model)}:predict", IMAGEN)
        return None

    def media_models(self, endpoint: Endpoint) -> str | None:
        return "Google imagen-*" if endpoint is Endpoint.IMAGES else None

    def owned_rules(self, endpoint: Endpoint) -> OwnedRules | None:
        return _CACHES if endpoint in CACHE_ENDPOINTS else None

    usage_key: ClassVar[bytes | None] = b"usageMetadata"

    def usage_from_object(self, usage: dict) -> TokenUsage | None:
        return usage_from_gemini(usage)

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        return usage_from_gemini(_usage_metadata(body))

    def stream_usage(self) -> StreamUsage:
        return GeminiStreamUsage()

    def input_count(self, endpoint: Endpoint, action: str | None, model: str, version: str | None,
                    body: Any) -> tuple[str, dict] | None:
        """embedContent/batchEmbedContents answers carry only the vectors (EmbedContentResponse has `embedding`,
        BatchEmbedContentsResponse `embeddings`: no usageMetadata), yet the input tokens are billed. The embedding
        models accept countTokens (their supportedGenerationMethods list it), which is free: the same contents
        counted there give the billed input tokens."""
        if endpoint is not NATIVE or not isinstance(body, dict):
            return None
        if action == "embedContent":
            contents = [body.get("content")]
        elif action == "batchEmbedContents" and isinstance(body.get("requests"), list):
            contents = [r.get("content") for r in body["requests"] if isinstance(r, dict)]
        else:
            return None
        contents = [c for c in contents if isinstance(c, dict)]
        if not contents:
            return None
        version = version if version in ("v1", "v1beta") else "v1beta"
        return f"/{version}/models/{model_segment(model)}:countTokens", {"contents": contents}

    def counted_tokens(self, answer: Any) -> int | None:
        total = answer.get("totalTokens") if isinstance(answer, dict) else None
        return total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None

    def usage_markers(self) -> tuple[bytes, ...]:
        return (b"usageMetadata",)


def _chat_translator() -> Translator:
    from tokensense.providers.gemini import chat

    return Translator(request=chat.chat_request_to_provider, answer=chat.chat_response_from_provider,
                      stream=chat.ChatStreamTranslator, error=chat.error_from_provider)


_CHAT = _chat_translator()


_CACHES = ContextCaches()

"""Google Vertex AI: Gemini (`publishers/google`) and Claude (`publishers/anthropic`) on Vertex paths.

Native paths, as google-genai (`vertexai=True`), the anthropic SDK's `AnthropicVertex`
and Claude Code's Vertex mode call them:

    POST /{v1|v1beta1}/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent
         ...:streamGenerateContent (?alt=sse) ...:countTokens
    POST /v1/projects/{project}/locations/{location}/publishers/anthropic/models/{model}:rawPredict
         ...:streamRawPredict   (Anthropic Messages bodies with `anthropic_version`, SSE streams)

Upstream, requests carry an OAuth2 bearer from the service account (`auth.py`);
the project is the configured one (else the client's), the location the
client's. Usage is Gemini's `usageMetadata` or Anthropic's `usage`; prices come
from the genai-prices `google` provider, which lists Gemini and Claude-on-Vertex
models (`claude-sonnet-4-5@20250929` included).
"""

from __future__ import annotations

import os
import re
from typing import Any, ClassVar, NamedTuple

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.providers.anthropic import ANTHROPIC_ERRORS, AnthropicStreamUsage, usage_from_anthropic
from tokensense.providers.base import ProviderAdapter, StreamUsage, Upstream
from tokensense.providers.gemini import GOOGLE_ERRORS, GeminiStreamUsage, _usage_metadata, usage_from_gemini
from tokensense.providers.routes import ClientRoute, Route
from tokensense.providers.vertex.auth import VertexTokenSource

GOOGLE_ACTIONS = frozenset({"generateContent", "streamGenerateContent", "countTokens"})
ANTHROPIC_ACTIONS = frozenset({"rawPredict", "streamRawPredict"})
STREAM_ACTIONS = frozenset({"streamGenerateContent", "streamRawPredict"})
FREE_ACTIONS = frozenset({"countTokens"})
DEFAULT_LOCATION = "global"

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}"
_NATIVE_PATH = re.compile(
    rf"^/(?P<version>v1|v1beta1)/projects/(?P<project>{_SEGMENT})/locations/(?P<location>{_SEGMENT})"
    rf"/publishers/(?P<publisher>google|anthropic)/models/(?P<model>[A-Za-z0-9][A-Za-z0-9._@\-]{{0,127}})"
    r":(?P<action>[A-Za-z]+)$"
)


class VertexPath(NamedTuple):
    version: str
    project: str
    location: str
    publisher: str  # "google" or "anthropic"
    model: str
    action: str

    @property
    def stream(self) -> bool:
        return self.action in STREAM_ACTIONS

    @property
    def count_tokens(self) -> bool:
        return self.action in FREE_ACTIONS or self.model == "count-tokens"


def parse_native_path(path: str) -> VertexPath | None:
    """The parts of a Vertex model path (without query), validated; None when it is not one."""
    match = _NATIVE_PATH.match(path)
    if match is None:
        return None
    parts = VertexPath(**match.groupdict())
    allowed = GOOGLE_ACTIONS if parts.publisher == "google" else ANTHROPIC_ACTIONS
    return parts if parts.action in allowed else None


# Vertex AI's own endpoint, `POST /{v}/projects/{p}/locations/{l}/publishers/{google|anthropic}/models/{m}:{action}`
# (its records' endpoint id).
NATIVE = Endpoint("vertex")


def _parse_route(entry: ClientRoute, match: re.Match[str]) -> Route | None:
    parts = parse_native_path(match.string)
    if parts is None:
        return None
    # Gemini's clients parse Google's errors, Claude's Anthropic's. Claude's token counting has the pseudo-model
    # `count-tokens` in the path; the body names the model.
    return entry.route(fmt=GOOGLE_ERRORS if parts.publisher == "google" else ANTHROPIC_ERRORS,
                       model=None if parts.model == "count-tokens" else parts.model, action=parts.action,
                       version=parts.version,
                       params=(("project", parts.project), ("location", parts.location),
                               ("publisher", parts.publisher), ("path_model", parts.model)))


VERTEX_ROUTES: tuple[ClientRoute, ...] = (
    ClientRoute(("POST",), _NATIVE_PATH.pattern.removeprefix("^").removesuffix("$"), NATIVE, GOOGLE_ERRORS,
                model_in_body=False, stream_actions=STREAM_ACTIONS, free_actions=FREE_ACTIONS, names_provider=True,
                parse=_parse_route),
)


def upstream_path(parts: VertexPath, *, project: str | None = None, location: str | None = None) -> str:
    """The Vertex path for `parts`, with the configured project/location where given."""
    project = project or parts.project
    location = location or parts.location
    for value in (project, location):
        if not re.fullmatch(_SEGMENT, value):
            raise ValueError(f"not a valid Vertex project or location: {value!r}")
    return (f"/{parts.version}/projects/{project}/locations/{location}/publishers/{parts.publisher}"
            f"/models/{parts.model}:{parts.action}")


def base_url_for(location: str) -> str:
    """Vertex's endpoint for a location (the global and multi-region ones have their own hosts)."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    if location in ("us", "eu"):
        return f"https://aiplatform.{location}.rep.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def usage_from_body(body: Any) -> TokenUsage | None:
    """Gemini (`usageMetadata`) or Claude (`usage`) answer usage."""
    meta = _usage_metadata(body)
    if meta is not None:
        return usage_from_gemini(meta)
    if isinstance(body, dict):
        return usage_from_anthropic(body.get("usage"))
    return None


class VertexStreamUsage(StreamUsage):
    """Gemini chunks (`usageMetadata`) or Claude events (`message_start`/`message_delta`), whichever the stream is."""

    def __init__(self) -> None:
        self._gemini = GeminiStreamUsage()
        self._anthropic = AnthropicStreamUsage()
        self._kind: str | None = None

    def feed(self, event: str | None, data: dict) -> None:
        if "usageMetadata" in data:
            self._kind = "gemini"
            self._gemini.feed(event, data)
        elif (data.get("type") or event) in ("message_start", "message_delta"):
            self._kind = "anthropic"
            self._anthropic.feed(event, data)

    def result(self) -> TokenUsage:
        if self._kind == "gemini":
            return self._gemini.result()
        if self._kind == "anthropic":
            return self._anthropic.result()
        return TokenUsage()


class VertexAdapter(ProviderAdapter):
    name: ClassVar[str] = "vertex"
    options_from_config: ClassVar[bool] = True
    otel_name: ClassVar[str | None] = "gcp.vertex_ai"
    display_name: ClassVar[str] = "Google Vertex AI"
    default_base_url: ClassVar[str] = base_url_for(DEFAULT_LOCATION)
    # A service-account JSON (the key itself, not a path); unset: Application Default Credentials.
    env_key: ClassVar[str] = "TOKENSENSE_VERTEX_CREDENTIALS"
    prices_id: ClassVar[str] = "google"
    model_prefixes: ClassVar[tuple[str, ...]] = ()
    aliases: ClassVar[tuple[str, ...]] = ("vertex-ai", "vertexai")
    native: ClassVar[frozenset[Endpoint]] = frozenset({NATIVE})
    client_routes: ClassVar[tuple[ClientRoute, ...]] = VERTEX_ROUTES
    exchanges_key: ClassVar[bool] = True

    def __init__(self, project: str | None = None, location: str | None = None) -> None:
        self.project = project or os.environ.get("TOKENSENSE_VERTEX_PROJECT") or \
            os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        self.location = location or os.environ.get("TOKENSENSE_VERTEX_LOCATION") or \
            os.environ.get("GOOGLE_CLOUD_LOCATION") or DEFAULT_LOCATION
        self._sources: dict[str | None, VertexTokenSource] = {}

    def owns_model(self, model: str) -> bool:
        return False  # Gemini and Claude names belong to their own providers; use `vertex/MODEL`

    def listed_models(self, catalog_ids: list[str]) -> list[str]:
        """For /v1/models: Gemini and Claude models of the catalog, as `vertex/MODEL`."""
        return sorted(f"vertex/{m}" for m in catalog_ids if m.startswith(("gemini-", "claude-")))

    def token_source(self, credential: str | None) -> VertexTokenSource:
        """The (cached) token source for one credential; None means Application Default Credentials."""
        source = self._sources.get(credential)
        if source is None:
            source = self._sources[credential] = VertexTokenSource(credential)
        return source

    def has_credentials(self, credential: str | None) -> bool:
        """A service-account key (stored or environment), or Application Default Credentials to find one."""
        return bool(credential) or bool(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"))

    async def resolve_api_key(self, api_key: str) -> str:
        """The OAuth2 access token for the service account (fetched in a thread when missing or near expiry)."""
        try:
            return await self.token_source(api_key or None).token()
        except GatewayError:
            raise
        except Exception as e:  # the token endpoint refused or was unreachable; never the key in the message
            raise GatewayError(503, f"TokenSense could not get a Vertex AI access token ({type(e).__name__}); "
                               "check the service-account key (`tokensense providers set vertex`).",
                               code="provider_auth_failed") from None

    def upstream(self, endpoint: Endpoint, model: str, *, stream: bool, action: str | None = None,
                 version: str | None = None, params: dict[str, str] | None = None) -> Upstream:
        """The client's Vertex path with the configured project (if any); the location's own host."""
        if endpoint is not NATIVE or not params:
            raise GatewayError(400, "Vertex AI models are served on Vertex AI paths only.",
                               code="unsupported_model_for_endpoint", param="model")
        path_model = params.get("path_model") or model
        parts = VertexPath(version or "v1", params["project"], params["location"], params["publisher"],
                           path_model, action or "")
        if parse_native_path(f"/{parts.version}/projects/{parts.project}/locations/{parts.location}/publishers/"
                             f"{parts.publisher}/models/{parts.model}:{parts.action}") != parts:
            raise GatewayError(404, "Not a Vertex AI model path TokenSense forwards.", code="unknown_endpoint")
        return Upstream(NATIVE, upstream_path(parts, project=self.project),
                        regional_base_url=base_url_for(parts.location))

    def refresh_in_background(self, credential: str | None) -> None:
        """Blocking; the keystore thread calls it so that requests rarely wait for a token."""
        if not self.has_credentials(credential):
            return
        source = self.token_source(credential)
        if source.current() is None:
            source.refresh()

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """`api_key` is the OAuth2 access token here (from `token_source(...).current()`)."""
        return {"authorization": f"Bearer {api_key}"}

    usage_key: ClassVar[bytes | None] = b"usage"

    def usage_from_object(self, usage: dict) -> TokenUsage | None:
        return usage_from_gemini(usage) if "promptTokenCount" in usage else usage_from_anthropic(usage)

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        return usage_from_body(body)

    def stream_usage(self) -> StreamUsage:
        return VertexStreamUsage()

    def usage_markers(self) -> tuple[bytes, ...]:
        return (b'"usage"', b"usageMetadata")

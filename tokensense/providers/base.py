"""The interface every provider implements: what it serves, where each call goes, how it is paid for.

A provider owns everything TokenSense knows about it: its names and model
prefixes, its hosts (intercept mode), its key variable and default base URL,
its auth headers, the upstream path of each endpoint it serves, the translation
of OpenAI-format chat when it speaks another format, reading its usage, and
what the pipeline needs besides: its SDKs' model-list shape, its models' output
caps (reservations), its media rules, its non-SSE stream framing and its own key
scheme (the marked block at the end of `Provider`). The gateway asks; it never
names a provider.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from tokensense.core.endpoints import Endpoint
from tokensense.core.paths import path_segment
from tokensense.core.usage import TokenUsage
from tokensense.providers.owned import OwnedRules
from tokensense.providers.routes import ClientRoute, ErrorPath, Route

if TYPE_CHECKING:
    from tokensense.providers.batch_api import BatchApi
    from tokensense.providers.model_lists import ModelListShape
    from tokensense.providers.sockets import SocketProtocol


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class StreamUsage(ABC):
    """Collects usage from the SSE events of one streamed answer, as they pass."""

    @abstractmethod
    def feed(self, event: str | None, data: dict) -> None: ...

    @abstractmethod
    def result(self) -> TokenUsage: ...


@dataclass(frozen=True, slots=True)
class Translator:
    """OpenAI-format chat for a provider that speaks another format: pure functions, no I/O.

    `stream(model=, include_usage=)` returns an object with `feed(event: dict) -> list[dict]`
    and `finish() -> list[dict]` (OpenAI chunks), and `usage` (the provider's usage object).
    """

    request: Callable[[dict], dict]
    answer: Callable[..., dict]
    stream: Callable[..., Any]
    error: Callable[[int, bytes], dict]
    model_in_body: bool = False  # the provider's format names the model in the body (else in the path)
    # Streams that are not SSE (Bedrock's AWS event-stream): their content type and the
    # `flow.response.stream` factory `(translator, on_first=, on_end=)` that turns them into OpenAI chunks.
    stream_content_type: str = "text/event-stream"
    stream_reader: Callable[..., Any] | None = None


class Upstream(NamedTuple):
    """Where one call goes on the provider's side: path (validated), query (None: the client's), native endpoint."""

    endpoint: Endpoint
    path: str
    query: tuple[tuple[str, str], ...] | None = None
    # The provider's host for this call when it depends on the call (Vertex AI's location), used
    # unless the base URL was overridden (TOKENSENSE_<PROVIDER>_BASE_URL, `providers set --base-url`).
    regional_base_url: str | None = None


class ImageTranslator(NamedTuple):
    """OpenAI images requests for a provider that speaks another images format: pure functions."""

    request: Callable[[dict], dict]  # OpenAI images body -> the provider's body (400s name the field)
    answer: Callable[..., Any]  # the provider's answer -> ImagesAnswer (OpenAI images body, pixel sizes)
    error: Callable[[int, bytes], dict]  # the provider's error answer -> an OpenAI error body


class AudioUsage(NamedTuple):
    """What an audio answer (speech, transcription) says it consumed."""

    duration: float | None = None  # the length the answer states (a transcription's verbose `duration`)
    billed_seconds: float | None = None  # the seconds the provider says it bills
    tokens: TokenUsage | None = None  # token usage, for models billed by tokens
    audio_tokens: int = 0  # the audio part of the input tokens


class AudioStreamUsage(StreamUsage):
    """Usage from the SSE events of an audio answer; `usage` holds what the events said so far."""

    usage: AudioUsage


class AudioReader(NamedTuple):
    """How a provider's audio answers report usage: unstreamed (content, content type) and as SSE events."""

    answer: Callable[[bytes, str], AudioUsage]
    stream: Callable[[], AudioStreamUsage]
    pcm_bytes_per_second: int | None = None  # its speech answers' raw `pcm` format, to measure one streamed


class MediaRoute(NamedTuple):
    kind: str  # "images", "speech", "transcription"
    upstream_path: str
    images: ImageTranslator | None = None  # the translation of a translated images route (None: sent as asked)
    # An images route sent as asked: the provider's check of the request before it costs a round trip (a 400
    # naming the field), and the usage (images, tokens) its answer reports.
    check: Callable[[str, dict], None] | None = None
    answer_usage: Callable[[Any], TokenUsage] | None = None
    audio: AudioReader | None = None  # speech and transcription routes: how their answers report usage


# The upstream path of each endpoint in OpenAI's format.
OPENAI_PATHS: dict[Endpoint, str] = {
    Endpoint.CHAT: "/v1/chat/completions",
    Endpoint.EMBEDDINGS: "/v1/embeddings",
    Endpoint.IMAGES: "/v1/images/generations",
    Endpoint.SPEECH: "/v1/audio/speech",
    Endpoint.TRANSCRIPTIONS: "/v1/audio/transcriptions",
    Endpoint.TRANSLATIONS: "/v1/audio/translations",
    Endpoint.IMAGE_EDITS: "/v1/images/edits",
    Endpoint.IMAGE_VARIATIONS: "/v1/images/variations",
    Endpoint.COMPLETIONS: "/v1/completions",
    Endpoint.MODERATIONS: "/v1/moderations",
    Endpoint.RESPONSES: "/v1/responses",
    Endpoint.RESPONSES_INPUT_TOKENS: "/v1/responses/input_tokens",
    Endpoint.RESPONSES_COMPACT: "/v1/responses/compact",
}


# Prefixes of the headers OpenAI's SDKs send (x-stainless-*: the SDK generator's). OpenAI's format is the one
# translations start from; these headers mean nothing to a provider of another format.
OPENAI_SDK_HEADER_PREFIXES = ("openai-", "x-stainless-")


class ResponsesStreamReader(StreamUsage):
    """Usage from a streamed Responses API answer; `response_id` is the streamed response's id once seen."""

    response_id: str | None = None


class Provider(ABC):
    """How to reach one provider and read what its answers cost."""

    name: ClassVar[str]
    display_name: ClassVar[str]
    default_base_url: ClassVar[str]
    env_key: ClassVar[str]
    prices_id: ClassVar[str]  # the provider's id in the genai-prices catalog
    model_prefixes: ClassVar[tuple[str, ...]]
    aliases: ClassVar[tuple[str, ...]] = ()  # other names users write in `provider/model` and policies
    hosts: ClassVar[tuple[str, ...]] = ()  # its public API hosts, metered in intercept mode
    # Endpoints it answers in the client's own format (passthrough, byte for byte).
    native: ClassVar[frozenset[Endpoint]] = frozenset()
    # Speaks OpenAI's format: chat streams report usage only with `stream_options.include_usage`.
    openai_format: ClassVar[bool] = False
    # Takes options (deployments, region, project, ...) from its `[providers.NAME]` table in config.toml.
    options_from_config: ClassVar[bool] = False
    # Its `gen_ai.provider.name` in OpenTelemetry's GenAI conventions (None: TokenSense's name).
    otel_name: ClassVar[str | None] = None
    # A provider without a key (a local server declared in config.toml) is called without auth.
    requires_key: ClassVar[bool] = True
    # Any model name goes (config-declared providers); else it must be in the catalog or [models].
    accepts_any_model: ClassVar[bool] = False
    # The auth depends on the whole request (SigV4): `upstream_auth` gets the final URL, headers and body.
    signs_requests: ClassVar[bool] = False
    # The key is exchanged for a short-lived token off the event loop (`resolve_api_key`) before forwarding.
    exchanges_key: ClassVar[bool] = False
    # Prefixes of client headers that must not go upstream on native calls (a client's own SigV4 headers).
    drop_headers: ClassVar[tuple[str, ...]] = ()
    # The paths its clients call (providers/routes.py): the gateway's route table is the union of these.
    client_routes: ClassVar[tuple[ClientRoute, ...]] = ()
    # Path prefixes whose clients parse this provider's error shape (errors on paths no route serves).
    error_paths: ClassVar[tuple[ErrorPath, ...]] = ()
    # Its batch jobs and files (providers/batch_api.py), when its batch and file routes are in `client_routes`.
    batch_api: ClassVar[BatchApi | None] = None
    # The first path segments of its API (`v1`, `v1beta`): under its prefix (`/NAME/v1/...`) any path that starts
    # with one of them and that no route serves is passed through, metered (none: no passthrough).
    api_versions: ClassVar[tuple[str, ...]] = ()
    # `version/family` paths of its API that no route serves and that clients call without a prefix
    # (`v1/vector_stores`): passed through to it (a family several providers list: the body's model decides).
    passthrough_paths: ClassVar[tuple[str, ...]] = ()
    # How its own SDKs are told apart on a path several providers share (`/v1/files`, providers/sdks.py):
    # User-Agent prefixes and headers only they send, then (checked after every provider's) headers its SDKs send
    # that another's might too.
    sdk_user_agents: ClassVar[tuple[str, ...]] = ()
    sdk_headers: ClassVar[tuple[str, ...]] = ()
    sdk_hint_headers: ClassVar[tuple[str, ...]] = ()

    def owns_model(self, model: str) -> bool:
        return model.startswith(self.model_prefixes)

    def claims_model(self, model: str) -> bool:
        """Whether `model` names this provider explicitly (`NAME/model`, an alias too): its own paths serve it
        where another provider's prefix has the same path (gateway/routing.py `model_route`)."""
        name, slash, rest = model.partition("/")
        return bool(slash and rest) and (name == self.name or name in self.aliases)

    @abstractmethod
    def auth_headers(self, api_key: str) -> dict[str, str]:
        """Headers that carry the provider key upstream."""

    def has_credentials(self, api_key: str | None) -> bool:
        """Whether a call can be authenticated upstream with this (stored or environment) key."""
        return bool(api_key) or not self.requires_key

    def catalog_model(self, model: str) -> str:
        """The name the price catalog (and model policies) know `model` by (an Azure deployment's model...)."""
        return model

    def upstream_auth(self, api_key: str, *, method: str, url: str, headers: Any, body: bytes) -> dict[str, str]:
        """The auth headers of the final upstream request (only called when `signs_requests`)."""
        return self.auth_headers(api_key)

    async def resolve_api_key(self, api_key: str) -> str:
        """The credential to send for `api_key` (only called when `exchanges_key`; may do I/O in a thread)."""
        return api_key

    def default_headers(self) -> dict[str, str]:
        """Headers the provider needs that a client of another format does not send (set only if missing)."""
        return {}

    def chat_translator(self) -> Translator | None:
        """The translation of OpenAI-format chat to this provider's format, or None if it speaks OpenAI's."""
        return None

    def responses_translator(self) -> Any | None:
        """The translation of OpenAI Responses API requests to this provider's format (providers/*/responses.py),
        or None where the provider speaks the Responses API itself or not at all."""
        return None

    def serves(self, endpoint: Endpoint) -> bool:
        return endpoint in self.native or (endpoint is Endpoint.CHAT and self.chat_translator() is not None)

    def upstream(self, endpoint: Endpoint, model: str, *, stream: bool, action: str | None = None,
                 version: str | None = None) -> Upstream:
        """The provider-side endpoint and path for a call; the model must be one path segment where it is in the path."""
        path = OPENAI_PATHS.get(endpoint)
        if path is None:
            raise ValueError(f"{self.name} has no upstream path for {endpoint}")
        return Upstream(endpoint, path)

    def media_route(self, endpoint: Endpoint, model: str, *, declared: bool) -> MediaRoute | None:
        """Where a media request for `model` goes (images, speech, transcriptions), or None if not served."""
        return None

    def owned_rules(self, endpoint: Endpoint) -> OwnedRules | None:
        """The `OwnedRules` (providers/owned.py) of the resources a call on `endpoint` makes or names (video jobs,
        context caches), or None where the provider has none."""
        return None

    def intercept_route(self, method: str, path: str) -> Route | None:
        """Intercept mode: the route of a path this provider's own clients call natively (its `intercepted` client
        routes of the endpoints it serves natively), or None for a path TokenSense passes through unmetered."""
        for entry in self.client_routes:
            if entry.intercepted and entry.endpoint in self.native:
                route = entry.match(method, path, owner=self.name, strict=False)
                if route is not None:
                    return route
        return None

    # The key of the usage object in an unstreamed JSON answer (None: none).
    usage_key: ClassVar[bytes | None] = None

    def usage_from_object(self, usage: dict) -> TokenUsage | None:
        """Usage from the object found under `usage_key`."""
        return None

    @abstractmethod
    def usage_from_body(self, body: Any) -> TokenUsage | None:
        """Usage from an unstreamed JSON answer, or None if it reports none."""

    def input_count(self, endpoint: Endpoint, action: str | None, model: str, version: str | None,
                    body: Any) -> tuple[str, dict] | None:
        """For a call whose answer reports no usage although its input is billed (Gemini embeddings):
        the free provider call that counts its input tokens, as (upstream path, JSON body); None if none."""
        return None

    def counted_tokens(self, answer: Any) -> int | None:
        """The token count in the answer to the `input_count` call (None: unreadable)."""
        return None

    @abstractmethod
    def stream_usage(self) -> StreamUsage:
        """A fresh collector for one streamed answer."""

    def usage_markers(self) -> tuple[bytes, ...]:
        """Byte strings of which one occurs in every SSE event that carries usage.

        Lets the stream meter skip JSON-parsing events that cannot carry usage.
        """
        return (b'"usage', b"usageMetadata")

    # ===== What the pipeline asks a provider (issue 22: model lists, output caps, media, streams, keys) =====
    # The gateway's stages name no provider: they ask these, and the registry's union of them.

    # Largest output of its model families, by model-name prefix (tokens): a call that sets no output cap
    # reserves that much of its key's budget. genai-prices has context windows but no output limits.
    output_caps: ClassVar[Mapping[str, int]] = {}

    def max_output_tokens(self, model: str) -> int | None:
        """The largest output `model` (lower case, without `provider/`) can write: the longest prefix of
        `output_caps` it starts with; None if none does."""
        best = max((prefix for prefix in self.output_caps if model.startswith(prefix)), key=len, default=None)
        return None if best is None else self.output_caps[best]

    # Models only served on free routes (moderations): not in the price catalog, listed by `GET /v1/models` as free.
    free_models: ClassVar[tuple[str, ...]] = ()

    def socket_protocols(self) -> tuple[SocketProtocol, ...]:
        """Its realtime WebSocket protocols (voice sessions: one socket, many billable responses)."""
        return ()

    def model_list_shape(self) -> ModelListShape | None:
        """The shape its own SDKs read `GET /v1/models` in (None: none of their own)."""
        return None

    def media_models(self, endpoint: Endpoint) -> str | None:
        """Which of its models a media endpoint takes, for the 400 of a model no provider serves there
        (`"fal-ai/*"`); None if it serves none there."""
        return None

    def client_key_in(self, authorization: str) -> str | None:
        """The TokenSense key in an `Authorization` header of this provider's own signing scheme (not Bearer),
        where its SDKs put the key they were given; None if the header is not of its scheme."""
        return None

    def stream_framing(self, content_type: bytes) -> Callable[..., Any] | None:
        """For a streamed answer that is not SSE, whose content type is this provider's framing: the
        `flow.response.stream` factory `(usage: StreamUsage, on_first=)` that passes the stream on untouched
        while `usage` reads it; None for another content type."""
        return None

    def translation_drop_headers(self) -> tuple[str, ...]:
        """Prefixes of client headers not sent upstream when a call in another format is translated for it."""
        return OPENAI_SDK_HEADER_PREFIXES

    def responses_usage(self, answer: Any) -> TokenUsage | None:
        """Usage of an unstreamed Responses API answer it served natively (None: none)."""
        return None

    def responses_stream_usage(self) -> ResponsesStreamReader | None:
        """A fresh reader for a Responses API stream it serves natively (None: it serves none)."""
        return None

    @property
    def usage_chunk_on_request(self) -> bool:
        """Its chat streams report usage only when asked (`stream_options.include_usage`): TokenSense asks,
        and drops that last chunk again for a client that had not asked."""
        return self.openai_format

    # ===== end of what the pipeline asks =====


def model_segment(model: str) -> str:
    """The model as one validated path segment (re-exported for provider modules)."""
    return path_segment(model)


# The name most of the code base knows the interface by.
ProviderAdapter = Provider

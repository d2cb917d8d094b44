"""AWS Bedrock (bedrock-runtime): Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream.

Native paths are Bedrock's own: `POST /model/{modelId}/converse`, `/converse-stream`,
`/invoke` and `/invoke-with-response-stream` (what boto3's `bedrock-runtime` client,
the anthropic SDK's `AnthropicBedrock` and Claude Code's Bedrock mode call). Streams
are AWS event-stream frames (`eventstream.py`), read for usage as they pass.
Requests go upstream signed with SigV4 (`sigv4.py`) or with a Bedrock API key.
OpenAI-format chat for Bedrock models is translated to Converse (`converse.py`).
Prices come from the genai-prices `aws` provider, which knows Bedrock model ids
(`anthropic.claude-...-v1:0`, cross-region `us.`/`eu.`/`global.` profiles,
`amazon.nova-*`, `meta.llama*`, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape, GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.providers.anthropic import AnthropicStreamUsage, usage_from_anthropic
from tokensense.providers.base import ProviderAdapter, StreamUsage, Translator, Upstream, _int
from tokensense.providers.bedrock.eventstream import CONTENT_TYPE, EventStreamPassthrough, Frame, decode_chunk
from tokensense.providers.bedrock.sigv4 import AwsKeys, ChainCredentials, access_key_of, parse_credential, sign_headers
from tokensense.providers.routes import ClientRoute, ErrorPath, Route, error_path

ACTIONS = ("converse", "converse-stream", "invoke", "invoke-with-response-stream")
STREAM_ACTIONS = frozenset({"converse-stream", "invoke-with-response-stream"})
DEFAULT_REGION = "us-east-1"

# Bedrock model ids: optional cross-region inference prefix, vendor, dot, model.
_MODEL_ID = re.compile(
    r"^(?:(?:us|eu|apac|au|jp|ca|in|us-gov|global)\.)?"
    r"(?:anthropic|amazon|meta|mistral|cohere|ai21|deepseek|qwen|openai|writer|google|nvidia|moonshotai|zai|"
    r"minimax|twelvelabs|stability|luma)\.[A-Za-z0-9][A-Za-z0-9._:\-]*$"
)
_ARN = re.compile(r"^arn:aws[a-z\-]*:bedrock:[a-z0-9\-]+:\d{12}:[a-z\-]+/[A-Za-z0-9][A-Za-z0-9._:\-]*$")
_NATIVE_PATH = re.compile(r"^/model/(?P<model>[^/]+)/(?P<action>converse|converse-stream|invoke|invoke-with-response-stream)$")


def valid_model_id(model: str) -> bool:
    """A Bedrock model id, inference profile id or ARN; nothing else may reach an upstream path."""
    return bool(_MODEL_ID.match(model) or _ARN.match(model) or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,199}", model))


def parse_native_path(raw_path: str) -> tuple[str, str] | None:
    """(model id, action) of a native Bedrock path as received (percent-encoded), or None.

    The model id is one path segment; clients percent-encode `:` and, in ARNs, `/`.
    """
    match = _NATIVE_PATH.match(raw_path)
    if match is None:
        return None
    model = unquote(match["model"])
    if not valid_model_id(model):
        return None
    return model, match["action"]


class AwsErrors(ErrorShape):
    """AWS JSON errors, `{"__type", "message"}`: boto3 reads the type as the error code."""

    name = "aws"
    TYPES: ClassVar[dict[int, str]] = {
        400: "ValidationException",
        401: "UnrecognizedClientException",
        402: "ServiceQuotaExceededException",
        403: "AccessDeniedException",
        404: "ResourceNotFoundException",
        413: "ValidationException",
        429: "ThrottlingException",
        502: "InternalServerException",
        503: "ServiceUnavailableException",
        504: "ModelTimeoutException",
    }

    def body(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
        fallback = "InternalServerException" if status >= 500 else "ValidationException"
        return {"__type": self.TYPES.get(status, fallback), "message": message}


AWS_ERRORS = AwsErrors()

# The Bedrock runtime's own endpoint, `POST /model/{modelId}/{action}` (its records' endpoint id).
NATIVE = Endpoint("bedrock")


def _parse_route(entry: ClientRoute, match: re.Match[str]) -> Route | None:
    parsed = parse_native_path(match.string)
    return entry.route(model=parsed[0], action=parsed[1]) if parsed else None


# The path names the provider and the model (percent-encoded as botocore sends it); the action says
# whether the answer is an AWS event-stream.
BEDROCK_ROUTES: tuple[ClientRoute, ...] = (
    ClientRoute(("POST",), r"/model/[^/]+/(?:converse|converse-stream|invoke|invoke-with-response-stream)", NATIVE,
                AWS_ERRORS, model_in_body=False, stream_actions=STREAM_ACTIONS, names_provider=True,
                parse=_parse_route),
)


def upstream_path(model: str, action: str) -> str:
    """`/model/{modelId}/{action}` with the model id encoded as botocore encodes it."""
    if action not in ACTIONS or not valid_model_id(model):
        raise ValueError(f"not a Bedrock model id or action: {model!r} {action!r}")
    return f"/model/{quote(model, safe='')}/{action}"


def pricing_model(model: str) -> str:
    """The model id the price catalog knows: an ARN's resource id (`.../inference-profile/us.anthropic...`)."""
    return model.rsplit("/", 1)[-1] if model.startswith("arn:") else model


def usage_from_converse(usage: Any) -> TokenUsage | None:
    """Converse `usage`: `inputTokens` excludes cache reads and writes, as Anthropic's does."""
    if not isinstance(usage, dict):
        return None
    read = _int(usage.get("cacheReadInputTokens"))
    write = _int(usage.get("cacheWriteInputTokens"))
    return TokenUsage(
        input_tokens=_int(usage.get("inputTokens")) + read + write,
        output_tokens=_int(usage.get("outputTokens")),
        cached_input_tokens=read,
        cache_write_tokens=write,
    )


def usage_from_invocation_metrics(metrics: Any) -> TokenUsage | None:
    """`amazon-bedrock-invocationMetrics` of the last InvokeModelWithResponseStream chunk."""
    if not isinstance(metrics, dict):
        return None
    read = _int(metrics.get("cacheReadInputTokenCount"))
    write = _int(metrics.get("cacheWriteInputTokenCount"))
    return TokenUsage(
        input_tokens=_int(metrics.get("inputTokenCount")) + read + write,
        output_tokens=_int(metrics.get("outputTokenCount")),
        cached_input_tokens=read,
        cache_write_tokens=write,
    )


def usage_from_headers(headers: Any) -> TokenUsage | None:
    """InvokeModel answers carry `x-amzn-bedrock-input-token-count` / `-output-token-count` for any model."""
    try:
        input_tokens = int(headers.get("x-amzn-bedrock-input-token-count", ""))
        output_tokens = int(headers.get("x-amzn-bedrock-output-token-count", ""))
    except (TypeError, ValueError):
        return None
    return TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)


def usage_from_body(body: Any) -> TokenUsage | None:
    """Usage of an unstreamed answer: Converse (`usage.inputTokens`) or a Claude InvokeModel body (`usage.input_tokens`)."""
    if not isinstance(body, dict):
        return None
    usage = body.get("usage")
    if isinstance(usage, dict) and "inputTokens" in usage:
        return usage_from_converse(usage)
    if isinstance(usage, dict):
        return usage_from_anthropic(usage)
    if "prompt_token_count" in body:  # Llama and others on InvokeModel
        return TokenUsage(input_tokens=_int(body.get("prompt_token_count")),
                          output_tokens=_int(body.get("generation_token_count")))
    return usage_from_invocation_metrics(body.get("amazon-bedrock-invocationMetrics"))


class BedrockStreamUsage(StreamUsage):
    """Usage from the frames of a Bedrock stream, as they pass.

    ConverseStream reports it in the `metadata` event; InvokeModelWithResponseStream
    wraps the model's own events in `chunk` frames: for Claude, Anthropic's
    `message_start`/`message_delta` usage (with the cache breakdown), and for every
    model `amazon-bedrock-invocationMetrics` in the last chunk.
    """

    def __init__(self) -> None:
        self._converse: TokenUsage | None = None
        self._metrics: TokenUsage | None = None
        self._anthropic = AnthropicStreamUsage()
        self._saw_anthropic = False
        self.error: tuple[str, str] | None = None

    def feed_frame(self, frame: Frame) -> None:
        if frame.message_type != "event":
            payload = frame.json()
            message = payload.get("message") or payload.get("Message") if isinstance(payload, dict) else None
            self.error = (frame.event_type, str(message or ""))
            return
        if frame.event_type == "metadata":
            payload = frame.json()
            if isinstance(payload, dict) and (usage := usage_from_converse(payload.get("usage"))) is not None:
                self._converse = usage
        elif frame.event_type == "chunk":
            inner = decode_chunk(frame.json())
            if inner is not None:
                self.feed(None, inner)

    def feed(self, event: str | None, data: dict) -> None:
        """One model event from inside a `chunk` frame."""
        metrics = usage_from_invocation_metrics(data.get("amazon-bedrock-invocationMetrics"))
        if metrics is not None:
            self._metrics = metrics
        if data.get("type") in ("message_start", "message_delta"):
            self._saw_anthropic = True
            self._anthropic.feed(None, data)

    def result(self) -> TokenUsage:
        if self._converse is not None:
            return self._converse
        if self._saw_anthropic:
            usage = self._anthropic.result()
            if usage.has_tokens:
                return usage
        return self._metrics or TokenUsage()


def region_from_environment() -> str | None:
    return os.environ.get("TOKENSENSE_BEDROCK_REGION") or os.environ.get("AWS_REGION") or \
        os.environ.get("AWS_DEFAULT_REGION")


def _aws_chain_configured() -> bool:
    names = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
             "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE")
    return any(os.environ.get(name) for name in names) or os.path.exists(os.path.expanduser("~/.aws/credentials")) \
        or os.path.exists(os.path.expanduser("~/.aws/config"))


def base_url_for(region: str) -> str:
    return f"https://bedrock-runtime.{region}.amazonaws.com"


class BedrockAdapter(ProviderAdapter):
    name: ClassVar[str] = "bedrock"
    options_from_config: ClassVar[bool] = True
    otel_name: ClassVar[str | None] = "aws.bedrock"
    display_name: ClassVar[str] = "AWS Bedrock"
    default_base_url: ClassVar[str] = base_url_for(DEFAULT_REGION)
    # `ACCESS_KEY_ID:SECRET[:SESSION_TOKEN]` or a Bedrock API key; unset: the standard AWS chain.
    env_key: ClassVar[str] = "TOKENSENSE_BEDROCK_CREDENTIALS"
    prices_id: ClassVar[str] = "aws"
    model_prefixes: ClassVar[tuple[str, ...]] = ()
    aliases: ClassVar[tuple[str, ...]] = ("aws", "amazon-bedrock")
    native: ClassVar[frozenset[Endpoint]] = frozenset({NATIVE})
    client_routes: ClassVar[tuple[ClientRoute, ...]] = BEDROCK_ROUTES
    error_paths: ClassVar[tuple[ErrorPath, ...]] = (error_path("/model/", AWS_ERRORS),)
    signs_requests: ClassVar[bool] = True
    # The client's own SigV4 headers: TokenSense signs anew.
    drop_headers: ClassVar[tuple[str, ...]] = ("x-amz-",)
    usage_key: ClassVar[bytes | None] = b"usage"

    def __init__(self, region: str | None = None) -> None:
        self.chain = ChainCredentials()
        self.set_region(region or region_from_environment() or DEFAULT_REGION)

    def set_region(self, region: str) -> None:
        self.region = region
        self.default_base_url = base_url_for(region)  # type: ignore[misc]

    @property
    def regional_base_url(self) -> str:
        return base_url_for(self.region)

    def chat_translator(self) -> Translator:
        return _chat_translator()

    def catalog_model(self, model: str) -> str:
        return pricing_model(model)

    def upstream(self, endpoint: Endpoint, model: str, *, stream: bool, action: str | None = None,
                 version: str | None = None, params: dict[str, str] | None = None) -> Upstream:
        """Native calls keep their action; OpenAI-format chat goes to Converse (ConverseStream when streamed)."""
        if endpoint is Endpoint.CHAT:
            action = "converse-stream" if stream else "converse"
        if action not in ACTIONS or not valid_model_id(model):
            raise GatewayError(400, f"`{model[:100]}` is not a Bedrock model id.", code="invalid_model", param="model")
        return Upstream(NATIVE, upstream_path(model, action), () if endpoint is Endpoint.CHAT else None)

    def upstream_auth(self, api_key: str, *, method: str, url: str, headers: Any, body: bytes) -> dict[str, str]:
        to_sign = {"host": headers.get("host") or url.split("/", 3)[2]}
        if content_type := headers.get("content-type"):
            to_sign["content-type"] = content_type
        return self.sign(api_key or None, method=method, url=url, headers=to_sign, body=body)

    def owns_model(self, model: str) -> bool:
        return bool(_MODEL_ID.match(model) or _ARN.match(model))

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """For a Bedrock API key only; AWS keys sign the whole request (`sign`)."""
        return {"authorization": f"Bearer {api_key}"}

    def keys_for(self, credential: str | None) -> AwsKeys | str | None:
        """The stored/env credential parsed, else the AWS chain's current keys (None: nothing to sign with)."""
        if credential:
            return parse_credential(credential)
        return self.chain.current()

    def sign(self, credential: str | None, *, method: str, url: str, headers: dict[str, str],
             body: bytes) -> dict[str, str]:
        """The auth headers for this upstream request: SigV4 over `headers` + body, or a Bedrock API key bearer."""
        keys = self.keys_for(credential)
        if keys is None:
            raise LookupError("no AWS credentials for Bedrock: set them with `tokensense providers set bedrock` "
                              "or configure the AWS credential chain")
        if isinstance(keys, str):
            return self.auth_headers(keys)
        return sign_headers(keys, method=method, url=url, headers=headers, body=body, region=self.region)

    def has_credentials(self, credential: str | None) -> bool:  # type: ignore[override]
        """Whether a call can be signed now (a stored/env credential, or the AWS chain resolved)."""
        return bool(credential) or self.chain.current() is not None

    def refresh_in_background(self, credential: str | None) -> None:
        """Blocking; the keystore thread calls it: resolve the AWS chain, refresh it before it expires.

        Only without a stored or environment credential, and only where the chain has something to find
        (AWS variables, a profile, ~/.aws), so an unconfigured gateway never probes instance metadata."""
        if not credential and _aws_chain_configured() and self.chain.needs_refresh():
            self.chain.refresh()

    def usage_from_object(self, usage: dict) -> TokenUsage | None:
        return usage_from_converse(usage) if "inputTokens" in usage else usage_from_anthropic(usage)

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        return usage_from_body(body)

    def stream_usage(self) -> BedrockStreamUsage:
        return BedrockStreamUsage()

    def usage_markers(self) -> tuple[bytes, ...]:
        return (b'"usage"', b"invocationMetrics")

    def client_key_in(self, authorization: str) -> str | None:
        # An AWS SDK given the TokenSense key as its access key id signs with SigV4; the key is the access key id
        # it names. The signature is not checked: the gateway signs anew with the provider's own credentials.
        scheme, _, _ = authorization.partition(" ")
        return access_key_of(authorization) if scheme == "AWS4-HMAC-SHA256" else None

    def stream_framing(self, content_type: bytes) -> Callable[..., Any] | None:
        return _event_stream_passthrough if content_type.startswith(_EVENT_STREAM) else None


_EVENT_STREAM = CONTENT_TYPE.encode()


def _event_stream_passthrough(usage: StreamUsage, *, on_first: Callable[[], None] | None = None) -> EventStreamPassthrough:
    """AWS event-stream frames passed on untouched, read frame by frame for usage as they pass (a reader
    without `feed_frame`, of a provider whose streams are not event streams, reads nothing: the stream still flows)."""
    feed_frame = getattr(usage, "feed_frame", None) or (lambda frame: None)
    return EventStreamPassthrough(feed_frame, on_first=on_first)


def _chat_translator() -> Translator:
    from tokensense.providers.bedrock import converse

    return Translator(request=converse.chat_request_to_provider, answer=converse.chat_response_from_provider,
                      stream=converse.ChatStreamTranslator, error=converse.error_from_provider,
                      stream_content_type="application/vnd.amazon.eventstream",
                      stream_reader=converse.TranslatingEventStream)

"""Which endpoint a request is for, which provider serves its model, and where it goes upstream."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from tokensense.core.endpoints import GEMINI_ACTIONS, Endpoint
from tokensense.core.errors import ErrorFormat, GatewayError
from tokensense.metering.pricing import PriceBook
from tokensense.providers import ProviderAdapter, get_provider, provider_for_model


class Route(NamedTuple):
    endpoint: Endpoint
    fmt: ErrorFormat
    model: str | None = None  # from the path (Gemini); else read from the body
    action: str | None = None  # Gemini `generateContent`, `streamGenerateContent`, ...
    version: str | None = None  # Gemini's API version in the path (v1beta or v1)
    resource: str | None = None  # the response id (`/v1/responses/{id}`) or model id (`/v1/models/{id}`) in the path
    provider: str | None = None  # the provider the path itself names (Bedrock, Vertex AI, Azure OpenAI paths)
    params: tuple[tuple[str, str], ...] | None = None  # other validated path parts that provider needs upstream


_GEMINI_PATH = re.compile(r"^/(?P<version>v1beta|v1)/models/(?P<model>[^:/]+):(?P<action>[A-Za-z]+)$")

_RESPONSE_PATH = re.compile(r"^/(?:v1/)?responses/(?P<id>[^/]+)(?:/(?P<action>cancel|input_items))?$")
_MODEL_PATH = re.compile(r"^/(?:v1|v1beta)/models/(?P<id>[^/:]+)$")
_RESPONSE_ROUTES = {
    ("GET", None): Endpoint.RESPONSES_RETRIEVE,
    ("DELETE", None): Endpoint.RESPONSES_DELETE,
    ("POST", "cancel"): Endpoint.RESPONSES_CANCEL,
    ("GET", "input_items"): Endpoint.RESPONSES_INPUT_ITEMS,
}

_OPENAI_PATHS = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/chat/completions": Endpoint.CHAT,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
    "/embeddings": Endpoint.EMBEDDINGS,
    "/v1/images/generations": Endpoint.IMAGES,
    "/v1/audio/speech": Endpoint.SPEECH,
    "/v1/audio/transcriptions": Endpoint.TRANSCRIPTIONS,
    "/v1/responses": Endpoint.RESPONSES,
    "/responses": Endpoint.RESPONSES,
    "/v1/responses/input_tokens": Endpoint.RESPONSES_INPUT_TOKENS,
    "/v1/responses/compact": Endpoint.RESPONSES_COMPACT,
}

# Endpoints whose requests the media addon routes (multipart bodies, translated image APIs).
MEDIA_ENDPOINTS = frozenset({Endpoint.IMAGES, Endpoint.SPEECH, Endpoint.TRANSCRIPTIONS})


def format_for_endpoint(endpoint: Endpoint) -> ErrorFormat:
    """The error shape the clients of an endpoint expect."""
    if endpoint in (Endpoint.MESSAGES, Endpoint.COUNT_TOKENS):
        return ErrorFormat.ANTHROPIC
    if endpoint is Endpoint.GEMINI:
        return ErrorFormat.GOOGLE
    if endpoint is Endpoint.BEDROCK:
        return ErrorFormat.BEDROCK
    return ErrorFormat.OPENAI


def gemini_path(path: str) -> tuple[str, str, str] | None:
    """(model, action, version) of a native Gemini path `/{v1beta|v1}/models/{model}:{action}`, or None."""
    m = _GEMINI_PATH.match(path)
    return (m["model"], m["action"], m["version"]) if m else None


def classify(method: str, path: str) -> Route:
    """The endpoint for `method path` (path without the query), or a 404 GatewayError."""
    if path in ("/health", "/") and method in ("GET", "HEAD"):
        return Route(Endpoint.HEALTH, ErrorFormat.OPENAI)
    if path in ("/v1/models", "/models") and method == "GET":
        return Route(Endpoint.MODELS, ErrorFormat.OPENAI)
    if path.startswith("/v1/tokensense/requests/") and method == "GET":
        return Route(Endpoint.REQUEST_RECORD, ErrorFormat.OPENAI)
    if path == "/v1beta/models" and method == "GET":
        return Route(Endpoint.MODELS, ErrorFormat.GOOGLE)
    if method == "GET" and (m := _MODEL_PATH.match(path)):
        fmt = ErrorFormat.GOOGLE if path.startswith("/v1beta/") else ErrorFormat.OPENAI
        return Route(Endpoint.MODEL, fmt, resource=m["id"])
    if (m := _RESPONSE_PATH.match(path)) and m["id"] not in ("input_tokens", "compact"):
        if endpoint := _RESPONSE_ROUTES.get((method, m["action"])):
            return Route(endpoint, ErrorFormat.OPENAI, resource=m["id"])
    if method == "POST":
        if endpoint := _OPENAI_PATHS.get(path):
            return Route(endpoint, ErrorFormat.OPENAI)
        if path == "/v1/messages":
            return Route(Endpoint.MESSAGES, ErrorFormat.ANTHROPIC)
        if path == "/v1/messages/count_tokens":
            return Route(Endpoint.COUNT_TOKENS, ErrorFormat.ANTHROPIC)
        if m := _GEMINI_PATH.match(path):
            if m["action"] not in GEMINI_ACTIONS:
                raise GatewayError(404, f"TokenSense does not forward the Gemini action `{m['action']}`.",
                                   code="unknown_endpoint")
            return Route(Endpoint.GEMINI, ErrorFormat.GOOGLE, model=m["model"], action=m["action"],
                         version=m["version"])
        from tokensense.gateway.cloud_routes import classify_cloud

        if route := classify_cloud(path):
            return route
    raise GatewayError(404, f"TokenSense has no endpoint {method[:16]} {path[:200]}.", code="unknown_endpoint")


def resolve_model(model: Any, prices: PriceBook, media_models: frozenset[str] = frozenset()) -> tuple[ProviderAdapter, str]:
    """The provider for `model` and the model name to send it (SPEC §4).

    `provider/model` names the provider explicitly; otherwise the name decides.
    A model that neither the price catalog nor the configuration knows is a 404.
    """
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "The request must name a model (`model`).", code="missing_model", param="model")
    declared = prices.custom.get(model)
    adapter = get_provider(declared.provider) if declared else provider_for_model(model)
    name = model
    if adapter is None and "/" in model:
        prefix, rest = model.split("/", 1)
        adapter = get_provider(prefix)
        name = rest
    if adapter is None:
        raise GatewayError(404, f"The model `{model}` does not exist in any provider TokenSense knows. "
                           "GET /v1/models lists the models you can use.", code="model_not_found", param="model")
    if name not in media_models and not adapter.accepts_any_model and name not in prices.custom \
            and not prices.knows(adapter.prices_id, adapter.catalog_model(name)):
        raise GatewayError(404, f"The model `{model}` is not in the {adapter.display_name} catalog. "
                           "Declare it under [models] in config.toml to use it.", code="model_not_found", param="model")
    return adapter, name


def join_url(base_url: str, path: str, query: str = "") -> str:
    """`base_url` (origin plus optional path prefix) with the provider's standard path appended."""
    url = base_url.rstrip("/") + path
    return f"{url}?{query}" if query else url

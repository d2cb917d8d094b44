"""Which endpoint a request is for, which provider serves its model, and where it goes upstream."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, NamedTuple

from tokensense.gateway.errors import ErrorFormat, GatewayError
from tokensense.metering.pricing import PriceBook
from tokensense.providers import OPENAI_COMPATIBLE, ProviderAdapter, get_provider, provider_for_model


class Endpoint(StrEnum):
    CHAT = "chat.completions"
    EMBEDDINGS = "embeddings"
    MESSAGES = "messages"
    COUNT_TOKENS = "messages.count_tokens"
    GEMINI = "gemini"
    IMAGES = "images.generations"
    SPEECH = "audio.speech"
    TRANSCRIPTIONS = "audio.transcriptions"
    MODELS = "models"
    HEALTH = "health"


class Route(NamedTuple):
    endpoint: Endpoint
    fmt: ErrorFormat
    model: str | None = None  # from the path (Gemini); else read from the body
    action: str | None = None  # Gemini `generateContent`, `streamGenerateContent`, ...


_GEMINI_PATH = re.compile(r"^/(?:v1beta|v1)/models/(?P<model>[^:/]+):(?P<action>[A-Za-z]+)$")

_OPENAI_PATHS = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/chat/completions": Endpoint.CHAT,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
    "/embeddings": Endpoint.EMBEDDINGS,
    "/v1/images/generations": Endpoint.IMAGES,
    "/v1/audio/speech": Endpoint.SPEECH,
    "/v1/audio/transcriptions": Endpoint.TRANSCRIPTIONS,
}

# Which providers answer each OpenAI-format endpoint natively (passthrough).
PASSTHROUGH: dict[Endpoint, frozenset[str]] = {
    Endpoint.CHAT: OPENAI_COMPATIBLE,
    Endpoint.EMBEDDINGS: OPENAI_COMPATIBLE,
    Endpoint.IMAGES: frozenset({"openai", "xai"}),
    Endpoint.SPEECH: frozenset({"openai"}),
    Endpoint.TRANSCRIPTIONS: frozenset({"openai", "mistral"}),
    Endpoint.MESSAGES: frozenset({"anthropic"}),
    Endpoint.COUNT_TOKENS: frozenset({"anthropic"}),
    Endpoint.GEMINI: frozenset({"gemini"}),
}


# Endpoints whose requests the media addon routes (multipart bodies, translated image APIs).
MEDIA_ENDPOINTS = frozenset({Endpoint.IMAGES, Endpoint.SPEECH, Endpoint.TRANSCRIPTIONS})


def classify(method: str, path: str) -> Route:
    """The endpoint for `method path` (path without the query), or a 404 GatewayError."""
    if path == "/health" and method in ("GET", "HEAD"):
        return Route(Endpoint.HEALTH, ErrorFormat.OPENAI)
    if path in ("/v1/models", "/models") and method == "GET":
        return Route(Endpoint.MODELS, ErrorFormat.OPENAI)
    if method == "POST":
        if endpoint := _OPENAI_PATHS.get(path):
            return Route(endpoint, ErrorFormat.OPENAI)
        if path == "/v1/messages":
            return Route(Endpoint.MESSAGES, ErrorFormat.ANTHROPIC)
        if path == "/v1/messages/count_tokens":
            return Route(Endpoint.COUNT_TOKENS, ErrorFormat.ANTHROPIC)
        if m := _GEMINI_PATH.match(path):
            return Route(Endpoint.GEMINI, ErrorFormat.GOOGLE, model=m["model"], action=m["action"])
    raise GatewayError(404, f"TokenSense has no endpoint {method} {path}.", code="unknown_endpoint")


def parse_json_body(raw: bytes | None) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    if not raw:
        raise GatewayError(400, "The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GatewayError(400, f"The request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


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
    if name not in media_models and not prices.knows(adapter.prices_id, name) and name not in prices.custom:
        raise GatewayError(404, f"The model `{model}` is not in the {adapter.display_name} catalog. "
                           "Declare it under [models] in config.toml to use it.", code="model_not_found", param="model")
    return adapter, name


def join_url(base_url: str, path: str, query: str = "") -> str:
    """`base_url` (origin plus optional path prefix) with the provider's standard path appended."""
    url = base_url.rstrip("/") + path
    return f"{url}?{query}" if query else url

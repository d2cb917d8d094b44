"""Which endpoint a request is for, which provider serves its model, and where it goes upstream."""

from __future__ import annotations

from typing import Any

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.metering.pricing import PriceBook
from tokensense.providers import (
    DEFAULT_ERRORS,
    ClientRoute,
    ProviderAdapter,
    Route,
    get_provider,
    match_route,
    provider_for_model,
)

__all__ = ["MEDIA_ENDPOINTS", "Endpoint", "Route", "classify", "join_url", "resolve_model"]

# The gateway's own API; every other route is a provider's (tokensense/providers/routes.py).
_GATEWAY_ROUTES = (
    ClientRoute(("GET", "HEAD"), "/health|/", Endpoint.HEALTH, DEFAULT_ERRORS),
    ClientRoute(("GET",), "/(?:v1/)?models", Endpoint.MODELS, DEFAULT_ERRORS),
    ClientRoute(("GET",), r"/v1/models/(?P<resource>[^/:]+)", Endpoint.MODEL, DEFAULT_ERRORS),
    ClientRoute(("GET",), "/v1/tokensense/requests/.*", Endpoint.REQUEST_RECORD, DEFAULT_ERRORS),
)

# Endpoints whose requests the media addon routes (multipart bodies, translated image APIs).
MEDIA_ENDPOINTS = frozenset({Endpoint.IMAGES, Endpoint.SPEECH, Endpoint.TRANSCRIPTIONS, Endpoint.TRANSLATIONS,
                             Endpoint.IMAGE_EDITS, Endpoint.IMAGE_VARIATIONS, Endpoint.OCR})


def classify(method: str, path: str) -> Route:
    """The route of `method path` (path without the query): the gateway's own, or one a provider contributed.

    A path nothing serves is a 404 GatewayError.
    """
    for entry in _GATEWAY_ROUTES:
        if route := entry.match(method, path):
            return route
    if route := match_route(method, path):
        return route
    raise GatewayError(404, f"TokenSense has no endpoint {method[:16]} {path[:200]}.", code="unknown_endpoint")


def resolve_model(model: Any, prices: PriceBook, media_models: frozenset[str] = frozenset(), *,
                  free: bool = False) -> tuple[ProviderAdapter, str]:
    """The provider for `model` and the model name to send it (SPEC §4).

    `provider/model` names the provider explicitly; otherwise the name decides.
    A model that neither the price catalog nor the configuration knows is a 404, except on a `free` route
    (moderations: the provider charges nothing, so no price is needed).
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
    if not free and name not in media_models and not adapter.accepts_any_model and name not in prices.custom \
            and not prices.knows(adapter.prices_id, adapter.catalog_model(name)):
        raise GatewayError(404, f"The model `{model}` is not in the {adapter.display_name} catalog. "
                           "Declare it under [models] in config.toml to use it.", code="model_not_found", param="model")
    return adapter, name


def join_url(base_url: str, path: str, query: str = "") -> str:
    """`base_url` (origin plus optional path prefix) with the provider's standard path appended."""
    url = base_url.rstrip("/") + path
    return f"{url}?{query}" if query else url

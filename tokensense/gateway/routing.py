"""Which endpoint a request is for, which provider serves its model, and where it goes upstream."""

from __future__ import annotations

from collections.abc import Mapping
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
    route_table,
)
from tokensense.providers.passthrough import passthrough_route, pin, provider_prefix
from tokensense.providers.sdks import asking_sdk, providers_having, unclaimed_refusal

__all__ = ["ENDPOINTS_LISTING", "MEDIA_ENDPOINTS", "Endpoint", "Route", "classify", "join_url", "model_route",
           "resolve_model", "route_request"]

# `GET /v1/tokensense/endpoints`: what the gateway serves, prices, passes through (addons/passthrough.py answers).
ENDPOINTS_LISTING = Endpoint("tokensense.endpoints")

# The gateway's own API; every other route is a provider's (tokensense/providers/routes.py).
_GATEWAY_ROUTES = (
    ClientRoute(("GET",), "/v1/tokensense/endpoints", ENDPOINTS_LISTING, DEFAULT_ERRORS),
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
    if route := _served(method, path):
        return route
    raise GatewayError(404, f"TokenSense has no endpoint {method[:16]} {path[:200]}.", code="unknown_endpoint")


def route_request(method: str, path: str, headers: Mapping[str, str] | None = None) -> Route:
    """The route of a client's `method path`: under a provider prefix (`/mistral/v1/...`) the route table pinned
    to that provider, else the path as it is (`/openai/deployments/...` is Azure's), else the provider's
    passthrough; without a prefix the route table, else the passthrough of a path the providers list. A path
    several providers have goes to the provider whose SDK sent the request (`headers`, providers/sdks.py).

    A path nothing serves is a 404 GatewayError; a passthrough path that is not safe to forward is a 400, and so
    is a shared path when the asking SDK cannot be told and nothing else can decide.
    """
    prefixed = provider_prefix(path)
    if prefixed is not None:
        provider, rest = prefixed
        for entry in provider.client_routes:  # the provider's own paths may start with its name (`/toy/v1/...`)
            if route := entry.match(method, path, owner=provider.name):
                return route
        for entry in _GATEWAY_ROUTES:
            if (route := entry.match(method, rest)) and (pinned := pin(route, provider.name)):
                return pinned
        for entry, owner in route_table():
            route = entry.match(method, rest, owner=owner)
            if route is not None and (pinned := pin(route, provider.name)) is not None:
                return pinned
        # The path as it is (Azure's `/openai/deployments/...`), then the provider's passthrough. A route that
        # claims a path but refuses its parts (an action it does not forward) stays a 404: never passed through.
        route = _served(method, path) or passthrough_route(rest, provider)
    else:
        route = _served(method, path) or passthrough_route(path)
        if route is not None and headers is not None and (route.provider or route.passthrough) is not None:
            return _shared(method, path, route, headers)
    if route is None:
        raise GatewayError(404, f"TokenSense has no endpoint {method[:16]} {path[:200]}.", code="unknown_endpoint")
    return route


def _shared(method: str, path: str, route: Route, headers: Mapping[str, str]) -> Route:
    """`route` of an unprefixed path that names its provider or is passed through, when several providers have it:
    the asking SDK's provider's route (as under its prefix), else `route` where a resource id (its owner) or the
    body's model decides later, else a 400 naming the prefixes."""
    having = providers_having(method, path)
    if len(having) < 2:
        return route
    asking = asking_sdk(headers)
    if asking is not None and asking in having:
        return route if asking.name == route.provider else route_request(method, f"/{asking.name}{path}")
    if route.passthrough is None and route.resource is None:
        raise unclaimed_refusal(method, path, having)
    return route


def model_route(method: str, route: Route, path: str, model: object) -> Route | None:
    """A prefixed call whose prefixed path is also another provider's own path, and whose body's `model` names that
    provider (`azure/NAME`, a declared deployment: Azure's v1 API is `/openai/v1/chat/completions`): that provider's
    route. None: the call stays as the prefix routed it. `path` is the path after the prefix."""
    if route.prefix is None or not isinstance(model, str) or not model:
        return None
    full = f"/{route.prefix}{path}"
    for entry, owner in route_table():
        if owner == route.prefix or not entry.names_provider:
            continue
        try:
            found = entry.match(method, full, owner=owner)
        except GatewayError:
            continue
        provider = get_provider(owner)
        if found is not None and provider is not None and provider.claims_model(model):
            # `azure/NAME` names its provider itself: read as without a prefix (the body is rewritten to `NAME`);
            # a bare deployment name is the path's provider's.
            return found._replace(provider=None) if get_provider(model.partition("/")[0]) is provider else found
    return None


def _served(method: str, path: str) -> Route | None:
    """The gateway's own route or a provider's for `method path` (None: no route; a refused part: a 404)."""
    for entry in _GATEWAY_ROUTES:
        if route := entry.match(method, path):
            return route
    return match_route(method, path)


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

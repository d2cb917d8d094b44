"""Provider prefixes and the metered passthrough: which provider a path no route serves belongs to, and its path.

Every provider with an API version list (`Provider.api_versions`) can be reached
under its name: `/openai/v1/...`, `/anthropic/v1/...`, `/gemini/v1beta/...`, one
per provider, config.toml's `[providers.NAME]` ones included. A prefixed path is
first matched against the route table as usual, pinned to that provider; a path
no route serves is passed through to it. Without a prefix, the `version/family`
paths the providers list (`Provider.passthrough_paths`) are passed through to the
provider that lists them (several: the body's model decides, else a prefix is
needed).

The upstream path is rebuilt from validated segments only: no `..` or `.`, no
empty segment (`//host`), no percent-encoding at all (`%2F`, `%2e%2e`), no
backslash, no scheme or host, and a bounded length; anything else is a 400.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape, GatewayError
from tokensense.providers import DEFAULT_ERRORS, PROVIDERS, Provider, Route, error_shape_for_path, get_provider
from tokensense.providers.routes import PassthroughPath
from tokensense.providers.sockets import SocketProtocol

MAX_PATH = 1024  # characters of a passthrough path
MAX_SEGMENTS = 16
# One path segment as the providers' APIs name resources: ids, `name:action` (Gemini), `file-abc.jsonl`.
_SEGMENT = re.compile(r"[A-Za-z0-9._~:@+=,!-]{1,256}\Z")
_FAMILY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}\Z")
# Endpoint ids of families no provider lists (reached under a prefix) are interned once each: at most this many
# (a client cannot grow the table without bound), the rest are recorded as `passthrough`.
_MAX_UNLISTED_FAMILIES = 256
_unlisted: set[str] = set()
OTHER = Endpoint("passthrough")


class Prefixed(NamedTuple):
    """A path under a provider prefix: the provider, and the path after the prefix."""

    provider: Provider
    rest: str


def provider_prefix(path: str) -> Prefixed | None:
    """`/NAME/rest` where NAME is a registered provider's name (not an alias) with a path after it; else None."""
    if not path.startswith("/"):
        return None
    name, slash, rest = path[1:].partition("/")
    if not slash or name not in PROVIDERS:
        return None
    return Prefixed(PROVIDERS[name], "/" + rest)


def prefixed_socket(path: str) -> tuple[Provider, SocketProtocol, str] | None:
    """A realtime WebSocket handshake under a provider prefix (`/openai/v1/realtime`): the prefix's provider, its
    protocol that claims the path after the prefix, and that path; None if it is none."""
    prefixed = provider_prefix(path)
    if prefixed is None:
        return None
    for protocol in prefixed.provider.socket_protocols():
        if protocol.matches(prefixed.rest):
            return prefixed.provider, protocol, prefixed.rest
    return None


def pin(route: Route, provider: str) -> Route | None:
    """`route` as matched under the prefix of `provider`: the call goes to that provider only (None: the route
    names another provider, e.g. a cloud platform's own path)."""
    if route.provider is not None and route.provider != provider:
        return None
    if route.endpoint in (Endpoint.HEALTH, Endpoint.MODELS, Endpoint.MODEL, Endpoint.REQUEST_RECORD):
        return route._replace(prefix=provider)  # the gateway's own API (the model list: every model)
    return route._replace(provider=provider, prefix=provider)


def validated_path(path: str) -> list[str]:
    """The segments of a path a client asked to pass through; a 400 naming what is wrong with it."""
    if len(path) > MAX_PATH:
        raise GatewayError(
            400,
            f"The path is {len(path)} characters long; TokenSense passes through at most {MAX_PATH}.",
            code="invalid_path",
        )
    if "\\" in path or "%" in path:
        raise GatewayError(
            400,
            "The path may not contain backslashes or percent-encoded characters "
            "(TokenSense passes plain path segments only).",
            code="invalid_path",
        )
    segments = path.split("/")[1:] if path.startswith("/") else []
    if not segments or len(segments) > MAX_SEGMENTS:
        raise GatewayError(400, f"A passthrough path has 1 to {MAX_SEGMENTS} segments.", code="invalid_path")
    for segment in segments:
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            shown = "".join(c if c.isprintable() else "?" for c in segment[:60])
            raise GatewayError(
                400,
                f"The path segment `{shown}` is not passed through: a segment is letters, digits "
                "and . _ ~ : @ + = , ! - (no empty, `.` or `..` segment).",
                code="invalid_path",
            )
    return segments


def _listed(family: str) -> bool:
    return any(path.split("/", 1)[1] == family for p in PROVIDERS.values() for path in p.passthrough_paths)


def route_endpoint(family: str) -> Endpoint:
    """The endpoint of a passthrough route, before the key is known: the family's if a provider lists it, else
    `passthrough` (an unauthenticated client cannot make endpoint ids; `family_endpoint` names it once admitted)."""
    return Endpoint(family) if _listed(family) or family in _unlisted else OTHER


def family_endpoint(family: str) -> Endpoint:
    """The endpoint id the records of a passthrough family carry (`vector_stores`), for an admitted call."""
    if _listed(family) or family in _unlisted:
        return Endpoint(family)
    if len(_unlisted) < _MAX_UNLISTED_FAMILIES:
        _unlisted.add(family)
        return Endpoint(family)
    return OTHER


def provider_errors(provider: Provider) -> ErrorShape:
    """The error shape of a provider's clients (its first route's)."""
    return provider.client_routes[0].errors if provider.client_routes else DEFAULT_ERRORS


def passthrough_route(path: str, provider: Provider | None = None) -> Route | None:
    """The passthrough route of `path`: under `provider`'s prefix (the path after it), or a path the providers
    list; None when it is neither (a 404). A path that is not safe to forward is a 400."""
    head = path[1:].split("/", 2)
    if len(head) < 2:
        return None
    version, family = head[0], head[1]
    if provider is not None:
        if version not in provider.api_versions:
            return None
        owners: tuple[str, ...] = (provider.name,)
    else:
        owners = tuple(name for name, p in PROVIDERS.items() if f"{version}/{family}" in p.passthrough_paths)
        if not owners:
            return None
    segments = validated_path(path)
    family = segments[1]
    if not _FAMILY.match(family):
        raise GatewayError(400, f"`{family[:60]}` is not a resource of a provider API.", code="invalid_path")
    clean = "/" + "/".join(segments)
    fmt = (
        provider_errors(provider)
        if provider is not None
        else provider_errors(PROVIDERS[owners[0]])
        if len(owners) == 1
        else error_shape_for_path(clean)
    )
    return Route(
        route_endpoint(family),
        fmt,
        version=version,
        model_in_body=False,
        body_streams=False,
        prefix=provider.name if provider is not None else None,
        passthrough=PassthroughPath(clean, family, owners),
    )


def prefixes_for(path: PassthroughPath) -> str:
    """The prefixed paths a client can use instead of a shared one (`/openai/v1/files`, `/anthropic/v1/files`)."""
    return ", ".join(f"/{name}{path.path}" for name in path.providers)


def owner_of(path: PassthroughPath, model: str | None, model_provider: Provider | None) -> Provider:
    """The provider a passthrough call goes to: its only owner, else the one serving the body's model.

    A 400 names the prefixes when the body names no model of one of them.
    """
    if len(path.providers) == 1:
        provider = get_provider(path.providers[0])
        assert provider is not None
        return provider
    if model_provider is not None and model_provider.name in path.providers:
        return model_provider
    said = f"the model `{model[:100]}` is served by none of them" if model else "the request names no model"
    raise GatewayError(
        400,
        f"Several providers have /{path.path.lstrip('/')} ({', '.join(path.providers)}) and "
        f"{said}: call it under the provider's prefix ({prefixes_for(path)}).",
        code="ambiguous_provider",
    )


__all__ = [
    "MAX_PATH",
    "OTHER",
    "PassthroughPath",
    "Prefixed",
    "family_endpoint",
    "owner_of",
    "passthrough_route",
    "pin",
    "prefixed_socket",
    "prefixes_for",
    "provider_errors",
    "provider_prefix",
    "route_endpoint",
    "validated_path",
]

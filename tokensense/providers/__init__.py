"""The provider registry: one line per provider; names, aliases, models, routes and error shapes resolve here."""

from __future__ import annotations

from tokensense.core.errors import ErrorShape
from tokensense.providers.anthropic import AnthropicAdapter
from tokensense.providers.azure import AzureOpenAIAdapter
from tokensense.providers.base import Provider, ProviderAdapter, StreamUsage, Translator, Upstream
from tokensense.providers.bedrock import BedrockAdapter
from tokensense.providers.fal import FalAdapter
from tokensense.providers.gemini import GeminiAdapter
from tokensense.providers.openai import OPENAI_ERRORS, MistralAdapter, OpenAIAdapter, XAIAdapter
from tokensense.providers.routes import ClientRoute, Route
from tokensense.providers.sockets import SocketProtocol
from tokensense.providers.vertex import VertexAdapter

PROVIDERS: dict[str, Provider] = {}
ALIASES: dict[str, str] = {}

# The error shape of the gateway's own API (/health, /v1/models, request records) and of paths no provider claims.
DEFAULT_ERRORS: ErrorShape = OPENAI_ERRORS

# The union of the providers' client routes, with the provider that contributed each; rebuilt on `register`.
_table: list[tuple[ClientRoute, str]] | None = None


def register(provider: Provider) -> Provider:
    """Add a provider (built in, or declared in config.toml); its name, aliases and client routes then resolve."""
    global _table
    PROVIDERS[provider.name] = provider
    for alias in provider.aliases:
        ALIASES[alias] = provider.name
    _table = None
    return provider


def unregister(name: str) -> None:
    """Remove a provider (tests that register one of their own)."""
    global _table
    provider = PROVIDERS.pop(name, None)
    for alias in provider.aliases if provider is not None else ():
        if ALIASES.get(alias) == name:
            del ALIASES[alias]
    _table = None


def route_table() -> list[tuple[ClientRoute, str]]:
    """Every provider's client routes, each once (OpenAI-format providers share theirs), in registration order."""
    global _table
    table = _table
    if table is None:
        seen: set[int] = set()
        table = []
        for provider in list(PROVIDERS.values()):
            for entry in provider.client_routes:
                if id(entry) not in seen:
                    seen.add(id(entry))
                    table.append((entry, provider.name))
        _table = table
    return table


def match_route(method: str, path: str) -> Route | None:
    """The route of `method path` (path without the query) in the providers' table; None when none serves it.

    A path a route claims but whose parts it refuses (an action it does not forward) is a 404 GatewayError.
    """
    for entry, owner in route_table():
        route = entry.match(method, path, owner=owner)
        if route is not None:
            return route
    return None


def socket_protocol(path: str) -> tuple[Provider, SocketProtocol] | None:
    """The provider and realtime WebSocket protocol whose handshake `path` (without its query) is; None if none."""
    for provider in PROVIDERS.values():
        for protocol in provider.socket_protocols():
            if protocol.matches(path):
                return provider, protocol
    return None


def error_shape_for_path(path: str) -> ErrorShape:
    """The error shape a client of `path` expects, for answers on paths no route serves."""
    for provider in PROVIDERS.values():
        for prefix, shape in provider.error_paths:
            if prefix.match(path):
                return shape
    return DEFAULT_ERRORS


def error_shape(name: str) -> ErrorShape:
    """The error shape of that name (the model lists answer in the asking SDK's shape), else the default one."""
    for entry, _ in route_table():
        if entry.errors.name == name:
            return entry.errors
    for provider in PROVIDERS.values():
        for _, shape in provider.error_paths:
            if shape.name == name:
                return shape
    return DEFAULT_ERRORS


def genai_operation(endpoint: str) -> str | None:
    """The `gen_ai.operation.name` of an endpoint (OpenTelemetry GenAI conventions), if a route names one."""
    for entry, _ in route_table():
        if entry.endpoint == endpoint and entry.genai_operation:
            return entry.genai_operation
    return None

register(OpenAIAdapter())
register(AnthropicAdapter())
register(GeminiAdapter())
register(XAIAdapter())
register(MistralAdapter())
register(FalAdapter())
register(AzureOpenAIAdapter())
register(BedrockAdapter())
register(VertexAdapter())

# The providers TokenSense ships with (config.toml may register more, OpenAI-compatible ones).
BUILTIN: frozenset[str] = frozenset(PROVIDERS)


def builtin_provider_names() -> frozenset[str]:
    return BUILTIN


def table_configured_names() -> frozenset[str]:
    """Built-in providers that take their options (deployments, region, project) from `[providers.NAME]`."""
    return frozenset(name for name in BUILTIN if PROVIDERS[name].options_from_config)

# Providers that speak OpenAI's own format (chat, embeddings, streams with `include_usage`).
OPENAI_COMPATIBLE = frozenset(name for name, p in PROVIDERS.items() if p.openai_format)


def names() -> tuple[str, ...]:
    """The built-in providers and those config.toml declares (once `register_configured` ran), in registry order."""
    return tuple(PROVIDERS)


def env_var(name: str) -> str:
    """The environment variable a provider's key falls back to ('' for a keyless configured provider)."""
    adapter = PROVIDERS.get(name)
    return adapter.env_key if adapter is not None else ""


def normalize(name: str) -> str:
    """`name` in lower case if it is a registered provider, else `ValueError` naming the valid providers."""
    lowered = name.strip().lower()
    if lowered not in PROVIDERS:
        raise ValueError(f"unknown provider {name!r}; choose one of: {', '.join(PROVIDERS)} "
                         "(or declare it under [providers.NAME] in config.toml)")
    return lowered


def get_provider(name: str) -> Provider | None:
    name = name.lower()
    return PROVIDERS.get(ALIASES.get(name, name))


def provider_for_model(model: str) -> Provider | None:
    """The provider that serves `model`, from its name alone (SPEC §4)."""
    for adapter in PROVIDERS.values():
        if adapter.owns_model(model):
            return adapter
    return None


def openai_format_reader() -> Provider:
    """A provider that reads OpenAI-format usage (for answers TokenSense translated to OpenAI's format)."""
    return next(p for p in PROVIDERS.values() if p.openai_format)


def provider_for_host(host: str) -> Provider | None:
    """The built-in provider whose public API host this is (intercept mode)."""
    for adapter in PROVIDERS.values():
        if host in adapter.hosts:
            return adapter
    return None


__all__ = [
    "ALIASES", "DEFAULT_ERRORS", "OPENAI_COMPATIBLE", "PROVIDERS", "ClientRoute", "Provider",
    "ProviderAdapter", "Route", "StreamUsage", "Translator", "Upstream", "env_var", "error_shape",
    "error_shape_for_path", "genai_operation", "get_provider", "match_route", "names", "normalize",
    "openai_format_reader", "provider_for_host", "provider_for_model", "register", "route_table", "unregister",
]

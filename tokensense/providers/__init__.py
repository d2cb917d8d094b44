"""The provider registry: one line per provider; names, aliases and models resolve to a provider here."""

from __future__ import annotations

from tokensense.providers.anthropic import AnthropicAdapter
from tokensense.providers.azure import AzureOpenAIAdapter
from tokensense.providers.base import Provider, ProviderAdapter, StreamUsage, Translator, Upstream
from tokensense.providers.bedrock import BedrockAdapter
from tokensense.providers.fal import FalAdapter
from tokensense.providers.gemini import GeminiAdapter
from tokensense.providers.openai import MistralAdapter, OpenAIAdapter, XAIAdapter
from tokensense.providers.vertex import VertexAdapter

PROVIDERS: dict[str, Provider] = {}


def register(provider: Provider) -> Provider:
    """Add a provider (built in, or declared in config.toml); its name and aliases then resolve to it."""
    PROVIDERS[provider.name] = provider
    for alias in provider.aliases:
        ALIASES[alias] = provider.name
    return provider


ALIASES: dict[str, str] = {}

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
    "ALIASES", "OPENAI_COMPATIBLE", "PROVIDERS", "Provider", "ProviderAdapter", "StreamUsage", "Translator",
    "Upstream", "env_var", "get_provider", "names", "normalize", "openai_format_reader", "provider_for_host", "provider_for_model", "register",
]

"""Provider adapters and the registry that maps names and models to them."""

from __future__ import annotations

from tokensense.providers.anthropic import AnthropicAdapter
from tokensense.providers.base import ProviderAdapter, StreamUsage
from tokensense.providers.fal import FalAdapter
from tokensense.providers.gemini import GeminiAdapter
from tokensense.providers.openai import MistralAdapter, OpenAIAdapter, XAIAdapter

PROVIDERS: dict[str, ProviderAdapter] = {
    adapter.name: adapter
    for adapter in (
        OpenAIAdapter(),
        AnthropicAdapter(),
        GeminiAdapter(),
        XAIAdapter(),
        MistralAdapter(),
        FalAdapter(),
    )
}

# Providers that speak OpenAI's own format (chat, embeddings, streams with `include_usage`).
OPENAI_COMPATIBLE = frozenset({"openai", "xai", "mistral"})

# Other spellings users write in `provider/model` and in policies.
ALIASES: dict[str, str] = {"google": "gemini", "x-ai": "xai", "grok": "xai", "claude": "anthropic", "fal-ai": "fal"}


def get_provider(name: str) -> ProviderAdapter | None:
    name = name.lower()
    return PROVIDERS.get(ALIASES.get(name, name))


def provider_for_model(model: str) -> ProviderAdapter | None:
    """The provider that serves `model`, from its name alone (SPEC §4)."""
    for adapter in PROVIDERS.values():
        if adapter.owns_model(model):
            return adapter
    return None


__all__ = ["OPENAI_COMPATIBLE", "PROVIDERS", "ProviderAdapter", "StreamUsage", "get_provider", "provider_for_model"]

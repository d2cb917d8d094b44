"""Providers declared in config.toml: OpenAI-compatible APIs by configuration alone, and cloud options.

    [providers.deepseek]
    format = "openai"
    base_url = "https://api.deepseek.com"
    api_key_env = "DEEPSEEK_API_KEY"
    model_prefixes = ["deepseek-"]          # optional; `deepseek/MODEL` always works
    prices = "deepseek"                     # genai-prices provider id (default: the name)
    free = false                            # true: cost 0 (local Ollama, vLLM, LM Studio)
    intercept_hosts = ["api.deepseek.com"]

Each becomes an `OpenAICompatibleProvider`: the OpenAI adapter (auth, usage,
streams with `include_usage`) under another name, URL, key variable and price id.
`[providers.azure]`, `[providers.bedrock]` and `[providers.vertex]` instead set
the options of those built-in providers (`configure_cloud_providers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokensense.core.endpoints import RESPONSES_ENDPOINTS, Endpoint
from tokensense.metering.pricing import FREE_PRICES_PREFIX
from tokensense.providers.azure import AzureOpenAIAdapter
from tokensense.providers.base import ProviderAdapter
from tokensense.providers.bedrock import BedrockAdapter
from tokensense.providers.openai import OPENAI_ROUTES, OpenAIAdapter
from tokensense.providers.vertex import VertexAdapter

if TYPE_CHECKING:  # the configuration is read above the providers; they only take its tables
    from tokensense.config import FileConfig, ProviderConfig


class OpenAICompatibleProvider(OpenAIAdapter):
    """An OpenAI-format provider declared in config.toml (no code of its own)."""

    configured = True
    native = frozenset({Endpoint.CHAT, Endpoint.EMBEDDINGS})
    accepts_any_model = True
    client_routes = OPENAI_ROUTES  # OpenAI's own paths (videos) stay OpenAI's
    passthrough_paths = ()  # its other paths only under its prefix (`/NAME/v1/...`)

    def __init__(self, name: str, table: ProviderConfig) -> None:
        # Instance attributes shadow OpenAIAdapter's class attributes of the same names.
        self.name = name  # type: ignore[misc]
        self.display_name = table.display_name or name  # type: ignore[misc]
        self.default_base_url = table.base_url or ""  # type: ignore[misc]
        self.env_key = table.api_key_env or ""  # type: ignore[misc]
        # A free provider (a local server) costs nothing: a price id no catalog has.
        self.prices_id = f"{FREE_PRICES_PREFIX}{name}" if table.free else (table.prices or name)  # type: ignore[misc]
        self.model_prefixes = tuple(table.model_prefixes)  # type: ignore[misc]
        self.free = table.free
        self.intercept_hosts = tuple(table.intercept_hosts)
        self.hosts = self.intercept_hosts  # type: ignore[misc]
        # A local server (no api_key_env) takes calls without a key.
        self.requires_key = table.api_key_env is not None  # type: ignore[misc]
        if table.responses:
            self.native = frozenset({*self.native, *RESPONSES_ENDPOINTS})  # type: ignore[misc]

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    def owns_model(self, model: str) -> bool:
        return bool(self.model_prefixes) and model.startswith(self.model_prefixes)

    def listed_models(self, catalog_ids: list[str]) -> list[str]:
        """For /v1/models: the catalog's models of this provider, by the name that routes them here."""
        return sorted(m if self.owns_model(m) else f"{self.name}/{m}" for m in catalog_ids)

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider({self.name!r}, base_url={self.default_base_url!r})"


def configured_providers(config: FileConfig) -> list[ProviderAdapter]:
    """The OpenAI-compatible providers of `[providers.NAME]` tables, in file order."""
    from tokensense.providers import PROVIDERS

    return [OpenAICompatibleProvider(name, table) for name, table in config.providers.items()
            if not (name in PROVIDERS and PROVIDERS[name].options_from_config)]


def configure_cloud_providers(providers: dict[str, ProviderAdapter], config: FileConfig) -> None:
    """Apply `[providers.azure|bedrock|vertex]` options to the registered instances."""
    for name, table in config.providers.items():
        adapter = providers.get(name)
        if isinstance(adapter, AzureOpenAIAdapter):
            adapter.deployments = dict(table.deployments)
            adapter.api_version = table.api_version or adapter.api_version
            _set_url_and_key(adapter, table)
        elif isinstance(adapter, BedrockAdapter):
            if table.region:
                adapter.set_region(table.region)
            _set_url_and_key(adapter, table)
        elif isinstance(adapter, VertexAdapter):
            adapter.project = table.project or adapter.project
            adapter.location = table.location or adapter.location
            _set_url_and_key(adapter, table)


def _set_url_and_key(adapter: ProviderAdapter, table: ProviderConfig) -> None:
    if table.base_url:
        adapter.default_base_url = table.base_url  # type: ignore[misc]
    if table.api_key_env:
        adapter.env_key = table.api_key_env  # type: ignore[misc]


def register_configured(config: FileConfig) -> list[str]:
    """Add the config.toml providers to the registry (after the built-in ones) and apply cloud options.

    Called once at start-up (gateway and CLI) after config.toml is read; returns the names added.
    """
    from tokensense.providers import PROVIDERS, register

    configure_cloud_providers(PROVIDERS, config)
    added = []
    for adapter in configured_providers(config):
        register(adapter)
        added.append(adapter.name)
    return added

"""Azure OpenAI: `api-key` auth, deployment paths and the `/openai/v1/` paths, metered like OpenAI.

Native paths, as the openai SDK's `AzureOpenAI` client calls them:

    POST /openai/deployments/{deployment}/chat/completions?api-version=2024-10-21
    POST /openai/deployments/{deployment}/embeddings?api-version=...
    POST /openai/v1/chat/completions   (the v1 API: `model` in the body names the deployment)
    POST /openai/v1/embeddings, /openai/v1/responses

A deployment is a name the Azure user chose; `[providers.azure] deployments =
{ "prod-4o" = "gpt-4o" }` in config.toml says which model it runs, for prices,
model policies and the records. A deployment not listed is taken to be named
after its model (the Azure default). Prices come from the genai-prices `azure`
provider, which falls back to OpenAI's prices for models it does not list.
"""

from __future__ import annotations

import re
from typing import ClassVar, NamedTuple

from tokensense.core.endpoints import Endpoint
from tokensense.providers.base import Upstream
from tokensense.providers.openai import OPENAI_ERRORS, OpenAIAdapter
from tokensense.providers.routes import ClientRoute, Route

DEFAULT_API_VERSION = "2024-10-21"
OPERATIONS = ("chat/completions", "embeddings", "completions", "responses")

_DEPLOYMENT = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}"
_DEPLOYMENT_PATH = re.compile(rf"^/openai/deployments/(?P<deployment>{_DEPLOYMENT})/(?P<operation>chat/completions|embeddings|completions)$")
_V1_PATH = re.compile(r"^/openai/v1/(?P<operation>chat/completions|embeddings|responses)$")
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(?:-preview)?$|^(?:v1|latest|preview)$")


class AzurePath(NamedTuple):
    operation: str  # "chat/completions", "embeddings", "completions" or "responses"
    deployment: str | None  # None on /openai/v1/ paths: the body's `model` names it


def parse_native_path(path: str) -> AzurePath | None:
    """The operation and deployment of an Azure OpenAI path (without query), or None."""
    if match := _DEPLOYMENT_PATH.match(path):
        return AzurePath(match["operation"], match["deployment"])
    if match := _V1_PATH.match(path):
        return AzurePath(match["operation"], None)
    return None


def valid_deployment(name: str) -> bool:
    return bool(re.fullmatch(_DEPLOYMENT, name))


def valid_api_version(value: str) -> bool:
    return bool(_API_VERSION.match(value))


def deployment_path(deployment: str, operation: str) -> str:
    if not valid_deployment(deployment) or operation not in OPERATIONS:
        raise ValueError(f"not an Azure deployment or operation: {deployment!r} {operation!r}")
    return f"/openai/deployments/{deployment}/{operation}"


def v1_path(operation: str) -> str:
    if operation not in OPERATIONS:
        raise ValueError(f"not an Azure OpenAI operation: {operation!r}")
    return f"/openai/v1/{operation}"


def _parse_route(entry: ClientRoute, match: re.Match[str]) -> Route | None:
    deployment = parse_native_path(match.string)
    if deployment is None:
        return None
    params = (("deployment", deployment.deployment),) if deployment.deployment else (("api", "v1"),)
    return entry.route(model=deployment.deployment, params=params)


# The openai SDK's `AzureOpenAI` paths: a deployment path (the deployment is the model) or the v1 API
# (`model` in the body names the deployment). Both name the provider; both are retried like OpenAI's.
AZURE_ROUTES: tuple[ClientRoute, ...] = tuple(
    ClientRoute(("POST",), rf"/openai/(?:deployments/{_DEPLOYMENT}|v1)/{operation}", endpoint, OPENAI_ERRORS,
                retried=True, names_provider=True, parse=_parse_route)
    for operation, endpoint in (("chat/completions", Endpoint.CHAT), ("embeddings", Endpoint.EMBEDDINGS))
)


class AzureOpenAIAdapter(OpenAIAdapter):
    name: ClassVar[str] = "azure"
    options_from_config: ClassVar[bool] = True
    otel_name: ClassVar[str | None] = "azure.ai.openai"
    display_name: ClassVar[str] = "Azure OpenAI"
    # No usable default: every Azure resource has its own host (https://RESOURCE.openai.azure.com).
    default_base_url: ClassVar[str] = "https://YOUR-RESOURCE.openai.azure.com"
    env_key: ClassVar[str] = "AZURE_OPENAI_API_KEY"
    prices_id: ClassVar[str] = "azure"
    model_prefixes: ClassVar[tuple[str, ...]] = ()
    aliases: ClassVar[tuple[str, ...]] = ("azure-openai",)
    hosts: ClassVar[tuple[str, ...]] = ()
    native: ClassVar[frozenset[Endpoint]] = frozenset({Endpoint.CHAT, Endpoint.EMBEDDINGS})
    client_routes: ClassVar[tuple[ClientRoute, ...]] = AZURE_ROUTES
    api_versions: ClassVar[tuple[str, ...]] = ()  # no passthrough: its paths are per deployment
    passthrough_paths: ClassVar[tuple[str, ...]] = ()
    sdk_user_agents: ClassVar[tuple[str, ...]] = ()
    sdk_hint_headers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, deployments: dict[str, str] | None = None, api_version: str | None = None) -> None:
        self.deployments = dict(deployments or {})
        self.api_version = api_version or DEFAULT_API_VERSION

    def owns_model(self, model: str) -> bool:
        return False  # OpenAI model names belong to OpenAI; use `azure/DEPLOYMENT`

    def claims_model(self, model: str) -> bool:
        # `/openai/v1/...` is the OpenAI prefix and Azure's v1 API: `azure/NAME` or a declared deployment is Azure's.
        return super().claims_model(model) or model in self.deployments

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"api-key": api_key}

    def listed_models(self, catalog_ids: list[str]) -> list[str]:
        """For /v1/models: the configured deployments, as `azure/DEPLOYMENT`."""
        return sorted(f"azure/{deployment}" for deployment in self.deployments)

    def model_for_deployment(self, deployment: str) -> str:
        """The model a deployment runs (config.toml), else the deployment's own name."""
        return self.deployments.get(deployment, deployment)

    def catalog_model(self, model: str) -> str:
        return self.model_for_deployment(model)

    def upstream(self, endpoint: Endpoint, model: str, *, stream: bool, action: str | None = None,
                 version: str | None = None, params: dict[str, str] | None = None) -> Upstream:
        """A deployment path when the client used one (its `api-version` kept), else the v1 API (`model` = deployment)."""
        operation = _OPERATION_OF[endpoint]
        if params and params.get("deployment"):
            return Upstream(endpoint, deployment_path(params["deployment"], operation))
        return Upstream(endpoint, v1_path(operation))


_OPERATION_OF = {Endpoint.CHAT: "chat/completions", Endpoint.EMBEDDINGS: "embeddings"}

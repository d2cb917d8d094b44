"""The cloud platforms' own paths (Bedrock, Vertex AI, Azure OpenAI) as gateway routes.

Each path names its provider, so the route carries it; the model (or Azure
deployment) and the other parts the provider needs upstream come from the path,
validated by the provider module's parser. Anything these parsers reject is a 404.
"""

from __future__ import annotations

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorFormat
from tokensense.gateway.routing import Route
from tokensense.providers import azure, bedrock, vertex

_AZURE_ENDPOINTS = {"chat/completions": Endpoint.CHAT, "embeddings": Endpoint.EMBEDDINGS}


def classify_cloud(path: str) -> Route | None:
    """The route of a POST to a Bedrock, Vertex AI or Azure OpenAI path (without query), or None."""
    if path.startswith("/model/"):
        parsed = bedrock.parse_native_path(path)
        if parsed is None:
            return None
        model, action = parsed
        return Route(Endpoint.BEDROCK, ErrorFormat.BEDROCK, model=model, action=action, provider="bedrock")
    if path.startswith("/openai/"):
        deployment = azure.parse_native_path(path)
        endpoint = _AZURE_ENDPOINTS.get(deployment.operation) if deployment else None
        if deployment is None or endpoint is None:
            return None
        params = (("deployment", deployment.deployment),) if deployment.deployment else (("api", "v1"),)
        return Route(endpoint, ErrorFormat.OPENAI, model=deployment.deployment, provider="azure", params=params)
    if "/projects/" in path:
        parts = vertex.parse_native_path(path)
        if parts is None:
            return None
        fmt = ErrorFormat.GOOGLE if parts.publisher == "google" else ErrorFormat.ANTHROPIC
        # Claude's token counting has the pseudo-model `count-tokens` in the path; the body names the model.
        path_model: str | None = None if parts.model == "count-tokens" else parts.model
        vertex_params = (("project", parts.project), ("location", parts.location), ("publisher", parts.publisher),
                         ("path_model", parts.model))
        return Route(Endpoint.VERTEX, fmt, model=path_model, action=parts.action, version=parts.version,
                     provider="vertex", params=vertex_params)
    return None

"""Which provider's SDK sent a request, and which provider a path several providers share goes to.

Several providers have the same path (`/v1/files`: OpenAI, xAI, Mistral, Anthropic;
`GET /v1/batches`: OpenAI and Gemini; `/v1/fine_tuning`: OpenAI and Mistral). A
request there goes to the provider whose own SDK sent it, told by its User-Agent or a
header only its SDKs send (`Provider.sdk_user_agents`, `sdk_headers`, then the
weaker `sdk_hint_headers`): the mistralai SDK's `/v1/files` is Mistral's, never
OpenAI's with OpenAI's key. A client no provider claims (curl, an unknown SDK) is
told to use a prefix on a shared path that names no resource of its own and whose
body cannot name a model (a list, an upload); a resource the gateway owns
(a file id) is routed by its owner, a JSON body by its model.
"""

from __future__ import annotations

from collections.abc import Mapping

from tokensense.core.errors import GatewayError
from tokensense.providers import PROVIDERS, Provider


def asking_sdk(headers: Mapping[str, str]) -> Provider | None:
    """The provider whose own SDK sent a request with these headers (None: none can be told).

    Every provider's User-Agent prefixes and own headers first, then the hint headers, which count only where
    the User-Agent names no SDK (none, or a browser's): another Stainless-made SDK (`Groq/Python`) sends them too.
    """
    agent = headers.get("user-agent") or ""
    for provider in PROVIDERS.values():
        if (provider.sdk_user_agents and agent.startswith(provider.sdk_user_agents)) or any(
            name in headers for name in provider.sdk_headers
        ):
            return provider
    if agent and not agent.startswith("Mozilla/"):
        return None
    for provider in PROVIDERS.values():
        if any(name in headers for name in provider.sdk_hint_headers):
            return provider
    return None


def providers_having(method: str, path: str) -> list[Provider]:
    """The providers whose API has `method path` as it is (no prefix): a route naming its provider (files,
    batches), or a passthrough path they list (`v1/files`)."""
    having: list[Provider] = []
    head = path[1:].split("/", 2)
    listed = f"{head[0]}/{head[1]}" if len(head) >= 2 else None
    for provider in PROVIDERS.values():
        if listed is not None and listed in provider.passthrough_paths:
            having.append(provider)
            continue
        for entry in provider.client_routes:
            if not entry.names_provider:
                continue
            try:
                matched = entry.match(method, path, owner=provider.name)
            except GatewayError:
                matched = None
            if matched is not None and matched.provider == provider.name:
                having.append(provider)
                break
    return having


def prefixed_paths(path: str, providers: list[Provider]) -> str:
    """The same path under each provider's prefix (`/openai/v1/files, /mistral/v1/files`)."""
    return ", ".join(f"/{p.name}{path}" for p in providers)


def unclaimed_refusal(method: str, path: str, providers: list[Provider]) -> GatewayError:
    """The 400 of a shared path whose asking SDK cannot be told."""
    names = ", ".join(p.display_name for p in providers)
    return GatewayError(
        400,
        f"Several providers have {method[:16]} {path[:200]} ({names}) and TokenSense cannot tell which provider's "
        f"SDK sent this request: call it under the provider's prefix ({prefixed_paths(path, providers)}).",
        code="ambiguous_provider",
    )


__all__ = ["asking_sdk", "prefixed_paths", "providers_having", "unclaimed_refusal"]

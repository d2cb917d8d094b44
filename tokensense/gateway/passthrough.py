"""The passthrough's policy: how a passed-through call is paid for, who may make it, and what is listed as served.

A passthrough call (tokensense/providers/passthrough.py) is one of three kinds:
`free` (`GET` listings, `DELETE`s, and the families `[passthrough] free` names:
recorded at cost 0), `priced` (the families `[passthrough] priced` names: priced
from the `usage` of the answer) or `unpriced` (the rest: cost from `usage` when
the answer has one, else NULL). A key with a budget may not make unpriced calls:
their cost could not be counted against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any, Literal, NamedTuple

from tokensense.config import PassthroughConfig
from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway.body import UploadLimit, parse_json_body
from tokensense.gateway.keys import KeyInfo
from tokensense.providers import PROVIDERS, Provider, get_provider, match_route, provider_for_model, route_table
from tokensense.providers.passthrough import owner_of
from tokensense.providers.routes import PassthroughPath

Kind = Literal["free", "priced", "unpriced"]
FREE_METHODS = frozenset({"GET", "HEAD", "DELETE"})  # listings, retrievals and deletions cost nothing


def passthrough_kind(config: PassthroughConfig, method: str, family: str) -> Kind:
    """How a passthrough call of `method` on `family` is paid for."""
    if method in FREE_METHODS or family in config.free:
        return "free"
    return "priced" if family in config.priced else "unpriced"


def unpriced_path_refusal(key: KeyInfo, method: str, path: PassthroughPath, *,
                          budget: str | None = None) -> GatewayError | None:
    """A 403 naming the path when `key` has a budget, or the call counts against `budget` (a budget on its
    attribution, named as refusals name it), and the call is an unpriced passthrough; None otherwise."""
    if (key.budget_usd is None and budget is None) or path.kind != "unpriced":
        return None
    holder = f"The key `{key.name}` has a budget" if key.budget_usd is not None else f"The call counts against the budget of {budget}"
    return GatewayError(
        403,
        f"{holder}, and TokenSense cannot price {method} {path.path} (passed through "
        f"to the provider, family `{path.family}`): its cost could not be counted against the budget. Mark the "
        f'family free or priced in config.toml (`[passthrough] free = ["{path.family}"]` or `priced = [...]`), '
        "or call it outside budgets.",
        code="path_unpriced",
    )


def capped_path_refusal(cap: float, method: str, path: PassthroughPath) -> GatewayError:
    """The 402 for a passthrough call with a cost cap whose cost TokenSense cannot bound (unpriced, or no model)."""
    return GatewayError(
        402,
        f"This call has a cost cap of ${cap:g}, and TokenSense cannot bound the cost of {method} {path.path} (passed "
        f"through, family `{path.family}`). Mark the family free in config.toml (`[passthrough] free = "
        f'["{path.family}"]`), or send it without a cap.',
        code="max_cost_exceeded",
    )


def endpoint_refusal(key: KeyInfo, endpoint: Endpoint) -> GatewayError | None:
    """A 403 when `key` is limited to endpoints (`keys create --allow-endpoint`) and `endpoint` is not one of them."""
    allowed = key.allowed_endpoints
    if not allowed or any(fnmatchcase(endpoint.value, pattern) for pattern in allowed):
        return None
    return GatewayError(
        403,
        f"The key `{key.name}` may not call the endpoint `{endpoint.value}` (allowed: {', '.join(allowed)}).",
        code="endpoint_not_allowed",
    )


class PassthroughCall(NamedTuple):
    """The parse of a passthrough call: who serves it, the model its body names, how it is paid for."""

    provider: Provider
    model: str | None  # as priced (the provider's catalog name); None: the body names none
    requested: str | None  # as the body named it
    body: dict[str, Any] | None  # the JSON body (None: not JSON, e.g. a file upload)
    path: PassthroughPath  # with its `kind` set


def parse_passthrough(
    config: PassthroughConfig, method: str, path: PassthroughPath, content_type: str, raw: bytes | None
) -> PassthroughCall:
    """The provider, model and kind of a passthrough call; a 400 for a bad JSON body or a shared path whose body
    names no model of one of its providers."""
    body = None
    model: str | None = None
    if raw and "json" in content_type.lower():
        body = parse_json_body(raw)  # parsed once, with limits; a 400 says what is wrong
        named = body.get("model")
        model = named if isinstance(named, str) and named else None
    named_provider = None
    if model is not None:
        named_provider = provider_for_model(model)
        if named_provider is None and "/" in model:
            named_provider = get_provider(model.split("/", 1)[0])
    provider = owner_of(path, model, named_provider)
    priced = provider.catalog_model(model.removeprefix(f"{provider.name}/")) if model is not None else None
    # A route that passes its path through declares it free itself (a WebRTC call's SDP exchange); else config says.
    kind = "free" if path.kind == "free" else passthrough_kind(config, method, path.family)
    return PassthroughCall(provider, priced, model, body, path._replace(kind=kind))


# Client headers never passed through: credentials for the gateway itself (a proxy's, the client's cookies).
CLIENT_ONLY_HEADERS = ("proxy-authorization", "cookie")
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


def streams_upload(method: str, headers: Mapping[str, str]) -> bool:
    """Whether a passthrough call's body is streamed to the provider as it arrives: a body that is not JSON (a
    multipart upload, raw bytes) has no model to read, so it is never buffered, and TOKENSENSE_MAX_UPLOAD_MB
    (not the JSON body limit) bounds it."""
    if method in _BODYLESS or "json" in (headers.get("content-type") or "").lower():
        return False
    length = headers.get("content-length") or ""
    return (length.isdigit() and int(length) > 0) or "chunked" in (headers.get("transfer-encoding") or "").lower()


def endpoint_listing(config: PassthroughConfig, *, prefix_url: str = "") -> dict[str, Any]:
    """What the gateway serves (`GET /v1/tokensense/endpoints`): the metered endpoints with their pricing, the
    passed-through families by provider with theirs, and the provider prefixes."""
    served: dict[str, dict[str, Any]] = {}
    for entry, owner in route_table():
        endpoint = entry.endpoint.value
        item = served.setdefault(
            endpoint, {"endpoint": endpoint, "pricing": "free" if entry.free else "priced", "providers": []}
        )
        owners = [name for name, p in PROVIDERS.items() if entry in p.client_routes]
        item["providers"] = sorted({*item["providers"], *(owners or [owner])})
    passthrough = []
    for name, provider in PROVIDERS.items():
        for listed in provider.passthrough_paths:
            family = listed.split("/", 1)[1]
            if _served(f"/{listed}"):
                continue  # a route serves it (and meters it): listed above
            kind = "free" if family in config.free else "priced" if family in config.priced else "unpriced"
            passthrough.append(
                {
                    "path": f"/{listed}",
                    "family": family,
                    "provider": name,
                    "pricing": kind,
                    "free_methods": sorted(FREE_METHODS),
                }
            )
    prefixes = [
        {"provider": name, "prefix": f"{prefix_url}/{name}", "api_versions": list(p.api_versions)}
        for name, p in PROVIDERS.items()
        if p.api_versions or p.client_routes
    ]
    return {
        "object": "tokensense.endpoints",
        "served": sorted(served.values(), key=lambda e: e["endpoint"]),
        "passthrough": passthrough,
        "prefixes": prefixes,
    }


def _served(path: str) -> bool:
    """Whether a route of the table serves `path` itself (then the passthrough never sees it)."""
    for method in ("GET", "POST"):
        try:
            if match_route(method, path) is not None:
                return True
        except GatewayError:
            return True
    return False


__all__ = [
    "CLIENT_ONLY_HEADERS",
    "FREE_METHODS",
    "Kind",
    "PassthroughCall",
    "capped_path_refusal",
    "endpoint_listing",
    "endpoint_refusal",
    "parse_passthrough",
    "passthrough_kind",
    "streams_upload",
    "UploadLimit",
    "unpriced_path_refusal",
]

"""The Gemini API's context caches (`/{v1beta|v1}/cachedContents`): routes, and how their storage is booked.

Google bills a cache's storage by the hour: its tokens (`usageMetadata.totalTokenCount`) for as long as its
TTL keeps it. TokenSense books the time a create asks for (the answer's `expireTime` less its `createTime`: a
`ttl` or an `expireTime` alike) on the create's record, and the time an update adds (the new `expireTime`
less the one it had) on the update's record. Reads, lists and deletions are free.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape, GatewayError
from tokensense.providers.owned import CREATE, DELETE, LIST, READ, UPDATE, Metered, OwnedRules
from tokensense.providers.routes import ClientRoute

CACHES = Endpoint("cached_contents")  # create (its storage booked on its record)
CACHES_GET = Endpoint("cached_contents.get")
CACHES_LIST = Endpoint("cached_contents.list")
CACHES_UPDATE = Endpoint("cached_contents.update")  # the TTL it adds booked on its record
CACHES_DELETE = Endpoint("cached_contents.delete")
CACHE_ENDPOINTS = frozenset({CACHES, CACHES_GET, CACHES_LIST, CACHES_UPDATE, CACHES_DELETE})

_BASE = r"/(?P<version>v1beta|v1)/cachedContents"
_ONE = _BASE + r"/(?P<resource>[^/:]+)"


def cache_routes(errors: ErrorShape) -> tuple[ClientRoute, ...]:
    return (
        ClientRoute(("POST",), _BASE, CACHES, errors, owned=CREATE, names_provider=True),
        ClientRoute(("GET",), _BASE, CACHES_LIST, errors, owned=LIST, free=True, names_provider=True),
        ClientRoute(("GET",), _ONE, CACHES_GET, errors, owned=READ, free=True, names_provider=True),
        ClientRoute(("PATCH",), _ONE, CACHES_UPDATE, errors, owned=UPDATE, names_provider=True),
        ClientRoute(("DELETE",), _ONE, CACHES_DELETE, errors, owned=DELETE, free=True, names_provider=True),
    )


def _instant(value: Any) -> float | None:
    """An RFC 3339 time (`2026-12-06T16:00:00.123456Z`) as epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # fractions of more than 6 digits (nanoseconds) are more than `fromisoformat` reads on older Pythons
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _tokens(answer: dict[str, Any]) -> int | None:
    meta = answer.get("usageMetadata")
    count = meta.get("totalTokenCount") if isinstance(meta, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None


class ContextCaches(OwnedRules):
    kind = CACHES

    def model_of(self, fields: dict[str, Any]) -> str | None:
        model = fields.get("model")
        return model.removeprefix("models/") if isinstance(model, str) and model else None

    def upstream_path(self, endpoint: Endpoint, resource: str | None, version: str | None) -> str:
        base = f"/{version if version in ('v1', 'v1beta') else 'v1beta'}/cachedContents"
        if endpoint is CACHES or endpoint is CACHES_LIST:
            return base
        if resource is None:
            raise GatewayError(404, "The path names no cached content.", code="unknown_endpoint")
        return f"{base}/{resource}"

    def stored_id(self, resource: str) -> str:
        return f"cachedContents/{resource}"

    def resource_id(self, answer: dict[str, Any]) -> str | None:
        name = answer.get("name")
        return name if isinstance(name, str) and name.startswith("cachedContents/") else None

    def listed(self, answer: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
        items = answer.get("cachedContents", [])
        return ("cachedContents", [i for i in items if isinstance(i, dict)]) if isinstance(items, list) else None

    def item_id(self, item: dict[str, Any]) -> str | None:
        return self.resource_id(item)

    def stored(self, answer: dict[str, Any], state: dict[str, Any] | None) -> tuple[Metered | None, dict[str, Any]]:
        expire = _instant(answer.get("expireTime"))
        tokens = _tokens(answer)
        if tokens is None and state is not None:
            tokens = state.get("tokens") if isinstance(state.get("tokens"), int) else None
        kept: dict[str, Any] = {"expire": expire, "tokens": tokens}
        if expire is None or tokens is None:
            return None, kept
        start = _instant(answer.get("createTime")) if state is None else state.get("expire")
        if not isinstance(start, int | float):
            return None, kept
        return Metered(max(expire - start, 0.0), tokens=tokens), kept

"""The upstream request of a call, prepared by the gates and applied to the flow in one step, last."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from mitmproxy.net.http import url

from tokensense.gateway.auth import KEY_HEADERS
from tokensense.gateway.routing import join_url
from tokensense.providers.base import Provider, Upstream

KEY_HEADER_NAMES = frozenset(name.encode() for name in KEY_HEADERS)


@dataclass(slots=True)
class PendingUpstream:
    """Everything the forward stage writes to the flow; built from validated parts only."""

    provider: Provider
    base_url: str
    api_key: str
    upstream: Upstream
    body: bytes | None = None  # None: the client's body goes as it is
    content_type: str | None = None
    drop_header_prefixes: tuple[str, ...] = ()
    extra_headers: dict[str, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=256)
def upstream_target(base_url: str, upstream_path: str) -> tuple[str, str, int, bytes, str]:
    """(scheme, host, port, path, Host header) for a provider path; parsed once per base URL and path."""
    scheme, raw_host, port, path = url.parse(join_url(base_url, upstream_path))
    host = raw_host.decode("idna")
    return scheme.decode(), host, port, path, url.hostport(scheme.decode(), host, port)

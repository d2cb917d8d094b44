"""Small helpers the addons share: the per-flow call context and answering a flow ourselves."""

from __future__ import annotations

import asyncio
import functools
import json

from mitmproxy import http
from mitmproxy.net.http import url

from tokensense.gateway.auth import KEY_HEADERS
from tokensense.gateway.crypto import hash_key
from tokensense.gateway.errors import ErrorFormat, GatewayError, error_bytes
from tokensense.gateway.keys import Credential, KeyInfo
from tokensense.gateway.call import CallContext
from tokensense.providers import ProviderAdapter
from tokensense.gateway.routing import join_url
from tokensense.gateway.runtime import Runtime

CALL = "tokensense.call"
_KEY_HEADER_NAMES = frozenset(name.encode() for name in KEY_HEADERS)
JSON_HEADERS = {"content-type": "application/json"}


def get_call(flow: http.HTTPFlow) -> CallContext | None:
    return flow.metadata.get(CALL)


def answer_error(flow: http.HTTPFlow, fmt: ErrorFormat, error: GatewayError, headers: dict[str, str] | None = None) -> None:
    """Answer the flow with `error` in the endpoint's error shape; nothing goes upstream."""
    call = get_call(flow)
    if call is not None:
        call.status = error.status
        call.error = error.message
    flow.response = http.Response.make(
        error.status,
        error_bytes(fmt, error.status, error.message, code=error.code, param=error.param),
        {**JSON_HEADERS, **(headers or {})},
    )


def answer_json(flow: http.HTTPFlow, status: int, body: object) -> None:
    flow.response = http.Response.make(status, json.dumps(body).encode(), JSON_HEADERS)


async def lookup_key(runtime: Runtime, presented: str, *, where: str = "") -> KeyInfo:
    """The TokenSense key `presented`, from the cache or (once) the database; 401 if unknown or revoked."""
    assert runtime.keys is not None
    key_hash = hash_key(presented)
    info = runtime.keys.key(key_hash)
    if info is None:
        info = await asyncio.to_thread(runtime.keys.load_key, key_hash)
    if info is None:
        raise GatewayError(401, f"Unknown TokenSense key{where}.", code="invalid_api_key")
    if info.revoked:
        raise GatewayError(401, f"The TokenSense key `{info.name}` has been revoked.", code="revoked_api_key")
    return info


def require_credential(runtime: Runtime, adapter: ProviderAdapter) -> Credential:
    """The provider key to use, or a 403 that says how to configure one."""
    assert runtime.keys is not None
    credential = runtime.keys.credential(adapter.name)
    if not credential.api_key:
        raise GatewayError(403, f"No {adapter.display_name} API key is configured. Run `tokensense providers set "
                           f"{adapter.name} --api-key ...` or set {adapter.env_key}.", code="provider_key_missing")
    return credential


@functools.lru_cache(maxsize=256)
def _upstream_target(base_url: str, upstream_path: str) -> tuple[str, str, int, bytes, str]:
    """(scheme, host, port, path, Host header) for a provider path; parsed once per base URL and path."""
    scheme, raw_host, port, path = url.parse(join_url(base_url, upstream_path))
    host = raw_host.decode("idna")
    return scheme.decode(), host, port, path, url.hostport(scheme.decode(), host, port)


def send_upstream(flow: http.HTTPFlow, adapter: ProviderAdapter, credential: Credential, upstream_path: str) -> None:
    """Point the request at the provider: its URL (with the base URL's prefix), its auth, no client key."""
    req = flow.request
    headers = req.headers
    headers.fields = tuple(f for f in headers.fields if f[0].lower() not in _KEY_HEADER_NAMES)
    if "key=" in req.path:
        req.query.pop("key", None)
    query = req.data.path.partition(b"?")[2]
    scheme, host, port, path, host_header = _upstream_target(credential.base_url, upstream_path)
    # Set the parts directly: `req.url = ...` would parse the whole URL again on every request.
    req.scheme, req.host, req.port = scheme, host, port
    req.data.path = path + b"?" + query if query else path
    if "host" in headers:
        headers["host"] = host_header
    if req.data.authority:
        req.authority = host_header
    for name, value in adapter.auth_headers(credential.api_key or "").items():
        headers[name] = value
    if adapter.name == "anthropic" and "anthropic-version" not in headers:
        headers["anthropic-version"] = "2023-06-01"
    call = get_call(flow)
    if call is not None and call.stream:
        # TokenSense reads streams as they pass: ask for them uncompressed.
        headers["accept-encoding"] = "identity"


def response_body(response: http.Response) -> bytes:
    """The response body, decompressed if the provider compressed it (usage must be read from it)."""
    if "content-encoding" in response.headers:
        return response.get_content(strict=False) or b""
    return response.raw_content or b""

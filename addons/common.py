"""Small helpers the addons share: answering a flow ourselves, keys, and writing the upstream request."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape, GatewayError, error_bytes
from tokensense.crypto import hash_key
from tokensense.gateway.call import CallContext, Record
from tokensense.gateway.flowmeta import CALL, get_call, set_call
from tokensense.gateway.forward import KEY_HEADER_NAMES, PendingUpstream, upstream_target
from tokensense.gateway.keys import Credential, KeyInfo
from tokensense.gateway.runtime import Runtime
from tokensense.providers import ProviderAdapter, error_shape_for_path
from tokensense.providers.base import Upstream

__all__ = ["CALL", "get_call"]
log = logging.getLogger(__name__)
JSON_HEADERS = {"content-type": "application/json"}


def intercepting(mode: ProxyMode | None) -> bool:
    """Every mode but the gateway's reverse mode is intercept mode (regular, upstream, socks5, ...)."""
    return mode is not None and not isinstance(mode, ReverseMode)


def asks_for_websocket(req: http.Request) -> bool:
    """A WebSocket handshake: `GET` with `Upgrade: websocket`."""
    return req.method == "GET" and req.headers.get("upgrade", "").lower() == "websocket"


def answer_error(flow: http.HTTPFlow, fmt: ErrorShape, error: GatewayError, headers: dict[str, str] | None = None) -> None:
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


def answer_internal_error(flow: http.HTTPFlow) -> None:
    """The answer when a gate failed: a JSON 500 in the endpoint's shape, with the request id; nothing upstream."""
    call = get_call(flow)
    if call is None:  # the admit stage itself failed: a call to carry the request id (nobody to record it for)
        path = flow.request.path.partition("?")[0]
        call = CallContext(Endpoint.UNKNOWN, error_shape_for_path(path), method=flow.request.method,
                           record_state=Record.NONE)
        set_call(flow, call)
    answer_error(flow, call.fmt, GatewayError(
        500, f"TokenSense had an internal error and did not forward the request (request id {call.request_id}).",
        code="internal_error"))


def answer_json(flow: http.HTTPFlow, status: int, body: object) -> None:
    flow.response = http.Response.make(status, json.dumps(body).encode(), JSON_HEADERS)


async def lookup_key(runtime: Runtime, presented: str, *, where: str = "") -> KeyInfo:
    """The TokenSense key `presented`, from the cache or (once) the database; 401 if unknown or revoked."""
    assert runtime.keys is not None
    if not presented.isascii() or not presented.isprintable() or len(presented) > 512:
        raise GatewayError(401, f"The TokenSense key{where} is malformed.", code="invalid_api_key")
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
    if not adapter.has_credentials(credential.api_key):
        raise GatewayError(403, f"No {adapter.display_name} API key is configured. Run `tokensense providers set "
                           f"{adapter.name} --api-key ...` or set {adapter.env_key}.", code="provider_key_missing")
    return credential


def prepare_upstream(call: CallContext, adapter: ProviderAdapter, credential: Credential, upstream: Upstream, *,
                     body: bytes | None = None, content_type: str | None = None,
                     drop_header_prefixes: tuple[str, ...] = ()) -> None:
    """Record where the call will go; the forward stage writes it to the flow once every gate passed."""
    base_url = credential.base_url
    if upstream.regional_base_url and base_url == adapter.default_base_url:
        base_url = upstream.regional_base_url  # the call's own host (a Vertex AI location), unless overridden
    call.pending = PendingUpstream(adapter, base_url, credential.api_key or "", upstream, body=body,
                                   content_type=content_type,
                                   drop_header_prefixes=drop_header_prefixes + adapter.drop_headers)


def strip_client_keys(req: http.Request) -> None:
    """Remove every header and query parameter that can carry a client's key (before anything can log it)."""
    headers = req.headers
    # `X_Api_Key` is `x-api-key` to servers that read `_` as `-`: every spelling goes.
    if any(name.lower().replace(b"_", b"-") in KEY_HEADER_NAMES for name, _ in headers.fields):
        headers.fields = tuple(f for f in headers.fields if f[0].lower().replace(b"_", b"-") not in KEY_HEADER_NAMES)
    if b"key=" in req.data.path:
        req.query.pop("key", None)


def apply_upstream(flow: http.HTTPFlow, pending: PendingUpstream) -> None:
    """Point the request at the provider in one step: URL (with the base URL's prefix), body, auth; no client key."""
    req = flow.request
    headers = req.headers
    strip_client_keys(req)
    if pending.drop_header_prefixes:
        for name in [h for h in headers if h.lower().startswith(pending.drop_header_prefixes)]:
            headers.pop(name, None)
    upstream = pending.upstream
    if upstream.query is not None:
        req.query = list(upstream.query)  # the provider's own query (translated calls), not the client's
    query = req.data.path.partition(b"?")[2]
    scheme, host, port, path, host_header = upstream_target(pending.base_url, upstream.path)
    # Set the parts directly: `req.url = ...` would parse the whole URL again on every request.
    req.scheme, req.host, req.port = scheme, host, port
    req.data.path = path + b"?" + query if query else path
    if "host" in headers:
        headers["host"] = host_header
    if req.data.authority:
        req.authority = host_header
    if pending.body is not None:
        req.content = pending.body
    if pending.content_type:
        headers["content-type"] = pending.content_type
    for name, value in pending.provider.default_headers().items():
        if name not in headers:
            headers[name] = value
    provider = pending.provider
    if provider.signs_requests:  # SigV4: over the final URL, headers and body
        auth = provider.upstream_auth(pending.api_key, method=req.method, url=req.url, headers=headers,
                                      body=req.raw_content or b"")
    else:
        auth = provider.auth_headers(pending.api_key)
    for name, value in auth.items():
        headers[name] = value
    call = get_call(flow)
    if call is not None and call.stream:
        # TokenSense reads streams as they pass: ask for them uncompressed.
        headers["accept-encoding"] = "identity"


def response_body(response: http.Response) -> bytes:
    """The response body, decompressed if the provider compressed it (usage must be read from it)."""
    if "content-encoding" in response.headers:
        return response.get_content(strict=False) or b""
    return response.raw_content or b""


def write_translated_answer(flow: http.HTTPFlow, call: CallContext, answer: Callable[[Any], dict],
                            error: Callable[[int, bytes], dict], *, what: str = "answer") -> dict | None:
    """Replace an unstreamed provider answer with its translation; the translated body of a 2xx, else None.

    Usage is read from the provider's own answer first. An answer the translation cannot read becomes a
    502 in the endpoint's shape, never the raw provider body.
    """
    response = flow.response
    assert response is not None and call.provider is not None
    content = response_body(response)
    ok = 200 <= response.status_code < 300
    try:
        if ok:
            provider_answer = json.loads(content)
            call.usage = call.provider.usage_from_body(provider_answer)
            translated = answer(provider_answer)
        else:
            translated = error(response.status_code, content)
            call.error = str(translated.get("error", {}).get("message", ""))[:300] or None
    except Exception as e:
        log.warning("request %s: %s %s could not be translated (%s)", call.request_id,
                    call.provider.display_name, what, type(e).__name__)
        answer_error(flow, call.fmt, GatewayError(
            502, f"{call.provider.display_name} answered in a shape TokenSense could not translate.",
            code="upstream_error"))
        return None
    response.headers.pop("content-encoding", None)
    response.content = json.dumps(translated).encode()
    response.headers["content-type"] = "application/json"
    return translated if ok else None

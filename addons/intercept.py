"""Intercept mode: meters calls to provider hosts made through TokenSense as a regular (HTTPS_PROXY) proxy."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

from mitmproxy import ctx, exceptions, http
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import layer, layers, server_hooks
from mitmproxy.proxy.layers.tls import parse_client_hello

from addons.admit import admit, take_cost_cap
from addons.common import CALL, answer_error, asks_for_websocket, get_call, intercepting
from addons.realtime import INTERCEPTED_SOCKET, intercepted_protocol
from tokensense.core.errors import GatewayError
from tokensense.gateway.flowmeta import refuse_body, set_call
from tokensense.gateway.intercept import (
    KEY_HEADER,
    HostTable,
    admitted_call,
    intercept_route,
    parse_hostmap,
    parse_intercepted,
)
from tokensense.gateway.runtime import Runtime
from tokensense.metering.attribution import attribution
from tokensense.providers import DEFAULT_ERRORS

log = logging.getLogger(__name__)



class Intercept:
    """Decides which connections of the regular proxy are decrypted, and meters the provider calls in them.

    Runs before Admit. A flow it meters goes through the gateway's admit gate
    (`addons.admit.admit`) on its request headers: the TokenSense key when
    `tokensense_intercept_require_key` is on, the body limit from Content-Length,
    so a refused client's body is read and dropped, never buffered. It gets a
    CallContext (so Admit and Router, which serve the gateway, leave it alone)
    with the client's own provider key left in place. Any other flow of a
    regular-mode client gets `None` under `tokensense.call`: no TokenSense addon touches it.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.hostmap: dict[str, tuple[str, int]] = {}
        self._table: HostTable | None = None
        self._table_config: object = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "tokensense_intercept_require_key", bool, False,
            f"Intercept mode: refuse provider calls without a TokenSense key in the `{KEY_HEADER}` header "
            "(removed before forwarding), and apply that key's policies.",
        )
        loader.add_option(
            "tokensense_intercept_hostmap", Sequence[str], [],
            "Intercept mode, for tests and demos: connect to ADDRESS:PORT whenever a client asks for HOST "
            "(HOST=ADDRESS:PORT; repeat the option for more hosts). TLS SNI and the Host header stay HOST.",
        )

    def configure(self, updated: set[str]) -> None:
        if "tokensense_intercept_hostmap" in updated:
            try:
                self.hostmap = parse_hostmap(ctx.options.tokensense_intercept_hostmap)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e

    def running(self) -> None:
        for spec in ctx.options.mode:
            if not spec.startswith("reverse"):
                ca = os.path.join(os.path.expanduser(ctx.options.confdir), "mitmproxy-ca-cert.pem")
                log.info("TokenSense intercept proxy (%s): point HTTPS_PROXY at it; clients must trust %s",
                         spec, ca)

    def hosts(self) -> HostTable:
        """The provider host table for the current configuration (rebuilt when config.toml is reloaded)."""
        config = self.runtime.config
        if self._table is None or self._table_config is not config:
            try:
                self._table = HostTable(config.intercept_hosts)
            except ValueError as e:
                log.error("%s; intercepting only the built-in provider hosts", e)
                self._table = HostTable()
            self._table_config = config
        return self._table

    # -- connections -----------------------------------------------------------------

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """A tunnel to a host that is not a provider's is passed through as opaque TLS: never decrypted."""
        context = nextlayer.context
        if nextlayer.layer is not None or not intercepting(context.client.proxy_mode) \
                or not context.server.address or context.client.tls_established:
            return
        names: list[str | None] = [context.server.address[0]]
        data = nextlayer.data_client()
        if starts_like_tls_record(data):
            try:
                hello = parse_client_hello(data)
            except ValueError:
                hello = None
            names.append(hello.sni if hello else None)  # an incomplete hello: decide on the address alone
        if not self.hosts().decrypts(names):
            nextlayer.layer = layers.TCPLayer(context, ignore=True)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if not self.hostmap or not intercepting(data.client.proxy_mode) or not data.server.address:
            return
        target = self.hostmap.get(data.server.address[0].lower())
        if target is not None:
            data.server.address = target

    # -- requests --------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Admit stage of an intercepted call, before any body byte is read: the same gate as the gateway's."""
        if flow.response or flow.error or CALL in flow.metadata or not intercepting(flow.client_conn.proxy_mode):
            return
        req = flow.request
        adapter = self.hosts().provider(req.pretty_host)
        if adapter is None:
            flow.metadata[CALL] = None  # not a provider: leave it alone
            return
        if asks_for_websocket(req) and intercepted_protocol(adapter, req.path.partition("?")[0]) is not None:
            # A realtime session (OpenAI Realtime, Gemini Live): metered frame by frame by addons/realtime.py,
            # which takes the TokenSense key header off too.
            flow.metadata[INTERCEPTED_SOCKET] = adapter
            return
        presented = req.headers.pop(KEY_HEADER, None)  # never forwarded to the provider
        if asks_for_websocket(req):
            # Another provider WebSocket (Codex's Responses socket) would be relayed unmetered: refused.
            # 426 makes Codex use HTTP for the session, which is metered here (see README "Intercept mode").
            flow.metadata[CALL] = None
            answer_error(flow, DEFAULT_ERRORS, GatewayError(
                426, "TokenSense meters provider calls over HTTP in intercept mode; WebSocket calls to "
                f"{req.pretty_host} are refused. Use HTTP (Codex falls back to it by itself)."),
                headers={"upgrade": "websocket"})
            refuse_body(flow)
            return
        route = intercept_route(adapter, req.method, req.path)
        if route is None:
            flow.metadata[CALL] = None  # a provider path TokenSense does not meter (model lists, files, ...)
            return
        call = admitted_call(adapter, route, req.method)
        set_call(flow, call)
        call.attribution = attribution(req.headers)  # refused calls are attributed too
        if await admit(self.runtime, flow, call, presented, require_key=ctx.options.tokensense_intercept_require_key,
                       missing=f"This TokenSense proxy requires a TokenSense key: send it in the `{KEY_HEADER}` "
                       "header (your provider key stays in its usual header).", where=f" in `{KEY_HEADER}`") is not None:
            take_cost_cap(flow, call)

    async def request(self, flow: http.HTTPFlow) -> None:
        """Parse stage of an intercepted call: its model and stream; the usage chunk asked for."""
        if CALL not in flow.metadata:  # a flow that had no requestheaders hook (a client replay): admit it now
            await self.requestheaders(flow)
        call = get_call(flow)
        if flow.response or flow.error or call is None or not call.intercepted:
            return
        req = flow.request
        body = _json_body(req)
        new_body = parse_intercepted(call, body, form_model=_form_model(req, body))
        if new_body is not None:
            req.content = json.dumps(new_body, separators=(",", ":")).encode()
        if call.stream:
            req.headers["accept-encoding"] = "identity"  # streams are metered as they pass: uncompressed


def _json_body(req: http.Request) -> object:
    if "json" not in req.headers.get("content-type", "json"):
        return None
    try:
        content = req.content
        return json.loads(content) if content else None
    except (ValueError, UnicodeDecodeError):
        return None


def _form_model(req: http.Request, body: object) -> str | None:
    """The `model` field of a multipart upload (audio transcriptions)."""
    if body is not None or "multipart/form-data" not in req.headers.get("content-type", ""):
        return None
    try:
        value = req.multipart_form.get(b"model")
    except ValueError:
        return None
    return value.decode("utf-8", "replace") if value else None

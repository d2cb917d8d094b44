"""Intercept mode: provider hosts, the regular-proxy arguments, and the call context of an intercepted request."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tokensense.gateway.call import CallContext
from tokensense.gateway.stages.parse import read_request, reading_of
from tokensense.gateway.stream import stream_usage_option
from tokensense.providers import PROVIDERS, ProviderAdapter, get_provider
from tokensense.providers.routes import Route

log = logging.getLogger(__name__)

# Where an intercepted client puts its TokenSense key: its usual auth header
# carries its own provider key, which goes upstream untouched.
KEY_HEADER = "x-tokensense-key"

# Providers whose chat streams report usage only when asked (`stream_options.include_usage`).


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


class HostTable:
    """Provider by host name: the known hosts plus `[intercept_hosts]` from config.toml.

    An added entry is an exact host name or `*.domain` (any subdomain of it).
    """

    def __init__(self, extra: Mapping[str, str] | None = None) -> None:
        self.exact: dict[str, ProviderAdapter] = {}
        self.suffixes: list[tuple[str, ProviderAdapter]] = []
        for adapter in PROVIDERS.values():
            for host in adapter.hosts:
                self.exact[host] = adapter
        for host, name in (extra or {}).items():
            named = get_provider(name)
            if named is None:
                raise ValueError(f"[intercept_hosts] in config.toml maps {host!r} to {name!r}, which is not a provider "
                                 f"TokenSense knows ({', '.join(PROVIDERS)})")
            host = _normal_host(host)
            if host.startswith("*."):
                self.suffixes.append((host[1:], named))
            else:
                self.exact[host] = named

    def provider(self, host: str | None) -> ProviderAdapter | None:
        """The provider served at `host`, or None for a host TokenSense leaves alone."""
        if not host:
            return None
        host = _normal_host(host)
        found = self.exact.get(host)
        if found is not None:
            return found
        for suffix, adapter in self.suffixes:
            if host.endswith(suffix):
                return adapter
        return None

    def decrypts(self, hosts: Iterable[str | None]) -> bool:
        """Whether a connection that names any of `hosts` (address, TLS SNI) is to be decrypted."""
        return any(self.provider(h) is not None for h in hosts)


def parse_hostmap(entries: Sequence[str]) -> dict[str, tuple[str, int]]:
    """`HOST=ADDRESS:PORT` entries as {host: (address, port)}; a malformed entry is a ValueError that names it."""
    mapped: dict[str, tuple[str, int]] = {}
    for entry in entries:
        host, sep, target = entry.partition("=")
        address, colon, port = target.rpartition(":")
        if not sep or not host.strip() or not colon or not address or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"tokensense_intercept_hostmap: cannot read {entry!r}; "
                             "write HOST=ADDRESS:PORT, e.g. api.example.com=127.0.0.1:9443")
        mapped[_normal_host(host)] = (address.strip("[]"), int(port))
    return mapped


def intercept_port(args: argparse.Namespace) -> int:
    """The regular proxy's port: `--intercept-port`, else the gateway's port plus one (8081)."""
    return args.intercept_port or args.port + 1


def intercept_mode_args(args: argparse.Namespace) -> list[str]:
    """The mitmdump arguments that add the intercept proxy next to the gateway's reverse proxy.

    Only the mode is added. Which connections are decrypted is decided per
    connection by the Intercept addon (provider hosts only), not by mitmproxy's
    `allow_hosts`: that option applies to every mode, and would turn the
    gateway's own reverse-proxy connections into passthrough ones too.
    """
    port = intercept_port(args)
    if port == args.port:
        raise ValueError(f"--intercept-port {port} is the gateway's own --port; pick another one")
    return ["--mode", f"regular@{port}"]


def intercepted_call(adapter: ProviderAdapter, method: str, path: str, body: Any, *,
                     form_model: str | None = None) -> CallContext | None:
    """The call context of a request to a provider host, or None for a request TokenSense does not meter.

    Metered are the paths the provider's `intercept_route` claims: by default its
    client routes marked `intercepted` of the endpoints it serves natively (chat
    and embeddings on OpenAI-format providers, Messages on Anthropic's,
    `models/...:action` on Gemini's, ...), and whatever a provider adds (fal's
    `/fal-ai/...` apps). Model lists, files, batches and any other path pass
    through unmetered.
    """
    route = intercept_route(adapter, method, path)
    if route is None:
        return None
    call = admitted_call(adapter, route, method)
    parse_intercepted(call, body, form_model=form_model)
    return call


def admitted_call(adapter: ProviderAdapter, route: Route, method: str) -> CallContext:
    """The call context of a metered intercepted request, from its headers alone (the admit stage)."""
    call = CallContext.of_route(route, method=method)
    call.provider = adapter
    call.intercepted = True
    return call


def parse_intercepted(call: CallContext, body: Any, *, form_model: str | None = None) -> dict[str, Any] | None:
    """The parse stage of an intercepted call: its model and stream, read by the gateway's own `read_request`.

    Returns the body to send instead (the usage chunk asked for), or None to send the client's unchanged.
    The request goes to the client's own destination with the client's own key: nothing else is rewritten,
    and the provider judges the body (an output cap it would refuse is its 400 to give, not TokenSense's).
    """
    # The model as the provider's own client names it (no `provider/` prefix: the host already says which).
    reading = dataclasses.replace(reading_of(call), path_provider=None)
    request = read_request(reading, body if isinstance(body, dict) else {}, check_caps=False)
    model = request.requested or form_model
    call.model = call.requested_model = model if isinstance(model, str) and model else None
    call.stream = request.stream
    if not isinstance(body, dict) or call.provider is None:
        return None
    new_body, call.client_wants_usage = stream_usage_option(
        call.route_endpoint, call.stream, call.provider.usage_chunk_on_request, body)
    call.sent_body = new_body or body  # the police stage estimates tokens from it
    return new_body


def intercept_route(adapter: ProviderAdapter, method: str, path: str) -> Route | None:
    """The route of a path this provider's own clients call natively; None for paths TokenSense does not meter."""
    return adapter.intercept_route(method, path.partition("?")[0])

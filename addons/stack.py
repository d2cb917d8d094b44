"""The ordered list of TokenSense addons, shared by the mitmdump script and `tokensense serve`."""

from __future__ import annotations

from addons.auth import Auth
from addons.chain import TokenSenseChain
from addons.intercept import Intercept
from addons.lifecycle import Lifecycle
from addons.media import Media
from addons.metering import Metering
from addons.policy import Policy
from addons.recording import Recording
from addons.routing import Router
from addons.translation import Translation
from addons.upstream_errors import UpstreamErrors
from tokensense.gateway.runtime import Runtime


def tokensense_addons(runtime: Runtime | None = None) -> list[object]:
    """The TokenSense addons in hook order: each one's `request` runs after the ones before it."""
    runtime = runtime or Runtime()
    return [
        Lifecycle(runtime),
        Intercept(runtime),  # before Auth: intercepted calls never meet the gateway's key check
        Auth(runtime),
        Router(runtime),
        Media(runtime),
        Translation(runtime),
        Policy(runtime),
        UpstreamErrors(runtime.settings.upstream_timeout),
        Metering(runtime),
        Recording(),  # last: sees every call metered
    ]


def build_addons(runtime: Runtime | None = None) -> list[object]:
    """What the entry script hands mitmproxy: the addons above, dispatched as one (see addons/chain.py)."""
    return [TokenSenseChain(tokensense_addons(runtime))]

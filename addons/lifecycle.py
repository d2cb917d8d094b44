"""Starts and stops the gateway's services, and makes plain `mitmdump -s` a reverse proxy."""

from __future__ import annotations

import gc
import logging

from mitmproxy import ctx

from addons import mitmproxy_compat
from tokensense.gateway import redact
from tokensense.gateway.runtime import EXIT_DATABASE_UNAVAILABLE, Runtime, StartupError
from tokensense.gateway.shutdown import drain_and_close

log = logging.getLogger(__name__)

# Where requests would go if no addon rewrote them: the discard port on
# loopback, so a request that slips through fails closed with a 502.
PLACEHOLDER_UPSTREAM = "http://127.0.0.1:9"
DEFAULT_PORT = 8080


class Lifecycle:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        redact.install()
        mitmproxy_compat.install()

    def running(self) -> None:
        # `mitmdump -s addons/tokensense.py` with no --mode starts as a regular
        # proxy on *:8080; the options are only final here, so switch to the
        # gateway's reverse mode on 127.0.0.1:8080 now. Lazy connections keep
        # mitmproxy from connecting to the placeholder when a client connects.
        if ctx.options.mode == ["regular"]:
            updates: dict = {
                "mode": [f"reverse:{PLACEHOLDER_UPSTREAM}@{ctx.options.listen_port or DEFAULT_PORT}"],
                "connection_strategy": "lazy",
            }
            if not ctx.options.listen_host:
                updates["listen_host"] = "127.0.0.1"
            ctx.options.update(**updates)
        elif any(m.startswith("reverse:") for m in ctx.options.mode):
            ctx.options.update(connection_strategy="lazy")
        try:
            self.runtime.start()
        except StartupError as e:
            log.error("%s", e)  # one line, no traceback; the exit status says "try again later"
            raise SystemExit(EXIT_DATABASE_UNAVAILABLE) from None
        # The price catalog, mitmproxy and the libraries leave ~150,000 objects that
        # live as long as the process. Each full collection of the garbage collector
        # walked all of them, a pause of 50-100 ms every few hundred requests; frozen,
        # they are never scanned again.
        gc.collect()
        gc.freeze()
        log.info("TokenSense gateway ready (database: %s)", _safe_url(self.runtime.settings.effective_database_url))

    async def done(self) -> None:
        # mitmproxy calls `done` on SIGINT/SIGTERM too: stop accepting, let the calls in
        # flight finish, then the recorder drains its queue (tokensense/gateway/shutdown.py).
        await drain_and_close(self.runtime)


def _safe_url(url: str) -> str:
    """A database URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"

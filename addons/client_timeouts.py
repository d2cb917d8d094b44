"""Closes gateway client connections that sit idle or half-sent past TOKENSENSE_CLIENT_IDLE_TIMEOUT (slowloris)."""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import connection, ctx, http
from mitmproxy.proxy import mode_specs

from tokensense.gateway.client_timeouts import ClientClock

log = logging.getLogger(__name__)


class ClientTimeouts:
    def __init__(self, timeout: float) -> None:
        self.clock = ClientClock(timeout)
        self._sweeper: asyncio.Task | None = None

    def running(self) -> None:
        if self.clock.timeout > 0:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def client_connected(self, client: connection.Client) -> None:
        # The gateway's own (reverse-proxy) connections only: the intercept proxy's tunnels to
        # other hosts carry no HTTP flows this clock could see, and would look idle.
        if isinstance(client.proxy_mode, mode_specs.ReverseMode):
            self.clock.connected(client.id, time.monotonic())

    def client_disconnected(self, client: connection.Client) -> None:
        self.clock.disconnected(client.id)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.clock.head_received(flow.client_conn.id, flow.id, time.monotonic())

    def request(self, flow: http.HTTPFlow) -> None:
        self.clock.body_received(flow.client_conn.id, flow.id)

    def response(self, flow: http.HTTPFlow) -> None:
        self.clock.finished(flow.client_conn.id, flow.id, time.monotonic())

    def error(self, flow: http.HTTPFlow) -> None:
        self.clock.finished(flow.client_conn.id, flow.id, time.monotonic())

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        # A WebSocket (the Responses API's, Codex) may rest between turns: it is a call until it ends.
        self.clock.head_received(flow.client_conn.id, flow.id, time.monotonic())
        self.clock.body_received(flow.client_conn.id, flow.id)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.clock.finished(flow.client_conn.id, flow.id, time.monotonic())

    async def _sweep(self) -> None:
        interval = min(max(self.clock.timeout / 4, 0.25), 5.0)
        while True:
            await asyncio.sleep(interval)
            expired = self.clock.expired(time.monotonic())
            if not expired:
                continue
            proxyserver = ctx.master.addons.get("proxyserver")
            for client_id, _why in expired:
                handler = proxyserver.connections.get(client_id) if proxyserver else None
                if handler is not None:
                    # mitmproxy's own way to end a connection that timed out (cancels its task).
                    await handler.on_timeout()
            idle = sum(1 for _, why in expired if why == "idle")
            log.info("closed %d idle and %d half-sent client connections (TOKENSENSE_CLIENT_IDLE_TIMEOUT=%gs; "
                     "%d idle and %d half-sent so far)", idle, len(expired) - idle, self.clock.timeout,
                     self.clock.closed_idle, self.clock.closed_half_sent)

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()


class RequestArrived:
    """ClientTimeouts' `request` hook, run first: a body is whole once the first `request` hook runs.

    The gates after it may take long (a plan of fallbacks run at once when every key of
    the provider rests, a token fetch); the connection is not half-sent meanwhile. The
    answer side stays with ClientTimeouts, last, after the retries of the answer stage.
    """

    def __init__(self, timeouts: ClientTimeouts) -> None:
        self.clock = timeouts.clock

    def request(self, flow: http.HTTPFlow) -> None:
        self.clock.body_received(flow.client_conn.id, flow.id)

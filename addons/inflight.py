"""Counts the calls in flight, so a shutdown waits for them (see tokensense/gateway/shutdown.py)."""

from __future__ import annotations

from mitmproxy import http

from tokensense.gateway.runtime import Runtime


class InFlightCalls:
    """Last in hook order: a call ends here, after the metering addon has recorded it."""

    def __init__(self, runtime: Runtime) -> None:
        self.inflight = runtime.inflight

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.inflight.started(flow.id)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.inflight.draining and flow.response is not None:
            # Shutting down: a keep-alive client opens its next connection elsewhere.
            flow.response.headers["connection"] = "close"

    def response(self, flow: http.HTTPFlow) -> None:
        self.inflight.finished(flow.id)

    def error(self, flow: http.HTTPFlow) -> None:
        self.inflight.finished(flow.id)

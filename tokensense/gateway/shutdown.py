"""Graceful shutdown: count the calls in flight, and on SIGTERM/SIGINT let them finish before the flush.

mitmproxy 12 handles SIGTERM and SIGINT (`mitmproxy/tools/main.py`) by calling
`master.shutdown()`, which sets `should_exit`; `Master.run` then triggers the
`done` hook of every addon and returns, and `asyncio.run` cancels the tasks
left, connections in the middle of a call included. The proxy server addon has
no `done` hook of its own: its listening sockets stay open until the loop ends.
So the `done` hook of TokenSense (`Lifecycle.done`) runs `drain_and_close`:

1. stop the listening servers (`Proxyserver.servers.update([])`): no new
   connection is accepted; the connections already open carry on, and their
   answers say `Connection: close` so keep-alive clients go elsewhere;
2. wait until the calls in flight are answered and recorded (streams
   included), at most `TOKENSENSE_SHUTDOWN_GRACE` seconds;
3. close the recorder: it writes what is queued to the database, or to the
   spool if the database does not answer, and logs the counts.

A call is in flight from its request headers to its end (`response` or
`error` hook, after the metering addon has recorded it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokensense.gateway.runtime import Runtime

log = logging.getLogger(__name__)

MIN_FLUSH_SECONDS = 2.0  # the recorder's share of the grace, even when the calls used all of it


class InFlight:
    """The calls between their request headers and their record, by flow id."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._empty: asyncio.Event | None = None
        self.draining = False
        # Run with the grace (seconds) when a drain starts: holders of long-lived connections (realtime
        # sessions) close them in time for their records to be flushed.
        self.on_drain: list[Callable[[float], None]] = []

    def __len__(self) -> int:
        return len(self._ids)

    def started(self, flow_id: str) -> None:
        self._ids.add(flow_id)

    def finished(self, flow_id: str) -> None:
        """The call ended (idempotent: a flow may end through more than one hook)."""
        self._ids.discard(flow_id)
        if not self._ids and self._empty is not None:
            self._empty.set()

    async def wait_empty(self, within: float) -> bool:
        """Wait until no call is in flight; False if `within` seconds passed first."""
        if not self._ids:
            return True
        self._empty = asyncio.Event()
        try:
            await asyncio.wait_for(self._empty.wait(), timeout=max(within, 0))
        except TimeoutError:
            return False
        return True


async def stop_listening() -> None:
    """Close mitmproxy's listening sockets (open connections keep running)."""
    from mitmproxy import ctx

    master = getattr(ctx, "master", None)
    proxyserver = master.addons.get("proxyserver") if master is not None else None
    if proxyserver is None or not len(proxyserver.servers):
        return
    try:
        await proxyserver.servers.update([])
    except Exception as e:  # the drain goes on: the calls in flight still deserve their records
        log.warning("could not stop listening: %s", e)


async def drain_and_close(runtime: Runtime) -> None:
    """Stop accepting, let the calls in flight finish within the grace, then close the runtime."""
    grace = runtime.settings.shutdown_grace
    deadline = time.monotonic() + grace
    inflight = runtime.inflight
    inflight.draining = True
    for hook in inflight.on_drain:
        try:
            hook(grace)
        except Exception:
            log.exception("a drain hook failed")
    await stop_listening()
    waiting = len(inflight)
    if waiting:
        log.info("shutting down: waiting up to %.0fs for %d calls in flight", grace, waiting)
    finished = await inflight.wait_empty(deadline - time.monotonic())
    if not finished:
        log.warning("shutdown grace (%.0fs, TOKENSENSE_SHUTDOWN_GRACE) over with %d calls still in flight: "
                    "they are cut off", grace, len(inflight))
    elif waiting:
        log.info("shutting down: the %d calls in flight finished", waiting)
    flush_time = max(deadline - time.monotonic(), MIN_FLUSH_SECONDS)
    await runtime.aclose(grace=flush_time)

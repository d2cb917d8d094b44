"""Which client connections sit idle or half-sent for too long (slowloris), so they can be closed.

mitmproxy's own `tcp_timeout` closes a connection after a period without any
traffic, the wait for a slow upstream answer included; it stays at its default
(600 s) so a long, silent model answer is not cut. This clock is finer: a
connection is timed only while the gateway waits for the client, that is
- idle: no request in progress (a keep-alive connection, or a request head
  that is still arriving: its bytes are not a request until the head is whole);
- half-sent: the head arrived but the body is not complete yet.
While a request is with the provider, the upstream timeout governs instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _ClientState:
    since: float  # when the connection last became idle (connected, or its last answer ended)
    active: set[str] = field(default_factory=set)  # flows in progress (HTTP/2 may have several)
    reading: dict[str, float] = field(default_factory=dict)  # flow id -> when its head arrived


class ClientClock:
    """The state of every client connection; `expired(now)` names those to close."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._clients: dict[str, _ClientState] = {}
        self.closed_idle = 0
        self.closed_half_sent = 0

    def __len__(self) -> int:
        return len(self._clients)

    def connected(self, client_id: str, now: float) -> None:
        self._clients[client_id] = _ClientState(since=now)

    def disconnected(self, client_id: str) -> None:
        self._clients.pop(client_id, None)

    def head_received(self, client_id: str, flow_id: str, now: float) -> None:
        state = self._clients.get(client_id)
        if state is not None:
            state.active.add(flow_id)
            state.reading[flow_id] = now

    def body_received(self, client_id: str, flow_id: str) -> None:
        state = self._clients.get(client_id)
        if state is not None:
            state.reading.pop(flow_id, None)

    def finished(self, client_id: str, flow_id: str, now: float) -> None:
        state = self._clients.get(client_id)
        if state is not None:
            state.reading.pop(flow_id, None)
            state.active.discard(flow_id)
            if not state.active:
                state.since = now

    def expired(self, now: float) -> list[tuple[str, str]]:
        """(client id, "idle" or "half-sent") of each connection past the timeout; counted as closed."""
        out: list[tuple[str, str]] = []
        limit = now - self.timeout
        for client_id, state in self._clients.items():
            if state.reading and min(state.reading.values()) <= limit:
                out.append((client_id, "half-sent"))
                self.closed_half_sent += 1
            elif not state.active and state.since <= limit:
                out.append((client_id, "idle"))
                self.closed_idle += 1
        for client_id, _ in out:
            self._clients.pop(client_id, None)
        return out

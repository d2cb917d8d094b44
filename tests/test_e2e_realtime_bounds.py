"""Realtime sessions are bounded: client frames by TOKENSENSE_MAX_BODY_MB, silence by TOKENSENSE_REALTIME_IDLE_TIMEOUT,
a shutdown by its grace (a close frame, the last records written); open sessions are counted in /health and metrics."""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets.sync.client
from conftest import FakeProvider, Gateway, free_port, start_gateway, stop
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    metrics_port = free_port()
    gateway = start_gateway(tmp_path_factory.mktemp("realtime-bounds"), fake_provider,
                            serve_args=["--metrics-port", str(metrics_port)],
                            extra_env={"TOKENSENSE_MAX_BODY_MB": "0.05", "TOKENSENSE_REALTIME_IDLE_TIMEOUT": "1.5",
                                       "TOKENSENSE_SHUTDOWN_GRACE": "6"})
    gateway.extra["metrics_url"] = f"http://127.0.0.1:{metrics_port}/metrics"
    yield gateway
    stop(gateway.process)


def _connect(gw: Gateway, exec_id: str, **headers: str) -> ClientConnection:
    url = gw.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    socket = websockets.sync.client.connect(url, open_timeout=10, additional_headers={
        "authorization": f"Bearer {gw.key}", "x-execution-id": exec_id, **headers})
    assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
    return socket


def _closed(socket: ClientConnection, within: float) -> ConnectionClosed:
    deadline = time.monotonic() + within
    with pytest.raises(ConnectionClosed) as closed:
        while time.monotonic() < deadline:
            socket.recv(timeout=max(deadline - time.monotonic(), 0.01))
    return closed.value


def test_a_frame_over_the_limit_closes_the_session_with_1009(gw: Gateway, exec_id: str) -> None:
    socket = _connect(gw, exec_id)
    audio = base64.b64encode(bytes(100_000)).decode()  # 133 KB of base64: over 0.05 MB
    socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
    closed = _closed(socket, 5)
    assert closed.rcvd is not None and closed.rcvd.code == 1009 and "TOKENSENSE_MAX_BODY_MB" in closed.rcvd.reason


def test_a_fragmented_message_is_cut_off_while_it_arrives(gw: Gateway, exec_id: str) -> None:
    """A message sent in fragments is not buffered whole before its size is checked: the relay closes the socket
    (1009) once what arrived outgrows the limit, long before 8 MB have been sent."""
    socket = _connect(gw, exec_id)
    piece = "A" * 32_768

    def fragments() -> Iterator[str]:
        yield '{"type": "input_audio_buffer.append", "audio": "'
        for _ in range(256):
            yield piece
            time.sleep(0.002)
        yield '"}'

    with pytest.raises(ConnectionClosed) as closed:
        socket.send(fragments())
        socket.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert closed.value.rcvd.reason.startswith("A frame over the limit")


def test_an_idle_session_is_closed(gw: Gateway, exec_id: str) -> None:
    socket = _connect(gw, exec_id)
    started = time.monotonic()
    closed = _closed(socket, 8)
    assert closed.rcvd is not None and closed.rcvd.code == 1001 and "IDLE_TIMEOUT" in closed.rcvd.reason
    assert 1.4 < time.monotonic() - started < 6


def test_open_sessions_are_counted_in_health_and_metrics(gw: Gateway, exec_id: str) -> None:
    def counts() -> tuple[int, str]:
        health = httpx.get(f"{gw.url}/health", timeout=5).json()["realtime_sessions"]
        metrics = httpx.get(gw.extra["metrics_url"], timeout=5).text
        line = next(x for x in metrics.splitlines() if x.startswith("tokensense_realtime_sessions "))
        return health, line

    with _connect(gw, exec_id), _connect(gw, exec_id):
        assert counts() == (2, "tokensense_realtime_sessions 2.0")
    deadline = time.monotonic() + 5
    while counts()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counts() == (0, "tokensense_realtime_sessions 0.0")


def test_sigterm_lets_the_response_finish_then_closes_the_session(gw: Gateway, exec_id: str) -> None:
    """Last in the module: it stops the gateway."""
    socket = _connect(gw, exec_id, **{"x-fake-chunk-delay-ms": "150"})
    socket.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    assert json.loads(socket.recv(timeout=10))["type"] == "response.created"
    gw.process.send_signal(signal.SIGTERM)
    kinds = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            kinds.append(json.loads(socket.recv(timeout=10))["type"])
    assert kinds[-1] == "response.done"  # the response in progress finished within the grace
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert "shutting down" in closed.value.rcvd.reason
    gw.process.wait(timeout=20)
    (row,) = gw.records(execution_id=exec_id)
    assert row["status"] == 200 and row["output_tokens"] > 0 and row["cost_usd"] > 0

"""Intercept mode's admit gate end to end: a client without a TokenSense key is refused on its request headers.

Issue 22: with `tokensense_intercept_require_key`, the key was checked only once the
whole body had been buffered, so any client of the proxy could make the gateway hold a
300 MB body. The gate now runs on the request headers, as the gateway's does
(compare scripts/unauth_body_rss.py for the gateway's own port).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import stop
from test_e2e_intercept import InterceptGateway, start_intercept_gateway, upstreams  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e
MB = 1 << 20


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, upstreams) -> Iterator[InterceptGateway]:  # noqa: F811
    fake, other, cert = upstreams
    gw = start_intercept_gateway(tmp_path_factory.mktemp("admit"), fake, other, cert, require_key=True)
    yield gw
    stop(gw.gateway.process)


def _head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def test_a_300_mb_body_without_a_key_is_refused_before_it_is_buffered(guarded: InterceptGateway) -> None:
    pid = guarded.gateway.process.pid
    host, port = guarded.proxy_url.removeprefix("http://").rsplit(":", 1)
    before = _rss_mb(pid)
    peak = [before]
    sending = threading.Event()
    sending.set()

    def watch() -> None:
        while sending.is_set():
            peak.append(_rss_mb(pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with socket.create_connection((host, int(port)), timeout=120) as raw:
            raw.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nhost: api.openai.com:443\r\n\r\n")
            assert _head(raw).split(b" ", 2)[1] == b"200"
            context = ssl.create_default_context(cafile=str(guarded.ca_file))
            with context.wrap_socket(raw, server_hostname="api.openai.com") as tls:
                tls.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: api.openai.com\r\n"
                            b"content-type: application/json\r\nauthorization: Bearer sk-client-own\r\n"
                            b"x-execution-id: exec-admit-300mb\r\ncontent-length: %d\r\n\r\n" % (300 * MB))
                chunk = b" " * MB
                for _ in range(300):  # megabyte by megabyte, as a slow upload arrives
                    tls.sendall(chunk)
                head = _head(tls)
    finally:
        sending.clear()
        watcher.join()
    assert head.startswith(b"HTTP/1.1 401"), head[:200]
    # Read and dropped as it arrived: before the fix the whole body was buffered (300 MB and more of RSS).
    assert max(peak) - before < 100, f"RSS {before:.0f} MB -> peak {max(peak):.0f} MB"
    record = guarded.gateway.wait_records(1, execution_id="exec-admit-300mb")
    assert [(r["status"], r["key_id"]) for r in record] == [(401, None)]
    assert not [r for r in _fake_requests(guarded) if r["headers"].get("x-execution-id") == "exec-admit-300mb"]


def _fake_requests(guarded: InterceptGateway) -> list[dict]:
    return httpx.get(f"{guarded.fake.url}/_fake/requests", verify=False, timeout=10).json()

"""Issue 12 end to end: shutdown drain, poison isolation, start-up without a database, slow clients, a PostgreSQL outage."""

from __future__ import annotations

import signal
import socket
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import BIN, FakeProvider, Gateway, clean_env, free_port, start_gateway, stop
from own_servers import OwnPostgres, wait_until

pytestmark = pytest.mark.e2e

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def post(gw: Gateway, headers: dict, body: dict | None = None, *, stream: bool = False) -> tuple[int, str]:
    """One call; (status, full answer text) — a stream is read to its end."""
    payload = {**(body or BODY), **({"stream": True} if stream else {})}
    with httpx.Client(timeout=60) as client, client.stream(
            "POST", f"{gw.url}/v1/chat/completions", json=payload,
            headers={"authorization": f"Bearer {gw.key}", **headers}) as r:
        return r.status_code, r.read().decode()


def test_sigterm_lets_calls_in_flight_finish_and_records_them(tmp_path: Path, fake_provider: FakeProvider) -> None:
    """Issue 12: SIGTERM under load lost records: the recorder closed while calls were still being answered."""
    gw = start_gateway(tmp_path, fake_provider, extra_env={"TOKENSENSE_FLUSH_INTERVAL": "30"})
    workflow = f"drain-{uuid.uuid4().hex[:6]}"
    fake_provider.clear()
    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            slow = [pool.submit(post, gw, {"x-workflow-tag": workflow, "x-fake-delay": "1.5"}) for _ in range(8)]
            streams = [pool.submit(post, gw, {"x-workflow-tag": workflow, "x-fake-chunks": "20",
                                              "x-fake-chunk-delay-ms": "100"}, stream=True) for _ in range(4)]
            assert wait_until(lambda: len(fake_provider.requests()) >= 12, timeout=30)
            gw.process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in [*slow, *streams]]
        assert gw.process.wait(timeout=30) == 0
    finally:
        stop(gw.process)
    assert all(status == 200 for status, _ in answers), answers
    assert all(text.rstrip().endswith("[DONE]") for _, text in answers[8:]), "streams ran to their end"
    assert len(gw.records(workflow=workflow)) == 12
    assert "waiting up to 10s for 12 calls in flight" in gw.log()


def test_poison_attribution_does_not_take_other_records_down(gateway: Gateway, exec_id: str) -> None:
    """Issue 12: `x-workflow-tag: wf\\xff` made the insert fail and the recorder dropped the whole batch."""
    with ThreadPoolExecutor(max_workers=21) as pool:
        good = [pool.submit(post, gateway, {"x-execution-id": exec_id, "x-workflow-tag": "good"}) for _ in range(20)]
        bad = pool.submit(post, gateway, {"x-execution-id": exec_id, "x-workflow-tag": b"wf\xff",
                                          "x-step": b"\xed\xb3\xbf"})
        statuses = [f.result()[0] for f in [*good, bad]]
    assert statuses == [200] * 21
    rows = gateway.wait_records(count=21, execution_id=exec_id)
    assert len(rows) == 21
    assert sorted({r["workflow"] for r in rows}) == ["good", "wf\ufffd"]


@pytest.mark.parametrize("url", ["sqlite:////proc/tokensense-test/usage.db", "postgresql://postgres@127.0.0.1:{port}/x"])
def test_start_without_a_database_exits_with_one_line(tmp_path: Path, url: str) -> None:
    """Issue 12: PostgreSQL down or SQLite unwritable at start ended in a Python traceback."""
    env = clean_env()
    env["TOKENSENSE_HOME"] = str(tmp_path / "home")
    env["TOKENSENSE_DATABASE_URL"] = url.format(port=free_port())
    result = subprocess.run([str(BIN / "tokensense"), "serve", "--port", str(free_port())], env=env,
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 75, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "database is unavailable" in line]
    assert len(lines) == 1, output


def test_idle_and_half_sent_connections_are_closed(tmp_path: Path, fake_provider: FakeProvider) -> None:
    """Issue 12: slowloris connections and half-sent request heads stayed open indefinitely."""
    gw = start_gateway(tmp_path, fake_provider, extra_env={"TOKENSENSE_CLIENT_IDLE_TIMEOUT": "1"})
    port = int(gw.url.rsplit(":", 1)[1])
    sockets: list[socket.socket] = []
    try:
        for kind in ["idle"] * 3 + ["head"] * 3 + ["body"] * 2:
            s = socket.create_connection(("127.0.0.1", port))
            if kind == "head":
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            elif kind == "body":
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                          b"authorization: Bearer " + gw.key.encode() + b"\r\ncontent-length: 100\r\n\r\n{\"mo")
            s.settimeout(30)  # a guard: the server closes them long before
            sockets.append(s)
        for s in sockets:
            while True:
                data = s.recv(4096)  # a 408-style answer or nothing, then the close
                if not data:
                    break
        # A call whose provider is slower than the idle timeout is not cut: the client is not idle.
        status, _ = post(gw, {"x-fake-delay": "2.5"})
        assert status == 200
        assert wait_until(lambda: "half-sent client connections" in gw.log(), timeout=10)
    finally:
        for s in sockets:
            s.close()
        stop(gw.process)


def _pg_usage(url: str, workflow: str) -> tuple[int, int]:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SELECT count(*), count(DISTINCT (request_id, attempt)) FROM usage WHERE workflow = %s",
                               (workflow,)).fetchone()
            return int(row[0]), int(row[1])
    except psycopg.OperationalError:
        return -1, -1


def test_postgres_outage_and_shutdown_during_it_lose_nothing(tmp_path: Path, fake_provider: FakeProvider) -> None:
    """Issue 12: PostgreSQL down dropped a batch after ~89 s of retries; SIGTERM during the outage lost the queue."""
    try:
        pg = OwnPostgres()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot run a PostgreSQL server of this test's own: {e}")
    workflow = f"outage-{uuid.uuid4().hex[:6]}"
    headers = {"x-workflow-tag": workflow}
    gw = start_gateway(tmp_path, fake_provider, extra_env={"TOKENSENSE_DATABASE_URL": pg.url})
    try:
        assert all(post(gw, headers)[0] == 200 for _ in range(5))
        assert wait_until(lambda: _pg_usage(pg.url, workflow)[0] == 5)

        pg.stop()
        assert all(post(gw, headers)[0] == 200 for _ in range(20)), "calls are served with the keys in memory"
        assert wait_until(lambda: httpx.get(f"{gw.url}/health", timeout=10).json().get("spooled", 0) == 20)
        health = httpx.get(f"{gw.url}/health", timeout=10)
        assert health.status_code == 200
        assert health.json()["status"] == "degraded" and health.json()["records"] == "spooling"

        pg.start()
        assert wait_until(lambda: _pg_usage(pg.url, workflow) == (25, 25), timeout=60), _pg_usage(pg.url, workflow)
        assert wait_until(lambda: httpx.get(f"{gw.url}/health", timeout=10).json()["status"] == "ok")

        # Down again, and the gateway is stopped during the outage: the queue goes to the spool...
        pg.stop()
        assert all(post(gw, headers)[0] == 200 for _ in range(10))
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(timeout=30) == 0
        assert "10 spooled for the next start" in gw.log()
        # ...and the next start writes it, once.
        pg.start()
        (tmp_path / "second").mkdir()
        gw2 = start_gateway(tmp_path / "second", fake_provider, key_name="e2e-2", extra_env={
            "TOKENSENSE_DATABASE_URL": pg.url, "TOKENSENSE_HOME": str(gw.home)})
        try:
            assert wait_until(lambda: _pg_usage(pg.url, workflow) == (35, 35), timeout=60), _pg_usage(pg.url, workflow)
        finally:
            stop(gw2.process)
        assert not list((gw.home / "spool").glob("*.jsonl"))
    finally:
        stop(gw.process)
        pg.close()

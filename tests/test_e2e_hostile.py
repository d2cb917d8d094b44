"""Hostile input against the real gateway process: no TokenSense 5xx, no HTML, no traceback, no key in the log,
and a spent key reaches no provider whatever its body (issue 11)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import select
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import Gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

ENDPOINTS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("POST", "/v1beta/models/gemini-2.5-flash:generateContent"),
    ("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
    ("POST", "/v1/models/gemini-2.5-flash:countTokens"),
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/audio/speech"),
    ("POST", "/v1/audio/transcriptions"),
    ("GET", "/v1/models"),
    ("GET", "/health"),
    ("HEAD", "/"),
    ("POST", "/v1/nowhere"),
]
# Free calls (token counts): a spent key may still make them.
FREE_PATHS = frozenset({"/v1/messages/count_tokens", "/v1/models/gemini-2.5-flash:countTokens"})
MODELS = ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash", "grok-3-mini", "mistral-small-latest",
          "text-embedding-3-small", "dall-e-3", "tts-1", "whisper-1", "fal-ai/flux/dev", "openai/gpt-4o-mini",
          "gemini-2.0-flash-0/../../files", "gemini-2.0-flash-0?alt=json&x=", "../..", "", "a\u0000b", "\ud800"]


@pytest.fixture(scope="module")
def spent_gateway(gateway: Gateway) -> Gateway:
    """The session's gateway, seen through a key with a budget of $0 (spent); `extra["plain"]` is a plain key.

    Keys created while a gateway runs are found on their first use, limits included.
    """
    tag = uuid.uuid4().hex[:8]
    spent = json.loads(gateway.cli("keys", "create", f"spent-{tag}", "--budget-usd", "0", "--json").stdout)["key"]
    plain = json.loads(gateway.cli("keys", "create", f"plain-{tag}", "--json").stdout)["key"]
    gateway.fake.clear()  # a short request log: the generated tests read it once per example
    return dataclasses.replace(gateway, key=spent, extra={**gateway.extra, "plain": plain})


def fake_calls(gw: Gateway, marker: str) -> list[dict]:
    return [r for r in gw.fake.requests() if marker in json.dumps(r)]


def assert_clean_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    text = response.text
    assert "<html" not in text.lower() and "Traceback" not in text
    if response.request.method != "HEAD" and text:
        json.loads(text)  # every answer TokenSense makes is JSON


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS) | json_values},
    optional={"messages": json_values | st.just([{"role": "user", "content": "hi"}]),
              "max_tokens": json_values, "stream": json_values, "tools": json_values,
              "response_format": json_values, "input": json_values, "contents": json_values,
              "prompt": json_values, "stream_options": json_values},
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(endpoint=st.sampled_from(ENDPOINTS), body=bodies, raw=st.booleans())
def test_generated_bodies_from_a_spent_key_reach_no_provider(spent_gateway: Gateway, endpoint: tuple[str, str],
                                                             body: dict, raw: bool) -> None:
    method, path = endpoint
    marker = f"hostile-{os.urandom(6).hex()}"
    content = json.dumps({**body, "marker": marker}).encode() if not raw else \
        json.dumps(body).encode()[:-1] + b',"marker":"' + marker.encode() + b'"' + b"}"
    response = httpx.request(method, spent_gateway.url + path, content=content, timeout=30,
                             headers={"authorization": f"Bearer {spent_gateway.key}",
                                      "content-type": "application/json"})
    assert_clean_answer(response)
    if path in FREE_PATHS:
        return  # counting calls cost nothing: a spent budget does not refuse them (README "Coding agents ...")
    assert response.status_code != 200 or path in ("/health", "/v1/models", "/")
    assert fake_calls(spent_gateway, marker) == []


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(endpoint=st.sampled_from(ENDPOINTS), body=bodies)
def test_generated_bodies_from_a_valid_key_get_no_tokensense_5xx(spent_gateway: Gateway,
                                                                   endpoint: tuple[str, str], body: dict) -> None:
    method, path = endpoint
    response = httpx.request(method, spent_gateway.url + path, content=json.dumps(body).encode(), timeout=30,
                             headers={"authorization": f"Bearer {spent_gateway.extra['plain']}",
                                      "content-type": "application/json"})
    assert_clean_answer(response)


HOSTILE = [
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi","x":' + b"[" * 900 + b"]" * 900 + b"}]}",
    b'{"model":"gpt-4o-mini","max_tokens":1' + b"0" * 400 + b',"messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"gpt-4o-mini","seed":' + b"7" * 5000 + b',"messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"x"}],"tools":[{"function":5}]}',
    b'{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"x"}],'
    b'"response_format":{"type":"json_schema","json_schema":5}}',
    b'{"model":"gemini-2.0-flash-0/../../files","messages":[{"role":"user","content":"x"}]}',
]


@pytest.mark.parametrize("body", HOSTILE, ids=["deep", "max_tokens-400-zeros", "int-5000", "tools-5",
                                               "json_schema-5", "model-traversal"])
def test_known_bypasses_are_refused_before_the_provider(spent_gateway: Gateway, body: bytes) -> None:
    for key in (spent_gateway.key, spent_gateway.extra["plain"]):
        spent_gateway.fake.clear()
        response = httpx.post(spent_gateway.url + "/v1/chat/completions", content=body, timeout=30,
                              headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
        assert 400 <= response.status_code < 500, response.text[:300]
        assert_clean_answer(response)
        assert spent_gateway.fake.requests() == []


@pytest.mark.parametrize("header", [b"authorization: Bearer tsk_\xff\xfe", b"x-api-key: tsk_\xc3\x28"])
def test_non_utf8_keys_are_401(spent_gateway: Gateway, header: bytes) -> None:
    host, port = spent_gateway.url.removeprefix("http://").split(":")
    body = b'{"model":"gpt-4o-mini","messages":[]}'
    raw = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" + header +
           b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
    answer = _raw_exchange(host, int(port), raw)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"<html" not in answer.lower()


def _raw_exchange(host: str, port: int, raw: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(raw)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_no_key_reaches_the_log_even_on_malformed_requests(spent_gateway: Gateway) -> None:
    host, port = spent_gateway.url.removeprefix("http://").split(":")
    secret = "tsk_" + os.urandom(12).hex()
    answers = [
        _raw_exchange(host, int(port), f"GET /nowhere?key={secret} HTTP/1.1 junk junk\r\nhost: x\r\n\r\n".encode()),
        _raw_exchange(host, int(port), f"GET /health?key={secret} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()),
        _raw_exchange(host, int(port), f"GET /v1/other?key={secret} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()),
        _raw_exchange(host, int(port), f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-api-key: {secret}\r\n"
                                       "content-length: 3\r\nconnection: close\r\n\r\n{x}".encode()),
    ]
    for answer in answers:
        assert b"<html" not in answer.lower(), answer[:300]
    time.sleep(0.5)
    assert secret not in spent_gateway.log()
    assert secret[4:] not in spent_gateway.log()


def test_head_has_no_body_and_the_connection_stays_usable(spent_gateway: Gateway) -> None:
    """Claude Code sends HEAD / at start; a body after a HEAD answer broke the next answer on the connection."""
    host, port = spent_gateway.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    for path in ("/", "/health"):
        conn.request("HEAD", path)
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b""
    conn.request("GET", "/health")
    after = conn.getresponse()
    assert after.status == 200 and json.loads(after.read())["status"] == "ok"
    conn.close()


def test_bodies_without_a_key_are_not_buffered(tmp_path: Path, spent_gateway: Gateway) -> None:
    """Three parallel 100 MB chunked uploads without a key leave the gateway's memory where it was."""
    rss_before = _rss_mb(spent_gateway.process.pid)
    host, port = spent_gateway.url.removeprefix("http://").split(":")
    chunk = b"x" * (1 << 20)
    statuses: list[bytes] = []

    def upload() -> None:
        with socket.create_connection((host, int(port)), timeout=60) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      b"transfer-encoding: chunked\r\n\r\n")
            for _ in range(100):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            statuses.append(s.recv(64))

    threads = [threading.Thread(target=upload) for _ in range(3)]
    peak = rss_before
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, _rss_mb(spent_gateway.process.pid))
        time.sleep(0.05)
    assert all(s.startswith(b"HTTP/1.1 401") for s in statuses), statuses
    assert peak - rss_before < 40, f"RSS grew from {rss_before:.0f} MB to {peak:.0f} MB"


def test_a_chunked_body_past_the_limit_is_413(spent_gateway: Gateway) -> None:
    """A chunked body is counted while it arrives; past TOKENSENSE_MAX_BODY_MB the call ends 413 (and is recorded)."""
    host, port = spent_gateway.url.removeprefix("http://").split(":")
    chunk = b"x" * (1 << 20)
    execution = f"exec-{os.urandom(6).hex()}"
    answer = b""
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"authorization: Bearer " + spent_gateway.extra["plain"].encode() +
                  b"\r\nx-execution-id: " + execution.encode() + b"\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            answer = _send_until_answered(s, [b"%x\r\n" % len(chunk) + chunk + b"\r\n"] * 40 + [b"0\r\n\r\n"])
        except OSError:
            # The gateway answered and closed while the body was still coming: the kernel may reset the
            # connection and drop the answer before it is read. The record below says what was answered.
            pass
    if answer:
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"application/json" in answer and b"<html" not in answer.lower()
    records = spent_gateway.wait_records(1, execution_id=execution)
    assert [r["status"] for r in records] == [413]


def _send_until_answered(s: socket.socket, pieces: list[bytes], timeout: float = 30) -> bytes:
    """Send `pieces` until the server answers (it may answer and stop reading mid-body), then read the answer.

    A blocking send would wait for the socket's timeout once the server stops reading.
    """
    deadline = time.monotonic() + timeout
    s.setblocking(False)
    for piece in pieces:
        view = memoryview(piece)
        while view:
            if time.monotonic() > deadline:
                raise TimeoutError("the server neither read the body nor answered")
            readable, writable, _ = select.select([s], [s], [], 1)
            if readable:
                s.settimeout(timeout)
                return s.recv(4096)
            if writable:
                try:
                    view = view[s.send(view):]
                except BlockingIOError:
                    pass
    s.settimeout(timeout)
    return s.recv(4096)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

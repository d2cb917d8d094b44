"""Streamed answers keep their HTTP/1.1 chunked framing when TokenSense holds back or removes a piece."""

from __future__ import annotations

import socket

import pytest
from conftest import Gateway

pytestmark = pytest.mark.e2e


def raw_stream(gw: Gateway, body: str, **headers: str) -> bytes:
    """The raw bytes of one streamed answer, read until the server closes or goes quiet."""
    port = int(gw.url.rsplit(":", 1)[1])
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {gw.key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
               f"{body}").encode()
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        s.settimeout(3)
        try:
            while chunk := s.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    return data


def test_removed_usage_chunk_does_not_end_the_chunked_body(gateway: Gateway) -> None:
    """Bug: when the usage chunk TokenSense asked for arrived on its own and was removed, the
    stream callable returned b"", which mitmproxy wrote as `0\\r\\n\\r\\n`, the end of a chunked
    body; `data: [DONE]` came after it, and a client stopped reading before it."""
    body = '{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    data = raw_stream(gateway, body, **{"x-fake-chunks": "3", "x-fake-chunk-delay-ms": "30"})
    head, _, chunked = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    assert b"transfer-encoding: chunked" in head.lower()
    assert chunked.count(b"\r\n0\r\n\r\n") + chunked.startswith(b"0\r\n\r\n") == 1
    assert chunked.endswith(b"\r\n0\r\n\r\n")
    assert b"data: [DONE]" in chunked
    assert b'"prompt_tokens"' not in chunked  # the client did not ask for usage

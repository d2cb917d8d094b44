"""The Responses WebSocket in-process: the frame checks, the handshake gate, frames never relayed, the HTTP call made.

The end-to-end tests (tests/test_e2e_responses_ws.py) run the same through real
processes with a real WebSocket client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketData, WebSocketMessage
from sqlmodel import Session
from wsproto.frame_protocol import Opcode

from addons.responses_ws import ResponsesWebSocket
from addons.stack import build_addons
from tokensense.gateway import responses_ws as ws
from tokensense.gateway.flowmeta import WS_TERMINATED, get_call
from tokensense.gateway.runtime import Runtime
from tokensense.providers import PROVIDERS
from tokensense.settings import Settings
from tokensense.storage import repo

HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    mp = pytest.MonkeyPatch()
    for provider in PROVIDERS.values():
        mp.setenv(provider.env_key, f"provider-key-{provider.name}")
    rt = Runtime(Settings(home=tmp_path_factory.mktemp("ws")))
    rt.start()
    yield rt
    rt.close()
    mp.undo()


@pytest.fixture(scope="module")
def key(runtime: Runtime) -> str:
    with Session(runtime.engine) as session:
        _, plain = repo.create_key(session=session, name="ws-inprocess")
    runtime.keys.refresh(force=True)  # type: ignore[union-attr]
    return plain


def handshake(key: str | None, path: str = "/v1/responses", **headers: str) -> http.HTTPFlow:
    fields = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13",
              "sec-websocket-key": HANDSHAKE_KEY, "openai-beta": "responses_websockets=2026-02-06",
              "session-id": "sess-1", **headers}
    if key is not None:
        fields["authorization"] = f"Bearer {key}"
    req = http.Request.make("GET", f"http://address:22{path}", b"", fields)
    flow = tflow.tflow(req=req)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9@8080")
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    flow.client_conn.timestamp_tls_setup = None  # plain HTTP, as the gateway listens by default
    return flow


# --- the pure part ---------------------------------------------------------------------------------


def test_accept_value_is_rfc_6455s() -> None:
    assert ws.accept_value(HANDSHAKE_KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert ws.valid_handshake_key(HANDSHAKE_KEY) and not ws.valid_handshake_key("1234")


@pytest.mark.parametrize(("content", "is_text", "status", "code"), [
    (b"\x00\x01", False, 400, "invalid_frame"),
    (b"not json", True, 400, "invalid_json"),
    (b"[1, 2]", True, 400, "invalid_frame"),
    (b'{"type": "session.update"}', True, 400, "invalid_frame"),
    (b'{"type": "response.append", "input": []}', True, 400, "invalid_frame"),
    (b'{"type": "response.create"}', True, 400, "invalid_request"),
    (b'{"type": "response.create", "model": ["gpt-4.1"]}', True, 400, "invalid_request"),
    (b'{"type": "response.create", "model": "gpt-4.1", "input": 3}', True, 400, "invalid_request"),
    (b'{"type": "response.create", "model": "gpt-4.1", "previous_response_id": ""}', True, 400, "invalid_request"),
    (b'{"type": "response.create", "model": "gpt-4.1", "generate": 0}', True, 400, "invalid_request"),
])
def test_frames_that_are_refused(content: bytes, is_text: bool, status: int, code: str) -> None:
    with pytest.raises(ws.FrameError) as refused:
        ws.parse_frame(content, is_text=is_text)
    assert (refused.value.status, refused.value.code) == (status, code)


def test_oversized_frame_is_a_413() -> None:
    with pytest.raises(ws.FrameError) as refused:
        ws.parse_frame(b'{"type": "response.create", "model": "m", "input": "' + b"x" * 2000 + b'"}', is_text=True,
                       limit=1000)
    assert refused.value.status == 413


@given(st.binary(max_size=200))
def test_any_bytes_are_a_frame_or_a_frame_error(content: bytes) -> None:
    try:
        frame = ws.parse_frame(content, is_text=True)
    except ws.FrameError as e:
        assert 400 <= e.status < 500
    else:
        assert frame.kind in (ws.CREATE, ws.PROCESSED)


def test_a_continued_response_of_the_connection_is_spelled_out() -> None:
    conversation = ws.Conversation()
    first = {"model": "m", "input": "hi"}
    conversation.remember("resp_1", first, [{"type": "message", "role": "assistant", "content": []}])
    expanded = conversation.expand({"model": "m", "previous_response_id": "resp_1",
                                    "input": [{"type": "function_call_output", "call_id": "c", "output": "ok"}]})
    assert "previous_response_id" not in expanded
    assert [item["type"] for item in expanded["input"]] == ["message", "message", "function_call_output"]
    other = {"model": "m", "previous_response_id": "resp_elsewhere", "input": "x"}
    assert conversation.expand(other) is other  # not this connection's: the HTTP path checks its owner


def test_sse_reader_splits_events_across_chunks() -> None:
    reader = ws.SSEReader()
    assert reader.feed(b'event: response.created\ndata: {"a"') == []
    assert reader.feed(b': 1}\n\nevent: x\r\ndata: {"b": 2}\r\n\r\ndata: [DONE]\n\n') == [b'{"a": 1}', b'{"b": 2}']


def test_error_events_have_the_shape_codex_parses() -> None:
    event = json.loads(ws.error_event_from_answer(
        402, json.dumps({"error": {"message": "spent", "type": "insufficient_quota", "code": "budget_exceeded"}})
        .encode()))
    assert event == {"type": "error", "status": 402,
                     "error": {"type": "insufficient_quota", "code": "budget_exceeded", "message": "spent"}}
    assert json.loads(ws.error_event_from_answer(500, b"<html>"))["status"] == 500


def test_passed_headers_leave_keys_and_the_handshake_out() -> None:
    names = {name for name, _ in ws.passed_headers([
        (b"Authorization", b"Bearer tsk"), (b"Sec-WebSocket-Key", b"k"), (b"OpenAI-Beta", b"x"),
        (b"x-tokensense-transport", b"websocket"), (b"x-workflow-tag", b"wf"), (b"session-id", b"s")])}
    # (the key is stripped before, by strip_client_keys; the handshake fields never go on)
    assert names == {"authorization", "x-workflow-tag", "session-id"}


# --- the handshake ---------------------------------------------------------------------------------


async def test_handshake_with_a_key_is_answered_101_by_the_gateway(runtime: Runtime, key: str) -> None:
    chain = build_addons(runtime)[0]
    flow = handshake(key, **{"x-workflow-tag": "wf"})
    with taddons.context():
        await chain.requestheaders(flow)  # type: ignore[attr-defined]
    assert flow.response is not None and flow.response.status_code == 101
    assert flow.response.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert flow.metadata[WS_TERMINATED] is True
    assert "authorization" not in flow.request.headers  # gone before anything could log it
    call = get_call(flow)
    assert call is not None and call.recorded  # the handshake is no record; each response is one


@pytest.mark.parametrize(("presented", "path", "status"), [
    (None, "/v1/responses", 401), ("tsk_unknown", "/responses", 401)])
async def test_handshake_without_a_valid_key_is_refused(runtime: Runtime, presented: str | None, path: str,
                                                        status: int) -> None:
    chain = build_addons(runtime)[0]
    flow = handshake(presented, path)
    with taddons.context():
        await chain.requestheaders(flow)  # type: ignore[attr-defined]
    assert flow.response is not None and flow.response.status_code == status
    assert WS_TERMINATED not in flow.metadata


async def test_handshake_refused_with_426_when_turned_off(runtime: Runtime, key: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Codex answers a 426 handshake by using HTTP (SSE) for the rest of its session."""
    monkeypatch.setattr(runtime.settings, "responses_websocket", False)
    addon = ResponsesWebSocket(runtime)
    flow = handshake(key)
    with taddons.context():
        await addon.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 426
    assert flow.response.headers["upgrade"] == "websocket"


async def test_bad_handshake_key_is_a_400(runtime: Runtime, key: str) -> None:
    addon = ResponsesWebSocket(runtime)
    flow = handshake(key, **{"sec-websocket-key": "1234"})
    with taddons.context():
        await addon.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 400


# --- frames ----------------------------------------------------------------------------------------


class Served:
    """An addon whose frames to the client are collected and whose HTTP calls go to a mock."""

    def __init__(self, runtime: Runtime, answer: httpx.Response | None = None) -> None:
        self.addon = ResponsesWebSocket(runtime)
        self.sent: list[dict] = []
        self.calls: list[httpx.Request] = []
        self.addon._send = lambda flow, content: self.sent.append(json.loads(content))  # type: ignore[method-assign]

        def handler(request: httpx.Request) -> httpx.Response:
            self.calls.append(request)
            return answer or httpx.Response(200, headers={"content-type": "text/event-stream"}, content=SSE)

        self.addon._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))


SSE = (b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_a"}}\n\n'
       b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"resp_a","output":'
       b'[{"type":"message","role":"assistant","content":[]}],"usage":{"input_tokens":3,"output_tokens":2}}}\n\n')


async def open_socket(served: Served, key: str) -> http.HTTPFlow:
    flow = handshake(key, **{"x-execution-id": "run-7"})
    with taddons.context():
        await served.addon.requestheaders(flow)
    flow.websocket = WebSocketData()
    return flow


async def client_frame(served: Served, flow: http.HTTPFlow, content: bytes, opcode: Opcode = Opcode.TEXT) -> \
        WebSocketMessage:
    assert flow.websocket is not None
    message = WebSocketMessage(opcode, True, content)
    flow.websocket.messages.append(message)
    served.addon.websocket_message(flow)
    conn = served.addon._connections.get(flow.id)
    if conn is not None and conn.worker is not None:
        await settle(served)
    return message


async def settle(served: Served) -> None:
    """Let the connection's worker serve what is queued (the mock answers at once)."""
    for _ in range(50):
        await asyncio.sleep(0.01)
        conn = next(iter(served.addon._connections.values()), None)
        if conn is None or conn.queue.empty():
            await asyncio.sleep(0.05)
            return


@pytest.mark.parametrize("content", [b"{", b'{"type": "x"}', b'{"type": "response.create", "model": 1}'])
async def test_hostile_frames_are_dropped_and_answered(runtime: Runtime, key: str, content: bytes) -> None:
    served = Served(runtime)
    flow = await open_socket(served, key)
    message = await client_frame(served, flow, content)
    assert message.dropped and served.calls == []
    assert served.sent[0]["type"] == "error" and served.sent[0]["status"] == 400


async def test_binary_frame_is_dropped_and_answered(runtime: Runtime, key: str) -> None:
    served = Served(runtime)
    flow = await open_socket(served, key)
    message = await client_frame(served, flow, b"\x00", Opcode.BINARY)
    assert message.dropped and served.calls == [] and served.sent[0]["status"] == 400


async def test_an_exception_while_checking_answers_500_and_forwards_nothing(runtime: Runtime, key: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    served = Served(runtime)
    flow = await open_socket(served, key)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ws, "parse_frame", broken)
    message = await client_frame(served, flow, b'{"type": "response.create", "model": "gpt-4.1"}')
    assert message.dropped and served.calls == []
    assert served.sent == [json.loads(ws.error_event(500, served.sent[0]["error"]["message"], code="internal_error"))]


async def test_create_frame_becomes_one_http_call_with_the_key_and_headers(runtime: Runtime, key: str) -> None:
    served = Served(runtime)
    flow = await open_socket(served, key)
    frame = {"type": "response.create", "model": "gpt-4.1", "input": "hi", "store": False,
             "client_metadata": {"x": "y"}}
    message = await client_frame(served, flow, json.dumps(frame).encode())
    assert message.dropped
    [call] = served.calls
    assert str(call.url) == "http://127.0.0.1:8080/v1/responses"
    assert call.headers["authorization"] == f"Bearer {key}"
    assert call.headers["x-tokensense-transport"] == "websocket" and call.headers["x-execution-id"] == "run-7"
    assert "sec-websocket-key" not in call.headers and "openai-beta" not in call.headers
    assert json.loads(call.content) == {"model": "gpt-4.1", "input": "hi", "store": False, "stream": True}
    assert [e["type"] for e in served.sent] == ["response.created", "response.completed"]
    # The next frame continues it: sent as the whole conversation.
    await client_frame(served, flow, json.dumps({"type": "response.create", "model": "gpt-4.1",
                                                 "previous_response_id": "resp_a", "input": "more"}).encode())
    second = json.loads(served.calls[1].content)
    assert "previous_response_id" not in second and len(second["input"]) == 3
    served.addon.websocket_end(flow)


async def test_a_refusal_of_the_gateway_becomes_an_error_frame(runtime: Runtime, key: str) -> None:
    refusal = httpx.Response(403, json={"error": {"message": "not allowed", "type": "permission_error",
                                                  "code": "model_not_allowed"}})
    served = Served(runtime, refusal)
    flow = await open_socket(served, key)
    await client_frame(served, flow, b'{"type": "response.create", "model": "claude-sonnet-4-6", "input": "x"}')
    await settle(served)
    assert served.sent == [{"type": "error", "status": 403, "error": {
        "type": "permission_error", "code": "model_not_allowed", "message": "not allowed"}}]


async def test_warmup_is_answered_by_the_gateway(runtime: Runtime, key: str) -> None:
    served = Served(runtime)
    flow = await open_socket(served, key)
    await client_frame(served, flow, b'{"type": "response.create", "model": "gpt-4.1", "input": [], '
                                     b'"generate": false}')
    await settle(served)
    assert served.calls == [] and [e["type"] for e in served.sent] == ["response.created", "response.completed"]


async def test_admit_labels_the_http_call_of_a_websocket_response(runtime: Runtime, key: str) -> None:
    chain = build_addons(runtime)[0]
    req = http.Request.make("POST", "http://address:22/v1/responses", b'{"model": "gpt-4.1", "input": "x"}',
                            {"content-type": "application/json", "authorization": f"Bearer {key}",
                             "x-tokensense-transport": "websocket"})
    flow = tflow.tflow(req=req)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9@8080")
    with taddons.context():
        await chain.requestheaders(flow)  # type: ignore[attr-defined]
    call = get_call(flow)
    assert call is not None and call.transport == "websocket"
    assert "x-tokensense-transport" not in flow.request.headers

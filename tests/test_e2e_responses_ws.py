"""The Responses API over WebSocket (Codex CLI's transport) through the real gateway, with a real WebSocket client."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from conftest import Gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

pytestmark = pytest.mark.e2e

BETA = {"OpenAI-Beta": "responses_websockets=2026-02-06"}


def ws_url(gw: Gateway, path: str = "/v1/responses") -> str:
    return gw.url.replace("http://", "ws://") + path


def open_ws(gw: Gateway, exec_id: str, key: str | None = None, **headers: str) -> ClientConnection:
    return connect(ws_url(gw), additional_headers={"Authorization": f"Bearer {key or gw.key}",
                                                   "x-execution-id": exec_id, **BETA, **headers},
                   open_timeout=10, compression=None)


def create(conn: ClientConnection, **body: Any) -> list[dict]:
    """Send one response.create frame; the events until the terminal one (or an error)."""
    conn.send(json.dumps({"type": "response.create", **body}))
    events = []
    while True:
        event = json.loads(conn.recv(timeout=15))
        events.append(event)
        if event["type"] in ("response.completed", "response.incomplete", "response.failed", "error"):
            return events


def test_two_responses_on_one_connection(gateway: Gateway, exec_id: str) -> None:
    gateway.fake.clear()
    with open_ws(gateway, exec_id, **{"x-workflow-tag": "ws-flow", "x-step": "plan"}) as conn:
        first = create(conn, model="gpt-4.1", instructions="Be brief.", input="hello there model", store=False)
        assert first[0]["type"] == "response.created" and first[-1]["type"] == "response.completed"
        done = first[-1]["response"]
        assert done["usage"]["input_tokens"] == 5
        text = "".join(e["delta"] for e in first if e["type"] == "response.output_text.delta")
        assert text == "Hello from gpt-4.1."
        # Codex continues the connection's previous response with only the new items.
        second = create(conn, model="gpt-4.1", previous_response_id=done["id"], store=False,
                        input=[{"type": "message", "role": "user", "content": [{"type": "input_text",
                                                                                "text": "and again"}]}])
        assert second[-1]["type"] == "response.completed"
    upstream = [r for r in gateway.fake.requests() if r["path"].endswith("/v1/responses")]
    assert len(upstream) == 2
    for request in upstream:
        assert gateway.key not in json.dumps(request)
        assert request["headers"].get("authorization", "").startswith("Bearer sk-")
        assert request["body"]["stream"] is True and "type" not in request["body"]
    # The second call carried the whole conversation (the first response's output included).
    second_input = upstream[1]["body"]["input"]
    assert "previous_response_id" not in upstream[1]["body"]
    assert second_input[-1]["content"][0]["text"] == "and again" and len(second_input) >= 3
    rows = gateway.wait_records(count=2, execution_id=exec_id)
    assert len(rows) == 2
    for row in rows:
        assert (row["endpoint"], row["provider"], row["model"], row["status"]) == ("responses", "openai",
                                                                                 "gpt-4.1", 200)
        assert row["stream"] == 1 and row["cost_usd"] > 0 and row["input_tokens"] > 0
        assert row["workflow"] == "ws-flow" and row["step"] == "plan"
        assert json.loads(row["details"])["transport"] == "websocket"


@pytest.mark.parametrize(("model", "provider"), [("claude-sonnet-4-6", "anthropic"), ("gemini-2.5-flash", "gemini")])
def test_translated_models_over_websocket(gateway: Gateway, exec_id: str, model: str, provider: str) -> None:
    with open_ws(gateway, exec_id) as conn:
        events = create(conn, model=model, input="hello there model")
        assert events[-1]["type"] == "response.completed"
        assert events[-1]["response"]["output"][0]["content"][0]["text"] == f"Hello from {model}."
        again = create(conn, model=model, previous_response_id=events[-1]["response"]["id"], input="more")
        assert again[-1]["type"] == "response.completed"
    rows = gateway.wait_records(count=2, execution_id=exec_id)
    assert [(r["provider"], r["endpoint"]) for r in rows] == [(provider, "responses")] * 2
    assert all(r["cost_usd"] > 0 for r in rows)


def test_codex_session_header_is_the_execution_id(gateway: Gateway) -> None:
    session = str(uuid.uuid4())
    conn = connect(ws_url(gateway, "/responses"), additional_headers={
        "Authorization": f"Bearer {gateway.key}", "session-id": session, **BETA}, open_timeout=10)
    with conn:
        # Codex warms a connection up with generate=false, then continues that response.
        warm = create(conn, model="gpt-4.1", input=[], generate=False)
        assert [e["type"] for e in warm] == ["response.created", "response.completed"]
        events = create(conn, model="gpt-4.1", input="hi", previous_response_id=warm[-1]["response"]["id"])
        assert events[-1]["type"] == "response.completed"
    rows = gateway.wait_records(count=1, execution_id=session)
    assert len(rows) == 1 and rows[0]["output_tokens"] > 0  # the warm-up is no provider call


def test_handshake_without_a_valid_key_is_refused(gateway: Gateway) -> None:
    for headers in ({}, {"Authorization": "Bearer tsk_not_a_key"}):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(gateway), additional_headers=headers, open_timeout=10)
        assert refused.value.response.status_code == 401


def test_refused_model_and_budget_frames_answer_errors_and_send_nothing(gateway: Gateway, exec_id: str) -> None:
    spent = json.loads(gateway.cli("keys", "create", f"ws-spent-{exec_id}", "--allow-model", "gpt-4.1",
                                   "--budget-usd", "0", "--json").stdout)["key"]
    gateway.fake.clear()
    with open_ws(gateway, exec_id, key=spent) as conn:
        [error] = create(conn, model="claude-sonnet-4-6", input="hi")
        assert error["type"] == "error" and error["status"] == 403
        [error] = create(conn, model="no-such-model-xyz", input="hi")
        assert error["status"] == 404
        [error] = create(conn, model="gpt-4.1", input="hi", max_output_tokens=16)
        assert error["status"] == 402 and error["error"]["message"]
        conn.send(json.dumps({"type": "response.processed", "response_id": "resp_x"}))  # accepted, not answered
        [error] = create(conn, model="gpt-4.1", input="still spent")
        assert error["status"] == 402  # the connection stays open after refusals
    assert gateway.fake.requests() == []


def test_rate_limit_holds_per_frame(gateway: Gateway, exec_id: str) -> None:
    limited = json.loads(gateway.cli("keys", "create", f"ws-rpm-{exec_id}", "--rpm", "1", "--json").stdout)["key"]
    with open_ws(gateway, exec_id, key=limited) as conn:
        assert create(conn, model="gpt-4.1", input="one")[-1]["type"] == "response.completed"
        [error] = create(conn, model="gpt-4.1", input="two")
        assert error["type"] == "error" and error["status"] == 429
    assert len(gateway.wait_records(count=2, execution_id=exec_id)) == 2  # the refusal is recorded too


def test_previous_response_of_another_key_is_refused(gateway: Gateway, exec_id: str) -> None:
    other = json.loads(gateway.cli("keys", "create", f"ws-other-{exec_id}", "--json").stdout)["key"]
    with open_ws(gateway, exec_id) as conn:
        owned = create(conn, model="gpt-4.1", input="hi", store=True)[-1]["response"]["id"]
    gateway.fake.clear()
    with open_ws(gateway, exec_id, key=other) as conn:
        [error] = create(conn, model="gpt-4.1", input="hi", previous_response_id=owned)
        assert error["type"] == "error" and error["status"] == 404
    assert gateway.fake.requests() == []


HOSTILE = st.one_of(
    st.binary(max_size=64).map(lambda b: ("binary", b)),
    st.text(max_size=64).filter(lambda t: not t.strip().startswith("{")).map(lambda t: ("text", t)),
    st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=8)), max_size=4)
    .map(lambda d: ("text", json.dumps(d))),
    st.sampled_from([{"type": "response.create"}, {"type": "response.create", "model": 5},
                     {"type": "response.create", "model": "gpt-4.1", "input": 7},
                     {"type": "response.create", "model": "gpt-4.1", "previous_response_id": 3},
                     {"type": "response.create", "model": "gpt-4.1", "generate": "no"},
                     {"type": "session.update"}, {"type": "response.append", "input": []}, [1, 2]])
    .map(lambda d: ("text", json.dumps(d))),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=HOSTILE)
def test_hostile_frames_get_an_error_and_reach_no_provider(gateway: Gateway, frame: tuple[str, Any]) -> None:
    kind, content = frame
    before = len(gateway.fake.requests())
    with open_ws(gateway, "hostile") as conn:
        conn.send(content if kind == "binary" else content)
        event = json.loads(conn.recv(timeout=15))
    assert event["type"] == "error" and 400 <= event["status"] < 500
    assert isinstance(event["error"]["message"], str)
    assert len(gateway.fake.requests()) == before


def test_connection_closed_mid_response_still_gives_one_record(gateway: Gateway, exec_id: str) -> None:
    with open_ws(gateway, exec_id, **{"x-fake-chunks": "30", "x-fake-chunk-delay-ms": "100"}) as conn:
        conn.send(json.dumps({"type": "response.create", "model": "gpt-4.1", "input": "a long one"}))
        while json.loads(conn.recv(timeout=15))["type"] != "response.output_text.delta":
            pass
    rows = gateway.wait_records(count=1, execution_id=exec_id)
    assert len(rows) == 1
    assert rows[0]["status"] == 499 and rows[0]["endpoint"] == "responses"
    assert json.loads(rows[0]["details"])["transport"] == "websocket"


def test_sigterm_lets_a_websocket_response_finish(tmp_path, fake_provider) -> None:  # type: ignore[no-untyped-def]
    import signal
    import time

    from conftest import start_gateway, stop

    gw = start_gateway(tmp_path, fake_provider)
    exec_id = f"drain-{uuid.uuid4().hex[:6]}"
    try:
        with open_ws(gw, exec_id, **{"x-fake-chunks": "15", "x-fake-chunk-delay-ms": "100"}) as conn:
            conn.send(json.dumps({"type": "response.create", "model": "gpt-4.1", "input": "drain me"}))
            assert json.loads(conn.recv(timeout=15))["type"] == "response.created"
            gw.process.send_signal(signal.SIGTERM)
            events = []
            while not events or events[-1]["type"] not in ("response.completed", "error"):
                events.append(json.loads(conn.recv(timeout=15)))
            assert events[-1]["type"] == "response.completed"
            # A new response while the gateway drains: refused, not cut off half-way.
            refused = create(conn, model="gpt-4.1", input="too late")
            assert refused[-1]["type"] == "error" and refused[-1]["status"] == 503
        deadline = time.monotonic() + 30
        while gw.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gw.process.returncode == 0
    finally:
        stop(gw.process)
    rows = gw.records(execution_id=exec_id)
    assert len(rows) == 1 and rows[0]["status"] == 200 and rows[0]["output_tokens"] == 15


def test_openai_sdk_responses_connect_through_the_gateway(gateway: Gateway, exec_id: str) -> None:
    """The official SDK's own Responses WebSocket mode (`client.responses.connect()`, openai>=3.5x)."""
    import openai

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0,
                           default_headers={"x-execution-id": exec_id})
    with client.responses.connect() as conn:
        conn.response.create(model="gpt-4.1", input="hello there model", store=False)
        types = []
        for event in conn:
            types.append(event.type)
            if event.type == "response.completed":
                assert event.response.output_text == "Hello from gpt-4.1."
                assert event.response.usage is not None and event.response.usage.input_tokens == 3
                break
    assert types[0] == "response.created"
    [row] = gateway.wait_records(count=1, execution_id=exec_id)
    assert row["cost_usd"] > 0 and json.loads(row["details"])["transport"] == "websocket"


def test_fake_provider_speaks_responses_over_websocket(fake_provider) -> None:  # type: ignore[no-untyped-def]
    """docs/fake-provider.md: the fake serves the WebSocket as OpenAI does (checked with the official SDK)."""
    import openai

    with pytest.raises(InvalidStatus):
        connect(fake_provider.url.replace("http://", "ws://") + "/openai/v1/responses", open_timeout=10)
    client = openai.OpenAI(base_url=f"{fake_provider.url}/openai/v1", api_key="sk-test", max_retries=0)
    with client.responses.connect() as conn:
        conn.response.create(model="gpt-4.1", input="hello there model", store=False)
        first = next(e for e in conn if e.type == "response.completed").response
        conn.response.create(model="gpt-4.1", input="and more", store=False, previous_response_id=first.id)
        second = next(e for e in conn if e.type == "response.completed").response
    assert first.output_text == "Hello from gpt-4.1." and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]

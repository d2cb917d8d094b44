"""Realtime sessions through TokenSense as an HTTPS_PROXY (intercept mode), with the openai SDK's realtime client:
the socket goes to the provider's own host with the client's own key, relayed and metered per response; a proxy
that requires a TokenSense key refuses a session without one at the handshake, nothing opened upstream."""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import websockets
from test_e2e_intercept import (  # noqa: F401  (the fixture `upstreams` is used by name)
    CLIENT_OPENAI_KEY,
    InterceptGateway,
    fake_requests,
    start_intercept_gateway,
    upstreams,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory, upstreams) -> Iterator[tuple[InterceptGateway, InterceptGateway]]:  # noqa: F811
    fake, other, cert = upstreams
    open_proxy = start_intercept_gateway(tmp_path_factory.mktemp("rt-open"), fake, other, cert)
    guarded = start_intercept_gateway(tmp_path_factory.mktemp("rt-guarded"), fake, other, cert, require_key=True)
    yield open_proxy, guarded
    open_proxy.stop()
    guarded.stop()


def _connect(proxy: InterceptGateway, exec_id: str, **headers: str) -> Any:
    client = openai.OpenAI(
        api_key=CLIENT_OPENAI_KEY, max_retries=0, default_headers={"x-execution-id": exec_id, **headers}
    )
    options: Any = {"proxy": proxy.proxy_url, "ssl": ssl.create_default_context(cafile=str(proxy.ca_file))}
    return client.realtime.connect(model="gpt-realtime", websocket_connection_options=options)


def _one_response(connection: Any) -> Any:
    assert connection.recv().type == "session.created"
    connection.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}
    )
    connection.response.create(response={"output_modalities": ["text"]})
    for event in connection:
        if event.type == "response.done":
            return event.response
        assert event.type != "error", event
    raise AssertionError("no response.done")


def _seen(proxy: InterceptGateway, transport: str, exec_id: str | None = None) -> list[dict]:
    return [
        r
        for r in fake_requests(proxy.fake)
        if r.get("transport") == transport
        and (exec_id is None or (r.get("headers") or {}).get("x-execution-id") == exec_id)
    ]


def test_a_realtime_session_through_the_proxy_is_metered_with_the_clients_own_key(proxies) -> None:
    proxy = proxies[0]
    exec_id = f"exec-{uuid.uuid4().hex[:12]}"
    with _connect(proxy, exec_id) as connection:
        response = _one_response(connection)
    (row,) = proxy.gateway.wait_records(1, execution_id=exec_id)
    assert (row["provider"], row["model"], row["endpoint"], row["status"]) == (
        "openai",
        "gpt-realtime",
        "realtime",
        200,
    )
    assert row["input_tokens"] == response.usage.input_tokens and row["output_tokens"] == response.usage.output_tokens
    assert row["cost_usd"] > 0 and row["key_name"] is None
    assert json.loads(row["details"])["transport"] == "websocket"
    (seen,) = _seen(proxy, "realtime", exec_id)
    assert seen["headers"]["authorization"] == f"Bearer {CLIENT_OPENAI_KEY}"  # the client's own key, not swapped
    assert seen["headers"]["host"] == "api.openai.com"


def test_a_proxy_that_requires_a_key_checks_it_at_the_handshake(proxies) -> None:
    guarded = proxies[1]
    exec_id = f"exec-{uuid.uuid4().hex[:12]}"
    before = len(_seen(guarded, "realtime.handshake"))
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        with _connect(guarded, exec_id) as connection:
            connection.recv()
    assert refused.value.response.status_code == 401
    assert "x-tokensense-key" in json.loads(refused.value.response.body)["error"]["message"]
    assert len(_seen(guarded, "realtime.handshake")) == before  # nothing opened upstream
    with _connect(guarded, exec_id, **{"x-tokensense-key": guarded.gateway.key}) as connection:
        _one_response(connection)
    rows = guarded.gateway.wait_records(1, execution_id=exec_id, status=200)
    assert rows and rows[0]["key_name"] == "e2e" and rows[0]["endpoint"] == "realtime" and rows[0]["cost_usd"] > 0
    (seen,) = _seen(guarded, "realtime", exec_id)
    assert "x-tokensense-key" not in seen["headers"]
    assert seen["headers"]["authorization"] == f"Bearer {CLIENT_OPENAI_KEY}"


def test_a_gemini_live_session_through_the_proxy_is_metered(proxies) -> None:
    """A Live socket to generativelanguage.googleapis.com, keyed `?key=` with the app's own key, relayed as sent."""
    import websockets.sync.client

    proxy = proxies[0]
    exec_id = f"exec-{uuid.uuid4().hex[:12]}"
    model = "gemini-live-2.5-flash-preview"
    url = (
        "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService"
        ".BidiGenerateContent?key=AIza-client-own-gemini-0123456789"
    )
    context = ssl.create_default_context(cafile=str(proxy.ca_file))
    with websockets.sync.client.connect(
        url, proxy=proxy.proxy_url, ssl=context, additional_headers={"x-execution-id": exec_id}, open_timeout=10
    ) as socket:
        socket.send(
            json.dumps({"setup": {"model": f"models/{model}", "generationConfig": {"responseModalities": ["TEXT"]}}})
        )
        assert "setupComplete" in json.loads(socket.recv(timeout=10))
        socket.send(
            json.dumps(
                {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Hi there"}]}], "turnComplete": True}}
            )
        )
        while True:
            message = json.loads(socket.recv(timeout=10))
            if (message.get("serverContent") or {}).get("turnComplete"):
                usage = message["usageMetadata"]
                break
    (row,) = proxy.gateway.wait_records(1, execution_id=exec_id)
    assert (row["provider"], row["model"], row["endpoint"], row["status"]) == ("gemini", model, "gemini.live", 200)
    assert row["input_tokens"] == usage["promptTokenCount"] and row["cost_usd"] > 0
    (seen,) = _seen(proxy, "live", exec_id)
    assert seen["headers"]["host"] == "generativelanguage.googleapis.com"

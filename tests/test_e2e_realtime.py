"""OpenAI Realtime and Gemini Live over WebSocket through a real gateway, with the official SDKs' realtime clients:
relayed, admitted at the handshake, policed before each response, one record per response priced per modality."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import websockets
import websockets.sync.client
from conftest import FakeProvider, Gateway, start_gateway, stop
from websockets.typing import Subprotocol

# gpt-realtime's list prices, USD per million tokens, by modality (platform.openai.com/docs/pricing).
TEXT_IN, CACHED_IN, AUDIO_IN, TEXT_OUT, AUDIO_OUT = 4.0, 0.4, 32.0, 16.0, 64.0
ONE_SECOND_PCM16 = base64.b64encode(bytes(2 * 24_000)).decode()
LONG_PROMPT = " ".join(f"word{i}" for i in range(40))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    def prepare(pre: Gateway) -> None:
        for name, budget in (("spent", "0"), ("one-response", "0.007")):
            created = json.loads(pre.cli("keys", "create", name, "--budget-usd", budget, "--budget-period", "total",
                                         "--json").stdout)
            pre.extra[name] = created["key"]

    gateway = start_gateway(tmp_path_factory.mktemp("realtime"), fake_provider, prepare=prepare)
    yield gateway
    stop(gateway.process)


def _client(gw: Gateway, execution_id: str, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key or gw.key, max_retries=0,
                         default_headers={"x-execution-id": execution_id, "x-workflow-tag": "voice-agent"})


def _until_done(connection: Any) -> tuple[list[str], Any]:
    kinds = []
    for event in connection:
        kinds.append(event.type)
        if event.type == "response.done":
            return kinds, event.response
        if event.type == "error":
            raise AssertionError(event.error.message)
    raise AssertionError("the socket closed before response.done")


def _list_price(usage) -> float:
    """The cost of a realtime response's usage at the list prices per modality, computed here from the SDK's view."""
    inp, out = usage.input_token_details, usage.output_token_details
    cached = inp.cached_tokens_details
    cached_text, cached_audio = cached.text_tokens or 0, cached.audio_tokens or 0
    return ((inp.text_tokens - cached_text) * TEXT_IN + cached_text * CACHED_IN
            + (inp.audio_tokens - cached_audio) * AUDIO_IN + cached_audio * CACHED_IN
            + out.text_tokens * TEXT_OUT + out.audio_tokens * AUDIO_OUT) / 1e6


def _fake_saw(fake: FakeProvider, transport: str, execution_id: str | None = None) -> list[dict]:
    return [r for r in fake.requests() if r.get("transport") == transport
            and (execution_id is None or (r.get("headers") or {}).get("x-execution-id") == execution_id)]


def test_two_responses_in_one_session_are_two_records_priced_per_modality(gw: Gateway, exec_id: str) -> None:
    with _client(gw, exec_id).realtime.connect(model="gpt-realtime") as connection:
        assert connection.recv().type == "session.created"
        connection.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": LONG_PROMPT}]})
        connection.response.create()
        kinds, first = _until_done(connection)
        assert "response.output_audio.delta" in kinds  # frames pass unchanged, in order
        connection.input_audio_buffer.append(audio=ONE_SECOND_PCM16)
        connection.input_audio_buffer.commit()
        connection.response.create()
        _, second = _until_done(connection)
    assert second.usage.input_token_details.cached_tokens > 0  # every modality of the price is exercised
    assert second.usage.input_token_details.cached_tokens_details.audio_tokens > 0
    rows = gw.wait_records(2, execution_id=exec_id)
    assert len(rows) == 2
    for row, response in zip(rows, (first, second), strict=True):
        usage = response.usage
        assert row["provider"] == "openai" and row["model"] == "gpt-realtime" and row["endpoint"] == "realtime"
        assert row["status"] == 200 and row["key_name"] == "e2e" and row["workflow"] == "voice-agent"
        assert row["input_tokens"] == usage.input_tokens and row["output_tokens"] == usage.output_tokens
        assert row["cached_input_tokens"] == usage.input_token_details.cached_tokens
        details = json.loads(row["details"])
        assert details["transport"] == "websocket"
        assert details["units"]["output_audio_tokens"] == usage.output_token_details.audio_tokens
        assert abs(row["cost_usd"] - _list_price(usage)) < 1e-6, (row["cost_usd"], _list_price(usage))
    assert rows[0]["request_id"] != rows[1]["request_id"]
    upstream = _fake_saw(gw.fake, "realtime", exec_id)
    assert len(upstream) == 2
    assert upstream[0]["headers"]["authorization"] == "Bearer sk-test-openai"  # the provider's key, not ours


def test_browser_subprotocol_key_is_swapped(gw: Gateway, exec_id: str) -> None:
    url = gw.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    with websockets.sync.client.connect(url, subprotocols=[Subprotocol("realtime"), Subprotocol(f"openai-insecure-api-key.{gw.key}")],
                                        additional_headers={"x-execution-id": exec_id}, open_timeout=10) as socket:
        assert socket.subprotocol == "realtime"
        assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
        socket.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
        while json.loads(socket.recv(timeout=10))["type"] != "response.done":
            pass
    (row,) = gw.wait_records(1, execution_id=exec_id)
    assert row["key_name"] == "e2e" and row["cost_usd"] > 0
    (seen,) = _fake_saw(gw.fake, "realtime", exec_id)
    assert seen["headers"]["authorization"] == "Bearer sk-test-openai"
    assert gw.key not in json.dumps(seen)


def test_a_session_without_an_execution_id_is_one_execution(gw: Gateway) -> None:
    url = gw.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    with websockets.sync.client.connect(url, additional_headers={"authorization": f"Bearer {gw.key}"},
                                        open_timeout=10) as socket:
        assert socket.response is not None
        session = socket.response.headers["x-tokensense-request-id"]
        assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
        for _ in range(2):
            socket.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            while json.loads(socket.recv(timeout=10))["type"] != "response.done":
                pass
    rows = gw.wait_records(2, execution_id=f"session-{session}")
    assert len(rows) == 2 and all(r["status"] == 200 for r in rows)


def test_a_webrtc_calls_sideband_is_metered(gw: Gateway, exec_id: str) -> None:
    """A WebRTC call's media goes between the browser and OpenAI; its server opens the call's sideband socket
    (`?call_id=`) through the gateway, which learns the model from the session and meters each response on it."""
    url = gw.url.replace("http://", "ws://") + "/v1/realtime?call_id=rtc_test_call_1"
    headers = {"authorization": f"Bearer {gw.key}", "x-execution-id": exec_id}
    with websockets.sync.client.connect(url, additional_headers=headers, open_timeout=10) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
        socket.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
        while json.loads(socket.recv(timeout=10))["type"] != "response.done":
            pass
    (row,) = gw.wait_records(1, execution_id=exec_id)
    assert row["model"] == "gpt-realtime" and row["status"] == 200 and row["cost_usd"] > 0
    (seen,) = _fake_saw(gw.fake, "realtime", exec_id)
    assert seen["query"] == {"call_id": "rtc_test_call_1"}

    # A spent budget needs no model: refused at the handshake (tests/test_e2e_realtime_refusals.py).
    spent = {"authorization": f"Bearer {gw.extra['spent']}", "x-execution-id": exec_id + "-spent"}
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(url, additional_headers=spent, open_timeout=10)
    assert refused.value.response.status_code == 402
    assert json.loads(refused.value.response.body)["error"]["code"] == "budget_exceeded"


def test_a_spent_key_is_refused_at_the_handshake_with_nothing_opened_upstream(gw: Gateway, exec_id: str) -> None:
    gw.fake.clear()
    client = _client(gw, exec_id, key=gw.extra["spent"])
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        with client.realtime.connect(model="gpt-realtime") as connection:
            connection.recv()
    assert refused.value.response.status_code == 402
    assert json.loads(refused.value.response.body)["error"]["code"] == "budget_exceeded"
    with pytest.raises(websockets.exceptions.InvalidStatus) as unknown:
        with _client(gw, exec_id, key="tsk_not_a_key").realtime.connect(model="gpt-realtime") as connection:
            connection.recv()
    assert unknown.value.response.status_code == 401
    assert _fake_saw(gw.fake, "realtime.handshake") == []  # nothing was opened upstream


def test_a_budget_for_one_response_answers_the_second_with_an_error_event(gw: Gateway, exec_id: str) -> None:
    client = _client(gw, exec_id, key=gw.extra["one-response"])
    with client.realtime.connect(model="gpt-realtime") as connection:
        assert connection.recv().type == "session.created"
        connection.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Hi"}]})
        connection.response.create(response={"max_output_tokens": 100})  # reserves $0.0064 of $0.007
        _until_done(connection)
        connection.response.create(response={"max_output_tokens": 100}, event_id="evt_second")
        error = connection.recv()
        assert error.type == "error", error
        assert error.error.code == "budget_exceeded" and error.error.event_id == "evt_second"
        assert "budget" in error.error.message
        # The socket is still usable: the session answers frames that cost nothing.
        connection.session.update(session={"type": "realtime", "instructions": "Be brief."})
        assert connection.recv().type == "session.updated"
    rows = gw.wait_records(2, execution_id=exec_id)
    assert [r["status"] for r in rows] == [200, 402]
    assert rows[1]["cost_usd"] == 0
    assert len(_fake_saw(gw.fake, "realtime", exec_id)) == 1  # the refused response.create was not forwarded


def test_the_cost_cap_of_the_handshake_applies_to_each_response(gw: Gateway, exec_id: str) -> None:
    """x-tokensense-max-cost-usd on the handshake caps each response's largest cost: 4,096 audio tokens at $64 per
    million ($0.26) do not fit $0.01, 100 do ($0.0064)."""
    url = gw.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    headers = {"authorization": f"Bearer {gw.key}", "x-execution-id": exec_id, "x-tokensense-max-cost-usd": "0.01"}
    with websockets.sync.client.connect(url, additional_headers=headers, open_timeout=10) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
        socket.send(json.dumps({"type": "response.create", "event_id": "evt_big",
                                "response": {"output_modalities": ["text"]}}))
        error = json.loads(socket.recv(timeout=10))
        assert error["type"] == "error" and error["error"]["code"] == "max_cost_exceeded"
        assert error["error"]["event_id"] == "evt_big"
        socket.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 100}}))
        while json.loads(socket.recv(timeout=10))["type"] != "response.done":
            pass
    rows = gw.wait_records(2, execution_id=exec_id)
    assert [r["status"] for r in rows] == [402, 200]
    seen = _fake_saw(gw.fake, "realtime", exec_id)
    assert len(seen) == 1 and "x-tokensense-max-cost-usd" not in seen[0]["headers"]


def test_client_killed_mid_response_still_leaves_a_record(gw: Gateway, exec_id: str) -> None:
    url = gw.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    headers = {"authorization": f"Bearer {gw.key}", "x-execution-id": exec_id, "x-fake-chunk-delay-ms": "200"}
    socket = websockets.sync.client.connect(url, additional_headers=headers, open_timeout=10)
    assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
    socket.send(json.dumps({"type": "response.create"}))
    while json.loads(socket.recv(timeout=10))["type"] != "response.output_audio.delta":
        pass
    socket.socket.close()  # no close frame: the client is gone
    (row,) = gw.wait_records(1, execution_id=exec_id)
    assert row["status"] == 499 and row["model"] == "gpt-realtime"
    # The provider never said what it used: the response's reservation (4,096 audio tokens at $64 per million,
    # its largest cost) is its cost, never $0 (cutting responses would dodge a budget) nor NULL.
    assert row["cost_usd"] == pytest.approx(4_096 * AUDIO_OUT / 1e6, abs=1e-6)
    details = json.loads(row["details"])
    assert details["cut"] == "client_closed" and details["charged"] == "reservation"
    assert "closed before the response ended" in row["error"]


def test_client_secrets_pass_through_for_a_tokensense_key_recorded_free(gw: Gateway, exec_id: str) -> None:
    client = _client(gw, exec_id)
    secret = client.realtime.client_secrets.create(session={"type": "realtime", "model": "gpt-realtime"},
                                                   expires_after={"anchor": "created_at", "seconds": 600})
    assert secret.value.startswith("ek_") and getattr(secret.session, "model", None) == "gpt-realtime"
    (row,) = gw.wait_records(1, execution_id=exec_id)
    assert row["endpoint"] == "realtime.client_secrets" and row["status"] == 200 and row["cost_usd"] == 0
    seen = gw.fake.last("openai")
    assert seen["path"] == "/openai/v1/realtime/client_secrets"
    assert seen["headers"]["authorization"] == "Bearer sk-test-openai"
    with pytest.raises(openai.AuthenticationError):
        _client(gw, exec_id, key="tsk_unknown").realtime.client_secrets.create(session={"type": "realtime"})


# --- Gemini Live ---------------------------------------------------------------------------------

# gemini-live-2.5-flash's list prices, USD per million tokens, by modality (ai.google.dev/gemini-api/docs/pricing).
LIVE_TEXT_IN, LIVE_AUDIO_IN, LIVE_TEXT_OUT, LIVE_AUDIO_OUT = 0.5, 3.0, 2.0, 12.0
LIVE_MODEL = "gemini-live-2.5-flash-preview"


def _live_client(gw: Gateway, execution_id: str, key: str | None = None):
    from google import genai

    client = genai.Client(api_key=key or gw.key, http_options={"base_url": gw.url,
                                                              "headers": {"x-execution-id": execution_id}})
    # google-genai always opens wss://; the test gateway listens on plain HTTP.
    client._api_client._websocket_base_url = lambda *_: gw.url.replace("http://", "ws://")  # type: ignore[method-assign]
    client._api_client._websocket_ssl_ctx = {}
    return client


async def _live_turn(session: Any) -> tuple[list, Any]:
    messages = []
    async for message in session.receive():
        messages.append(message)
        if message.server_content is not None and message.server_content.turn_complete:
            return messages, message.usage_metadata
    raise AssertionError("the turn did not complete")


def _live_price(usage) -> float:
    prompt = {d.modality.name: d.token_count for d in usage.prompt_tokens_details or []}
    response = {d.modality.name: d.token_count for d in usage.response_tokens_details or []}
    return (prompt.get("TEXT", 0) * LIVE_TEXT_IN + prompt.get("AUDIO", 0) * LIVE_AUDIO_IN
            + response.get("TEXT", 0) * LIVE_TEXT_OUT + response.get("AUDIO", 0) * LIVE_AUDIO_OUT) / 1e6


async def test_gemini_live_turns_are_records_priced_per_modality(gw: Gateway, exec_id: str) -> None:
    from google.genai import types

    client = _live_client(gw, exec_id)
    async with client.aio.live.connect(model=LIVE_MODEL, config={"response_modalities": ["AUDIO"]}) as session:
        await session.send_client_content(turns={"role": "user", "parts": [{"text": "Hello there friend"}]})
        messages, first = await _live_turn(session)
        assert any(m.data for m in messages)  # the audio passed through
        await session.send_realtime_input(audio=types.Blob(data=bytes(2 * 16_000), mime_type="audio/pcm;rate=16000"))
        await session.send_realtime_input(audio_stream_end=True)
        _, second = await _live_turn(session)
    rows = gw.wait_records(2, execution_id=exec_id)
    assert len(rows) == 2
    for row, usage in zip(rows, (first, second), strict=True):
        assert row["provider"] == "gemini" and row["model"] == LIVE_MODEL and row["endpoint"] == "gemini.live"
        assert row["status"] == 200 and row["input_tokens"] == usage.prompt_token_count
        assert row["output_tokens"] == usage.response_token_count
        assert json.loads(row["details"])["transport"] == "websocket"
        assert abs(row["cost_usd"] - _live_price(usage)) < 1e-6, (row["cost_usd"], _live_price(usage))
    seen = [r for r in gw.fake.requests() if r.get("transport") == "live"
            and r["headers"].get("x-execution-id") == exec_id]
    assert len(seen) == 2 and seen[0]["headers"]["x-goog-api-key"] == "gm-test-gemini"


async def test_gemini_live_a_spent_key_is_refused_at_the_handshake(gw: Gateway, exec_id: str) -> None:
    """The handshake names no model, but a spent budget needs none: 402 with Google's error body, nothing opened
    upstream (tests/test_e2e_realtime_refusals.py covers the other refusals, and those at `setup`)."""
    gw.fake.clear()
    client = _live_client(gw, exec_id, key=gw.extra["spent"])
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with client.aio.live.connect(model=LIVE_MODEL, config={"response_modalities": ["TEXT"]}) as session:
            await session.send_client_content(turns={"role": "user", "parts": [{"text": "Hi"}]})
            await _live_turn(session)
    assert refused.value.response.status_code == 402
    assert "budget" in json.loads(refused.value.response.body)["error"]["message"]
    assert not [r for r in gw.fake.requests() if r.get("transport") in ("live", "live.handshake")]

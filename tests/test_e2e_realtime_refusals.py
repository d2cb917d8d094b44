"""Realtime handshakes that name no model (Gemini Live, a WebRTC call's sideband) through a real gateway: what
needs no model (the key, its access to the provider, a spent budget of the key or of the handshake's attribution)
is refused at the handshake with the HTTP status and the provider's error body, nothing opened upstream; what
needs the model is still policed at the session's first frame. A response cut before its end is charged."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import websockets
import websockets.sync.client
from conftest import FakeProvider, Gateway, start_gateway, stop

LIVE_MODEL = "gemini-live-2.5-flash-preview"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    def prepare(pre: Gateway) -> None:
        for name, options in (
            ("spent", ("--budget-usd", "0", "--budget-period", "total")),
            ("openai-only", ("--allow-provider", "openai")),
            ("gpt-only", ("--allow-model", "gpt-*")),
            ("cut", ("--budget-usd", "0.4", "--budget-period", "total")),
        ):
            created = json.loads(pre.cli("keys", "create", name, *options, "--json").stdout)
            pre.extra[name] = created["key"]

    gateway = start_gateway(tmp_path_factory.mktemp("realtime-refusals"), fake_provider, prepare=prepare)
    yield gateway
    stop(gateway.process)


def _live_client(gw: Gateway, key: str, **headers: str) -> Any:
    from google import genai

    client = genai.Client(api_key=key, http_options={"base_url": gw.url, "headers": headers})
    # google-genai always opens wss://; the test gateway listens on plain HTTP.
    client._api_client._websocket_base_url = lambda *_: gw.url.replace("http://", "ws://")  # type: ignore[method-assign]
    client._api_client._websocket_ssl_ctx = {}
    return client


def _handshakes(fake: FakeProvider, transport: str) -> list[dict]:
    return [r for r in fake.requests() if r.get("transport") == transport]


async def _live_refused(gw: Gateway, key: str, **headers: str) -> tuple[int, dict]:
    """Open a Live session with google-genai; the HTTP status and body of the refused handshake."""
    client = _live_client(gw, key, **headers)
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with client.aio.live.connect(model=LIVE_MODEL, config={"response_modalities": ["TEXT"]}) as session:
            await session.send_client_content(turns={"role": "user", "parts": [{"text": "Hi"}]})
    response = refused.value.response
    return response.status_code, json.loads(response.body)


async def test_gemini_live_refuses_at_the_handshake_what_needs_no_model(gw: Gateway) -> None:
    gw.fake.clear()
    cases = (
        ("tsk_not_a_key", 401, "UNAUTHENTICATED", "key"),
        (gw.extra["openai-only"], 403, "PERMISSION_DENIED", "provider"),
        (gw.extra["spent"], 402, None, "budget"),
    )
    for key, status, google_status, word in cases:
        got, body = await _live_refused(gw, key, **{"x-execution-id": f"live-refused-{status}"})
        assert got == status, (got, body)
        error = body["error"]  # Google's error body: {"error": {"code", "message", "status"}}
        assert error["code"] == status and word in error["message"].lower(), body
        if google_status is not None:
            assert error["status"] == google_status, body
        assert "tsk_" not in error["message"]
    assert _handshakes(gw.fake, "live.handshake") == []  # nothing was opened upstream


async def test_gemini_live_a_spent_workflow_budget_is_refused_at_the_handshake(gw: Gateway) -> None:
    """A budget on the handshake's attribution that is already spent needs no model: 402 at the handshake."""
    workflow = f"voice-{uuid.uuid4().hex[:8]}"
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-workflow-tag": workflow}
    )
    (row,) = gw.wait_records(1, workflow=workflow)
    assert row["cost_usd"] > 0
    gw.cli("budgets", "set", "--workflow", workflow, "--usd", repr(row["cost_usd"] / 2))
    await asyncio.sleep(2)  # the gateway reloads budgets every second
    gw.fake.clear()
    status, body = await _live_refused(gw, gw.key, **{"x-workflow-tag": workflow})
    assert status == 402 and "spent" in body["error"]["message"] and workflow in body["error"]["message"], body
    assert _handshakes(gw.fake, "live.handshake") == []
    # Another workflow opens its session.
    async with _live_client(gw, gw.key, **{"x-workflow-tag": workflow + "-other"}).aio.live.connect(
        model=LIVE_MODEL, config={"response_modalities": ["TEXT"]}
    ):
        pass
    assert len(_handshakes(gw.fake, "live.handshake")) == 1


async def test_gemini_live_a_model_the_key_may_not_use_is_closed_at_setup(gw: Gateway) -> None:
    """The handshake names no model: a key limited to other models passes it, and its `setup` is refused (1008,
    as Google closes the socket), before the setup reaches the provider."""
    from google.genai import errors

    gw.fake.clear()
    client = _live_client(gw, gw.extra["gpt-only"], **{"x-execution-id": "live-setup-refused"})
    with pytest.raises(errors.APIError) as closed:
        async with client.aio.live.connect(model=LIVE_MODEL, config={"response_modalities": ["TEXT"]}) as session:
            await session.send_client_content(turns={"role": "user", "parts": [{"text": "Hi"}]})
            async for _ in session.receive():
                pass
    assert closed.value.code == 1008 and "may not use the model" in str(closed.value)
    assert not _handshakes(gw.fake, "live")  # no turn reached the provider


def test_a_webrtc_sideband_of_a_spent_key_is_refused_at_the_handshake(gw: Gateway) -> None:
    gw.fake.clear()
    url = gw.url.replace("http://", "ws://") + "/v1/realtime?call_id=rtc_abc123"
    for key, status, code in (
        (gw.extra["spent"], 402, "budget_exceeded"),
        ("tsk_nope", 401, None),
        (gw.extra["gpt-only"], None, None),
    ):
        headers = {"authorization": f"Bearer {key}"}
        if status is None:  # a key the sideband's session may use: opened
            with websockets.sync.client.connect(url, additional_headers=headers, open_timeout=10) as socket:
                assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
            continue
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            websockets.sync.client.connect(url, additional_headers=headers, open_timeout=10)
        assert refused.value.response.status_code == status
        error = json.loads(refused.value.response.body)["error"]  # OpenAI's error body
        assert code is None or error["code"] == code, error
    assert len(_handshakes(gw.fake, "realtime.handshake")) == 1  # only the admitted one


# --- a response cut before its end ---------------------------------------------------------------------------

AUDIO_OUT = 64.0  # gpt-realtime's audio output, USD per million tokens


def _cut_mid_response(gw: Gateway, key: str, exec_id: str) -> None:
    url = gw.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    headers = {"authorization": f"Bearer {key}", "x-execution-id": exec_id, "x-fake-chunk-delay-ms": "200"}
    socket = websockets.sync.client.connect(url, additional_headers=headers, open_timeout=10)
    assert json.loads(socket.recv(timeout=10))["type"] == "session.created"
    socket.send(json.dumps({"type": "response.create"}))
    while json.loads(socket.recv(timeout=10))["type"] != "response.output_audio.delta":
        pass
    socket.socket.close()  # no close frame: the client is gone


def test_a_cut_response_charges_its_reservation_to_the_budget(gw: Gateway, exec_id: str) -> None:
    """A client that cuts every response before `response.done` does not dodge its budget: the cut response costs
    its reservation (4,096 audio tokens at $64 per million: $0.262), and the $0.4 budget then cannot hold another."""
    _cut_mid_response(gw, gw.extra["cut"], exec_id)
    (row,) = gw.wait_records(1, execution_id=exec_id)
    reserved = 4_096 * AUDIO_OUT / 1e6
    assert row["status"] == 499 and row["cost_usd"] == pytest.approx(reserved, abs=1e-6)
    details = json.loads(row["details"])
    assert details["cut"] == "client_closed" and details["charged"] == "reservation"
    assert details["charged_usd"] == pytest.approx(reserved, abs=1e-6)
    assert "reservation" in row["error"]
    client = openai.OpenAI(
        base_url=f"{gw.url}/v1", api_key=gw.extra["cut"], max_retries=0, default_headers={"x-execution-id": exec_id}
    )
    with client.realtime.connect(model="gpt-realtime") as connection:
        assert connection.recv().type == "session.created"
        connection.response.create(event_id="evt_after_cut")
        error = connection.recv()
        assert error.type == "error" and error.error.code == "budget_exceeded", error
        assert error.error.event_id == "evt_after_cut"


async def test_a_cut_live_turn_is_charged_its_reservation(gw: Gateway, exec_id: str) -> None:
    client = _live_client(gw, gw.key, **{"x-execution-id": exec_id, "x-fake-chunk-delay-ms": "200"})
    async with client.aio.live.connect(model=LIVE_MODEL, config={"response_modalities": ["AUDIO"]}) as session:
        await session.send_client_content(turns={"role": "user", "parts": [{"text": "Hello there friend"}]})
        async for message in session.receive():
            if message.data:
                break  # the client leaves mid-turn
    (row,) = gw.wait_records(1, execution_id=exec_id)
    assert row["status"] == 499 and row["endpoint"] == "gemini.live" and row["model"] == LIVE_MODEL
    details = json.loads(row["details"])
    assert details["cut"] == "client_closed" and details["charged"] == "reservation"
    assert row["cost_usd"] > 0 and row["cost_usd"] == pytest.approx(details["charged_usd"], abs=1e-9)

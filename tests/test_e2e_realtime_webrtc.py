"""A WebRTC call through a real gateway: the SDP exchange (`POST /v1/realtime/calls`, multipart from the openai SDK
or a bare `application/sdp` offer) passes through with the key swap, answered as the provider answered (201, the
SDP answer, `Location` with the call id) and recorded free; the call's sideband socket is metered."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
import websockets.sync.client
from conftest import FakeProvider, Gateway, start_gateway, stop

# A browser's offer (trimmed): one audio section and the data channel the events go over.
OFFER = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef01234567\r\na=setup:actpass\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sctp-port:5000\r\n"
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("realtime-webrtc"), fake_provider)
    yield gateway
    stop(gateway.process)


def _calls_seen(fake: FakeProvider) -> list[dict]:
    return [r for r in fake.requests() if r["path"].endswith("/v1/realtime/calls")]


def test_the_sdk_creates_a_call_through_the_gateway_recorded_free(gw: Gateway, exec_id: str) -> None:
    gw.fake.clear()
    client = openai.OpenAI(
        base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0, default_headers={"x-execution-id": exec_id}
    )
    raw = client.realtime.calls.with_raw_response.create(
        sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime-mini"}
    )
    assert raw.status_code == 201
    assert raw.headers["content-type"].startswith("application/sdp")
    location = raw.headers["location"]
    assert location.startswith("/v1/realtime/calls/rtc_")
    answer = raw.http_response.text
    assert answer.startswith("v=0\r\n") and "a=mid:0" in answer and "a=mid:1" in answer
    assert raw.headers["x-tokensense-request-id"]
    (seen,) = _calls_seen(gw.fake)
    assert seen["headers"]["authorization"] == "Bearer sk-test-openai"  # the key swap
    assert "tsk_" not in json.dumps(seen["headers"])
    assert seen["headers"]["content-type"].startswith("multipart/form-data")
    (row,) = gw.wait_records(1, execution_id=exec_id)
    assert row["endpoint"] == "realtime.calls" and row["provider"] == "openai"
    assert row["status"] == 201 and row["cost_usd"] == 0

    # The call's server side opens its sideband through the gateway: the call's session, metered.
    call_id = location.rsplit("/", 1)[1]
    url = gw.url.replace("http://", "ws://") + f"/v1/realtime?call_id={call_id}"
    headers = {"authorization": f"Bearer {gw.key}", "x-execution-id": exec_id}
    with websockets.sync.client.connect(url, additional_headers=headers, open_timeout=10) as socket:
        created = json.loads(socket.recv(timeout=10))
        assert created["type"] == "session.created" and created["session"]["model"] == "gpt-realtime-mini"
        socket.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
        while json.loads(socket.recv(timeout=10))["type"] != "response.done":
            pass
    rows = gw.wait_records(2, execution_id=exec_id)
    assert [r["endpoint"] for r in rows] == ["realtime.calls", "realtime"]
    assert rows[1]["model"] == "gpt-realtime-mini" and rows[1]["cost_usd"] > 0

    # The call's actions pass through the same way (free).
    client.realtime.calls.hangup(call_id)
    hung = [r for r in gw.fake.requests() if r["path"].endswith(f"/v1/realtime/calls/{call_id}/hangup")]
    assert len(hung) == 1 and hung[0]["headers"]["authorization"] == "Bearer sk-test-openai"
    rows = gw.wait_records(3, execution_id=exec_id)
    assert (rows[2]["endpoint"], rows[2]["status"], rows[2]["cost_usd"]) == ("realtime.calls", 200, 0)
    with pytest.raises(openai.NotFoundError):  # the provider's own answer: that call is gone
        client.realtime.calls.hangup(call_id)


def test_a_bare_sdp_offer_passes_through_and_errors_come_back_as_the_provider_sent_them(
    gw: Gateway, exec_id: str
) -> None:
    gw.fake.clear()
    headers = {"authorization": f"Bearer {gw.key}", "content-type": "application/sdp", "x-execution-id": exec_id}
    answered = httpx.post(f"{gw.url}/v1/realtime/calls", content=OFFER, headers=headers, timeout=10)
    assert answered.status_code == 201, answered.text
    assert answered.headers["location"].startswith("/v1/realtime/calls/rtc_")
    assert answered.text.startswith("v=0")
    (seen,) = _calls_seen(gw.fake)
    assert seen["body"] == OFFER  # the offer went on unchanged
    bad = httpx.post(f"{gw.url}/v1/realtime/calls", content="not an offer", headers=headers, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "sdp"  # the provider's own error
    unknown = httpx.post(
        f"{gw.url}/v1/realtime/calls", content=OFFER, headers={**headers, "authorization": "Bearer tsk_nope"}
    )
    assert unknown.status_code == 401 and unknown.json()["error"]["type"] == "authentication_error"
    assert len(_calls_seen(gw.fake)) == 2  # the unknown key's offer went nowhere
    rows = gw.wait_records(3, execution_id=exec_id)
    assert [(r["endpoint"], r["status"], r["cost_usd"]) for r in rows] == [
        ("realtime.calls", 201, 0),
        ("realtime.calls", 400, 0),
        ("realtime.calls", 401, 0),  # refused by TokenSense, recorded as refused calls are
    ]

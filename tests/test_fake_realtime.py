"""The fake provider's Realtime API over WebSocket, judged by the openai SDK's realtime client pointed straight at it."""
# ruff: noqa: F811  (the fixtures imported from fakeprovider_fixture are used as test arguments)

from __future__ import annotations

import base64
import json

import openai
import pytest
import websockets
import websockets.sync.client
from fakeprovider_fixture import fake_provider, fake_provider_url, fake_requests  # noqa: F401

ONE_SECOND_PCM16 = base64.b64encode(bytes(2 * 24_000)).decode()


def _until_done(connection) -> tuple[list[str], object]:
    kinds = []
    for event in connection:
        kinds.append(event.type)
        if event.type == "response.done":
            return kinds, event.response
        if event.type == "error":
            raise AssertionError(event.error.message)
    raise AssertionError("the socket closed before response.done")


def test_two_responses_in_one_session_report_usage_by_modality(fake_provider: str) -> None:
    client = openai.OpenAI(base_url=f"{fake_provider}/v1", api_key="sk-test", max_retries=0)
    with client.realtime.connect(model="gpt-realtime") as connection:
        created = connection.recv()
        assert created.type == "session.created" and created.session.model == "gpt-realtime"
        connection.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Hello there friend"}]})
        connection.response.create()
        kinds, first = _until_done(connection)
        assert "response.output_audio.delta" in kinds and "response.output_audio_transcript.delta" in kinds
        assert first.status == "completed"
        usage = first.usage
        assert usage.input_token_details.text_tokens > 0 and usage.input_token_details.audio_tokens == 0
        assert usage.output_token_details.audio_tokens > 0 and usage.output_token_details.text_tokens > 0
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens

        connection.input_audio_buffer.append(audio=ONE_SECOND_PCM16)
        connection.input_audio_buffer.commit()
        connection.response.create(response={"output_modalities": ["text"]})
        kinds, second = _until_done(connection)
        assert "response.output_text.delta" in kinds and "response.output_audio.delta" not in kinds
        details = second.usage.input_token_details
        assert details.audio_tokens == first.usage.output_token_details.audio_tokens + 10  # answer + 1 s of audio
        assert details.cached_tokens == (first.usage.total_tokens // 64) * 64
        assert second.usage.output_token_details.audio_tokens == 0
    logged = [r for r in fake_requests(fake_provider) if r.get("transport") == "realtime"]
    assert len(logged) == 2 and logged[0]["query"] == {"model": "gpt-realtime"}


def test_handshake_needs_a_key_and_a_model(fake_provider: str) -> None:
    url = fake_provider.replace("http://", "ws://") + "/v1/realtime"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(f"{url}?model=gpt-realtime", open_timeout=5)
    assert refused.value.response.status_code == 401
    with pytest.raises(websockets.exceptions.InvalidStatus) as no_model:
        websockets.sync.client.connect(url, additional_headers={"Authorization": "Bearer sk-x"}, open_timeout=5)
    assert no_model.value.response.status_code == 400


def test_browser_subprotocol_key(fake_provider: str) -> None:
    url = fake_provider.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"
    with websockets.sync.client.connect(url, subprotocols=["realtime", "openai-insecure-api-key.sk-browser"],
                                        open_timeout=5) as socket:
        assert socket.subprotocol == "realtime"
        assert json.loads(socket.recv(timeout=5))["type"] == "session.created"

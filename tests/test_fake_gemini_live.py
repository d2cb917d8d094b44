"""The fake provider's Gemini Live API over WebSocket, judged by google-genai's live client pointed straight at it."""


from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from certs import self_signed, trusting
from fakeprovider_fixture import running_fake_provider
from google import genai
from google.genai import types

ONE_SECOND_PCM16 = bytes(2 * 16_000)


@pytest.fixture(scope="module")
def tls_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """google-genai opens the Live socket as wss:// whenever it has an API key: the fake serves TLS."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    with running_fake_provider("--tls-cert", str(cert), "--tls-key", str(key)) as url:
        yield url, cert


def live_client(tls_fake: tuple[str, Path]) -> genai.Client:
    url, cert = tls_fake
    return genai.Client(api_key="gm-test", http_options={"base_url": url, "async_client_args": {"ssl": trusting(cert)}})


async def _turn(session) -> tuple[list, types.UsageMetadata]:
    messages = []
    async for message in session.receive():
        messages.append(message)
        if message.server_content is not None and message.server_content.turn_complete:
            assert message.usage_metadata is not None
            return messages, message.usage_metadata
    raise AssertionError("the turn did not complete")


async def test_text_and_audio_turns_report_usage_by_modality(tls_fake: tuple[str, Path]) -> None:
    client = live_client(tls_fake)
    config = {"response_modalities": ["TEXT"]}
    async with client.aio.live.connect(model="gemini-live-2.5-flash-preview", config=config) as session:
        await session.send_client_content(turns={"role": "user", "parts": [{"text": "Hello there friend"}]})
        messages, first = await _turn(session)
        text = "".join(m.text or "" for m in messages if m.server_content and m.server_content.model_turn)
        assert text.startswith("Hello from gemini-live-2.5-flash-preview.")
        assert first.prompt_tokens_details[0].modality.name == "TEXT"
        assert first.total_token_count == first.prompt_token_count + first.response_token_count

        await session.send_realtime_input(audio=types.Blob(data=ONE_SECOND_PCM16, mime_type="audio/pcm;rate=16000"))
        await session.send_realtime_input(audio_stream_end=True)
        _, second = await _turn(session)
        prompt = {d.modality.name: d.token_count for d in second.prompt_tokens_details}
        assert prompt["AUDIO"] == 32 and prompt["TEXT"] > first.prompt_token_count
    async with httpx.AsyncClient(verify=trusting(tls_fake[1])) as http:
        log = (await http.get(f"{tls_fake[0]}/_fake/requests")).json()
    turns = [r for r in log if r.get("transport") == "live"]
    assert len(turns) == 2


async def test_audio_answer_is_counted_as_audio(tls_fake: tuple[str, Path]) -> None:
    client = live_client(tls_fake)
    async with client.aio.live.connect(model="gemini-live-2.5-flash-preview",
                                       config={"response_modalities": ["AUDIO"]}) as session:
        await session.send_client_content(turns={"role": "user", "parts": [{"text": "Speak to me"}]})
        messages, usage = await _turn(session)
        assert any(m.data for m in messages)
        assert usage.response_tokens_details[0].modality.name == "AUDIO" and usage.response_token_count > 0


async def test_handshake_needs_a_key(tls_fake: tuple[str, Path]) -> None:
    import websockets

    url = tls_fake[0].replace("https://", "wss://") + \
        "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(url, open_timeout=5, ssl=trusting(tls_fake[1])):
            pass
    assert refused.value.response.status_code == 401

"""End to end: images, speech and transcriptions with the openai SDK, through the gateway to the fake provider."""

from __future__ import annotations

import base64
import io
import json
import math
import wave
from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import PROVIDER_KEYS, FakeProvider, Gateway, start_gateway, stop

from tokensense.demo.fakeprovider.media import mp3_bytes, speech_audio

pytestmark = pytest.mark.e2e

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def client(gw: Gateway, exec_id: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0,
                         default_headers={"x-execution-id": exec_id, "x-workflow-tag": "wf-media"})


def forwarded(gw: Gateway, prefix: str) -> dict:
    """The last request the fake got under `prefix`, checked for keys: the provider's in, TokenSense's out."""
    req = gw.fake.last(prefix)
    assert gw.key not in json.dumps(req), "the TokenSense key must not reach the provider"
    return req


def one_record(gw: Gateway, exec_id: str) -> dict:
    [record] = gw.wait_records(execution_id=exec_id)
    assert record["workflow"] == "wf-media" and record["key_name"] == "e2e"
    return record


def wav_file(seconds: float, rate: int = 16_000) -> bytes:
    """A real mono 16-bit WAV of a 440 Hz tone."""
    frames = bytearray()
    for i in range(int(seconds * rate)):
        value = int(8000 * math.sin(2 * math.pi * 440 * i / rate))
        frames += value.to_bytes(2, "little", signed=True)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return buffer.getvalue()


def mp3_file(seconds: float) -> bytes:
    """A real MP3 of a tone, encoded with LAME (lameenc); MPEG frames built by hand when it is not installed."""
    try:
        import lameenc
    except ImportError:
        return mp3_bytes(seconds)
    rate = 16_000
    pcm = wav_file(seconds, rate)[44:]
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(32)
    encoder.set_in_sample_rate(rate)
    encoder.set_channels(1)
    encoder.set_quality(7)
    return bytes(encoder.encode(pcm) + encoder.flush())


# --- images ---------------------------------------------------------------------------------


def test_dall_e_3_passthrough_priced_per_image(gateway: Gateway, exec_id: str) -> None:
    raw = client(gateway, exec_id).images.with_raw_response.generate(
        model="dall-e-3", prompt="a red fox in the snow", size="1024x1792", quality="hd")
    images = raw.parse()
    assert images.data[0].url and images.data[0].revised_prompt == "a red fox in the snow"
    req = forwarded(gateway, "openai")
    assert req["path"] == "/openai/v1/images/generations"
    assert req["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    assert req["body"] == {"model": "dall-e-3", "prompt": "a red fox in the snow", "size": "1024x1792",
                           "quality": "hd"}
    record = one_record(gateway, exec_id)
    assert (record["provider"], record["model"], record["endpoint"], record["status"]) == \
        ("openai", "dall-e-3", "images.generations", 200)
    assert record["images"] == 1 and record["cost_usd"] == pytest.approx(0.12)
    assert float(raw.headers["x-tokensense-cost-usd"]) == pytest.approx(0.12)


def test_gpt_image_1_priced_by_its_tokens(gateway: Gateway, exec_id: str) -> None:
    images = client(gateway, exec_id).images.generate(model="gpt-image-1", prompt="three small words", n=2,
                                                      quality="low", size="1024x1024")
    assert len(images.data) == 2 and base64.b64decode(images.data[0].b64_json).startswith(PNG_MAGIC)
    assert images.usage is not None and images.usage.output_tokens == 2 * 272
    record = one_record(gateway, exec_id)
    assert record["images"] == 2 and record["input_tokens"] == 3 and record["output_tokens"] == 544
    # genai-prices: gpt-image-1 text input $5/1M, image output $40/1M.
    assert record["cost_usd"] == pytest.approx(3 * 5e-6 + 544 * 40e-6)


def test_imagen_translated_to_predict_and_back(gateway: Gateway, exec_id: str) -> None:
    images = client(gateway, exec_id).images.generate(model="imagen-4.0-generate-001", prompt="a lighthouse at dusk",
                                                      n=2, size="1792x1024")
    assert len(images.data) == 2
    assert base64.b64decode(images.data[1].b64_json).startswith(PNG_MAGIC)
    req = forwarded(gateway, "gemini")
    assert req["path"] == "/gemini/v1beta/models/imagen-4.0-generate-001:predict"
    assert req["headers"]["x-goog-api-key"] == PROVIDER_KEYS["gemini"]
    assert "authorization" not in req["headers"]
    assert req["body"] == {"instances": [{"prompt": "a lighthouse at dusk"}],
                           "parameters": {"sampleCount": 2, "aspectRatio": "16:9"}}
    record = one_record(gateway, exec_id)
    assert (record["provider"], record["model"], record["images"]) == ("gemini", "imagen-4.0-generate-001", 2)
    assert record["cost_usd"] == pytest.approx(0.08)


def test_fal_flux_translated_both_ways(gateway: Gateway, exec_id: str) -> None:
    images = client(gateway, exec_id).images.generate(model="fal-ai/flux/dev", prompt="a bowl of ramen", n=2,
                                                      size="1024x768", extra_body={"seed": 7})
    assert len(images.data) == 2 and all(d.url and "/_fake/images/" in d.url for d in images.data)
    assert httpx.get(images.data[0].url, timeout=10).content.startswith(PNG_MAGIC)
    req = forwarded(gateway, "fal")
    assert req["path"] == "/fal/fal-ai/flux/dev"
    assert req["headers"]["authorization"] == f"Key {PROVIDER_KEYS['fal']}"
    assert req["body"] == {"prompt": "a bowl of ramen", "num_images": 2, "image_size": "landscape_4_3", "seed": 7}
    record = one_record(gateway, exec_id)
    assert (record["provider"], record["model"], record["images"]) == ("fal", "fal-ai/flux/dev", 2)
    assert record["cost_usd"] == pytest.approx(2 * 0.025)  # 1024x768 rounds up to one megapixel each


def test_fal_custom_size_goes_as_width_and_height(gateway: Gateway, exec_id: str) -> None:
    client(gateway, exec_id).images.generate(model="fal-ai/flux/schnell", prompt="a kite", size="2048x1024")
    assert forwarded(gateway, "fal")["body"]["image_size"] == {"width": 2048, "height": 1024}
    record = one_record(gateway, exec_id)
    assert record["cost_usd"] == pytest.approx(2 * 0.003)  # two megapixels


def test_fal_error_answers_in_openai_shape(gateway: Gateway, exec_id: str) -> None:
    c = client(gateway, exec_id).with_options(default_headers={"x-execution-id": exec_id, "x-fake-status": "429",
                                                               "x-workflow-tag": "wf-media"})
    with pytest.raises(openai.RateLimitError) as e:
        c.images.generate(model="fal-ai/flux/dev", prompt="a cat")
    assert e.value.body["type"] == "rate_limit_error" and "429" in e.value.body["message"]
    record = one_record(gateway, exec_id)
    assert record["status"] == 429 and record["images"] == 0 and record["cost_usd"] == 0


# --- speech ---------------------------------------------------------------------------------


def test_speech_streamed_untouched_and_priced_per_character(gateway: Gateway, exec_id: str) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    with client(gateway, exec_id).audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=text) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        audio = b"".join(response.iter_bytes(1024))
    assert audio == speech_audio(text, "mp3")
    req = forwarded(gateway, "openai")
    assert req["path"] == "/openai/v1/audio/speech" and req["body"]["input"] == text
    assert req["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    record = one_record(gateway, exec_id)
    assert record["endpoint"] == "audio.speech" and record["stream"] == 1 and record["ttft_ms"] is not None
    assert record["characters"] == len(text)
    assert record["seconds"] == pytest.approx(9 * 0.4, abs=0.05)  # the fake speaks 0.4 s a word
    assert record["cost_usd"] == pytest.approx(len(text) * 15 / 1e6)


def test_gpt_4o_mini_tts_priced_per_minute_of_audio(gateway: Gateway, exec_id: str) -> None:
    text = "one two three four five"
    response = client(gateway, exec_id).audio.speech.create(model="gpt-4o-mini-tts", voice="coral", input=text,
                                                            response_format="wav")
    assert response.content == speech_audio(text, "wav")
    record = one_record(gateway, exec_id)
    assert record["characters"] == len(text) and record["seconds"] == pytest.approx(2.0, abs=0.01)
    assert record["cost_usd"] == pytest.approx(2.0 / 60 * 0.015, rel=0.01)


# --- transcriptions -------------------------------------------------------------------------


def test_transcription_of_a_wav_metered_by_verbose_json_duration(gateway: Gateway, exec_id: str) -> None:
    audio = wav_file(1.5)
    result = client(gateway, exec_id).audio.transcriptions.create(
        model="whisper-1", file=("hello.wav", audio, "audio/wav"), response_format="verbose_json")
    assert result.text and result.duration == pytest.approx(1.5)
    req = forwarded(gateway, "openai")
    assert req["path"] == "/openai/v1/audio/transcriptions"
    assert req["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    assert req["body"]["fields"]["model"] == "whisper-1"
    assert req["body"]["files"]["file"] == {"filename": "hello.wav", "size": len(audio), "content_type": "audio/wav"}
    record = one_record(gateway, exec_id)
    assert record["endpoint"] == "audio.transcriptions" and record["seconds"] == pytest.approx(1.5)
    assert record["cost_usd"] == pytest.approx(1.5 / 60 * 0.006)


def test_transcription_of_an_mp3_measured_from_the_upload(gateway: Gateway, exec_id: str) -> None:
    audio = mp3_file(3.0)
    text = client(gateway, exec_id).audio.transcriptions.create(
        model="whisper-1", file=("speech.mp3", audio, "audio/mpeg"), response_format="text")
    assert isinstance(text, str) and text.strip()
    assert forwarded(gateway, "openai")["body"]["files"]["file"]["size"] == len(audio)
    record = one_record(gateway, exec_id)  # `text` carries no usage: the gateway measured the MP3 with mutagen
    assert record["seconds"] == pytest.approx(3.0, abs=0.1)
    assert record["cost_usd"] == pytest.approx(record["seconds"] / 60 * 0.006)


def test_gpt_4o_transcribe_priced_by_audio_tokens(gateway: Gateway, exec_id: str) -> None:
    audio = wav_file(2.0)
    result = client(gateway, exec_id).audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("two.wav", audio, "audio/wav"))
    usage = result.usage
    assert usage is not None and usage.input_tokens == 20
    record = one_record(gateway, exec_id)
    assert record["input_tokens"] == 20 and record["output_tokens"] == usage.output_tokens
    assert record["seconds"] == pytest.approx(2.0)
    # genai-prices: gpt-4o-transcribe audio input $6/1M, text output $10/1M.
    assert record["cost_usd"] == pytest.approx(20 * 6e-6 + usage.output_tokens * 10e-6)


def test_provider_prefixed_model_is_rewritten_in_the_form(gateway: Gateway, exec_id: str) -> None:
    client(gateway, exec_id).audio.transcriptions.create(model="openai/whisper-1",
                                                         file=("a.wav", wav_file(0.5), "audio/wav"))
    assert forwarded(gateway, "openai")["body"]["fields"]["model"] == "whisper-1"
    assert one_record(gateway, exec_id)["model"] == "whisper-1"


# --- bad input ------------------------------------------------------------------------------


def _openai_error(e: openai.APIStatusError) -> dict:
    body = e.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body["error"]


def test_unknown_size_is_400_naming_size(gateway: Gateway, exec_id: str) -> None:
    before = len(gateway.fake.requests())
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway, exec_id).images.generate(model="dall-e-3", prompt="x", size="999x999")
    error = _openai_error(e.value)
    assert error["param"] == "size" and "1792x1024" in error["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway, exec_id).images.generate(model="imagen-4.0-generate-001", prompt="x", size="1536x1024")
    assert _openai_error(e.value)["param"] == "size"
    assert len(gateway.fake.requests()) == before, "nothing may reach the provider"


def test_response_format_the_provider_lacks_is_400(gateway: Gateway, exec_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway, exec_id).images.generate(model="imagen-4.0-generate-001", prompt="x", response_format="url")
    assert _openai_error(e.value)["param"] == "response_format" and "b64_json" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway, exec_id).images.generate(model="fal-ai/flux/dev", prompt="x", response_format="b64_json")
    assert _openai_error(e.value)["param"] == "response_format"


def test_model_not_served_on_the_endpoint_is_400(gateway: Gateway, exec_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway, exec_id).images.generate(model="gpt-4o-mini", prompt="x")
    assert _openai_error(e.value)["param"] == "model" and "gpt-4o-mini" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway, exec_id).audio.speech.create(model="whisper-1", voice="alloy", input="hi")
    assert _openai_error(e.value)["param"] == "model"


def test_missing_file_is_400(gateway: Gateway, exec_id: str) -> None:
    r = httpx.post(f"{gateway.url}/v1/audio/transcriptions", data={"model": "whisper-1"},
                   files={"other": ("x.txt", b"not audio", "text/plain")},
                   headers={"authorization": f"Bearer {gateway.key}", "x-execution-id": exec_id,
                            "x-workflow-tag": "wf-media"}, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "file" and r.json()["error"]["type"] == "invalid_request_error"
    assert one_record(gateway, exec_id)["status"] == 400


@pytest.fixture(scope="module")
def small_upload_gateway(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("upload"), fake_provider, extra_env={"TOKENSENSE_MAX_UPLOAD_MB": "1"})
    yield gw
    stop(gw.process)


def test_oversize_upload_is_413(small_upload_gateway: Gateway, exec_id: str) -> None:
    gw = small_upload_gateway
    before = len(gw.fake.requests())
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, exec_id).audio.transcriptions.create(model="whisper-1",
                                                        file=("long.wav", wav_file(40.0), "audio/wav"))
    assert e.value.status_code == 413
    error = _openai_error(e.value)
    assert error["type"] == "invalid_request_error" and "1 MB" in error["message"]
    assert len(gw.fake.requests()) == before
    # Under the limit passes.
    client(gw, exec_id).audio.transcriptions.create(model="whisper-1", file=("short.wav", wav_file(1.0), "audio/wav"))
    records = gw.wait_records(2, execution_id=exec_id)
    assert [r["status"] for r in records] == [413, 200]


def test_usage_report_shows_media_units(gateway: Gateway, exec_id: str) -> None:
    client(gateway, exec_id).images.generate(model="imagen-4.0-fast-generate-001", prompt="a tiny boat")
    one_record(gateway, exec_id)
    [row] = [r for r in json.loads(gateway.cli("usage", "--json").stdout) if r["execution_id"] == exec_id]
    assert row["images"] == 1 and row["cost_usd"] == pytest.approx(0.02)
    table = gateway.cli("usage", "--limit", "1").stdout
    assert "MEDIA" in table.splitlines()[0] and "1 image" in table

"""Media translation, multipart parsing, audio lengths and media prices, without a network."""

from __future__ import annotations

import io
import json
import math
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from mitmproxy.test import tflow

from addons.common import CALL, answer_error
from addons.media import MEDIA, Media, MediaCall
from tokensense.config import ModelPrice
from tokensense.core.errors import GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.demo.fakeprovider.media import mp3_bytes, speech_audio
from tokensense.gateway import media
from tokensense.gateway.call import CallContext
from tokensense.gateway.routing import Endpoint
from tokensense.gateway.runtime import Runtime
from tokensense.metering.media_prices import (
    DEFAULT_MEDIA_PRICES,
    MediaPriceError,
    MediaPriceTable,
    catalog_media_cost,
)
from tokensense.metering.pricing import PriceBook
from tokensense.providers import PROVIDERS, audio_format, fal_images, images_format
from tokensense.providers.gemini import images as gemini_images
from tokensense.providers.openai import OPENAI_ERRORS
from tokensense.settings import Settings


def wav(seconds: float, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x01\x00" * int(seconds * rate))
    return buffer.getvalue()


@contextmanager
def raises_400(param: str | None) -> Iterator[None]:
    """The block raises a 400 GatewayError naming `param`."""
    with pytest.raises(GatewayError) as e:
        yield
    assert e.value.status == 400 and e.value.param == param, e.value.message


# --- images: requests -----------------------------------------------------------------------


def test_imagen_request_maps_n_and_size_and_always_sends_sample_count() -> None:
    assert gemini_images.imagen_request({"model": "imagen-4.0-generate-001", "prompt": "a fox"}) == {
        "instances": [{"prompt": "a fox"}], "parameters": {"sampleCount": 1}}
    body = {"prompt": "a fox", "n": 3, "size": "1024x1792", "response_format": "b64_json", "quality": "auto",
            "user": "u-1", "personGeneration": "dont_allow"}
    assert gemini_images.imagen_request(body)["parameters"] == {"sampleCount": 3, "aspectRatio": "9:16",
                                                        "personGeneration": "dont_allow"}
    assert gemini_images.imagen_request({"prompt": "x", "size": "4:3"})["parameters"]["aspectRatio"] == "4:3"


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "x", "response_format": "url"}, "response_format"),
    ({"prompt": "x", "size": "1536x1024"}, "size"),
    ({"prompt": "x", "n": 5}, "n"),
    ({"prompt": "x", "n": "2"}, "n"),
    ({"prompt": "x", "quality": "hd"}, "quality"),
    ({"prompt": "x", "style": "vivid"}, "style"),
    ({"prompt": "x", "output_format": "webp"}, "output_format"),
    ({"prompt": "x", "stream": True}, "stream"),
    ({"n": 1}, "prompt"),
])
def test_imagen_request_refuses_what_imagen_lacks(body: dict, param: str) -> None:
    with raises_400(param):
        gemini_images.imagen_request(body)


def test_fal_request_maps_sizes_to_presets_or_width_and_height() -> None:
    assert fal_images.fal_request({"prompt": "ramen"}) == {"prompt": "ramen", "num_images": 1}
    assert fal_images.fal_request({"prompt": "r", "n": 4, "size": "1024x1024", "output_format": "png", "seed": 3}) == {
        "prompt": "r", "num_images": 4, "image_size": "square_hd", "output_format": "png", "seed": 3}
    assert fal_images.fal_request({"prompt": "r", "size": "1280x720"})["image_size"] == {"width": 1280, "height": 720}
    assert fal_images.fal_request({"prompt": "r", "size": "portrait_16_9"})["image_size"] == "portrait_16_9"
    assert "image_size" not in fal_images.fal_request({"prompt": "r", "size": "auto"})


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "x", "response_format": "b64_json"}, "response_format"),
    ({"prompt": "x", "size": "huge"}, "size"),
    ({"prompt": "x", "size": "0x512"}, "size"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "output_format": "webp"}, "output_format"),
    ({"prompt": "x", "quality": "high"}, "quality"),
])
def test_fal_request_refuses_what_fal_lacks(body: dict, param: str) -> None:
    with raises_400(param):
        fal_images.fal_request(body)


def test_openai_image_sizes_are_checked_for_the_models_tokensense_knows() -> None:
    images_format.check_openai_image_request("dall-e-3", {"size": "1792x1024"})
    images_format.check_openai_image_request("gpt-image-1.5", {"size": "2048x2048"})  # newer models: OpenAI decides
    with raises_400("size"):
        images_format.check_openai_image_request("dall-e-2", {"size": "1792x1024"})
    with raises_400("n"):
        images_format.check_openai_image_request("dall-e-2", {"n": -1})


def test_media_route_says_which_provider_serves_which_endpoint() -> None:
    assert media.media_route("images.generations", "gemini", "imagen-4.0-generate-001").upstream_path == \
        "/v1beta/models/imagen-4.0-generate-001:predict"
    assert media.media_route("images.generations", "fal", "fal-ai/flux/dev").upstream_path == "/fal-ai/flux/dev"
    assert media.media_route("audio.speech", "openai", "gpt-4o-mini-tts").kind == "speech"
    assert media.media_route("audio.transcriptions", "openai", "gpt-4o-mini-transcribe").kind == "transcription"
    for endpoint, provider, model in [("images.generations", "openai", "gpt-4o"), ("images.generations", "anthropic",
                                      "claude-sonnet-4-5"), ("audio.speech", "openai", "whisper-1"),
                                      ("audio.transcriptions", "gemini", "gemini-2.5-flash")]:
        with raises_400("model"):
            media.media_route(endpoint, provider, model)


# --- images: answers ------------------------------------------------------------------------


def test_imagen_answer_becomes_openai_b64_json_leaving_out_filtered_images() -> None:
    answer = {"predictions": [{"bytesBase64Encoded": "iVBORw0K", "mimeType": "image/png"},
                              {"raiFilteredReason": "filtered for safety"}]}
    translated = gemini_images.imagen_answer(answer, created=1700000000)
    assert translated.body == {"created": 1700000000, "data": [{"b64_json": "iVBORw0K"}], "output_format": "png"}


def test_fal_answer_becomes_openai_urls_with_pixel_sizes() -> None:
    answer = {"images": [{"url": "https://fal.media/a.jpg", "width": 1024, "height": 768, "content_type": "image/jpeg"},
                         {"url": "https://fal.media/b.jpg", "width": 1024, "height": 768}],
              "timings": {"inference": 1.2}, "seed": 42, "has_nsfw_concepts": [False, False], "prompt": "x"}
    translated = fal_images.fal_answer(answer, created=1)
    assert translated.body == {"created": 1, "data": [{"url": "https://fal.media/a.jpg"},
                                                      {"url": "https://fal.media/b.jpg"}]}
    assert translated.pixels == [(1024, 768), (1024, 768)]


def test_fal_errors_become_openai_errors_naming_the_field() -> None:
    body = json.dumps({"detail": [{"loc": ["body", "num_images"], "msg": "ensure this value is less than or equal to 4",
                                   "type": "value_error"}]}).encode()
    error = fal_images.fal_error(422, body)["error"]
    assert error == {"message": "num_images: ensure this value is less than or equal to 4",
                     "type": "invalid_request_error", "param": "num_images", "code": None}
    assert fal_images.fal_error(401, b'{"detail": "No key"}')["error"]["type"] == "authentication_error"
    assert fal_images.fal_error(502, b"<html>bad gateway</html>")["error"]["message"] == "<html>bad gateway</html>"


def test_image_usage_reads_gpt_image_tokens_and_counts_images() -> None:
    answer = {"data": [{"b64_json": "x"}, {"b64_json": "y"}],
              "usage": {"input_tokens": 12, "output_tokens": 2112, "total_tokens": 2124,
                        "input_tokens_details": {"text_tokens": 12, "image_tokens": 0}}}
    usage, image_in, image_out = images_format.image_usage(answer)
    assert usage == TokenUsage(input_tokens=12, output_tokens=2112, images=2, units={"output_image_tokens": 2112},
                               counters={"input_text_tokens": 12})
    assert (image_in, image_out) == (0, 2112)
    assert images_format.image_usage({"created": 1, "data": [{"url": "u"}]}) == (TokenUsage(images=1), 0, 0)


# --- multipart ------------------------------------------------------------------------------


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> tuple[bytes, str]:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: audio/wav\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_parse_form_gives_the_file_as_a_view_into_the_body() -> None:
    audio = wav(0.25) + b"\r\n--not-the-boundary\r\n"
    body, content_type = multipart([("model", None, b"whisper-1"), ("file", "a.wav", audio),
                                    ("response_format", None, b"verbose_json")])
    form = media.parse_form(body, content_type)
    assert form.fields == {"model": "whisper-1", "response_format": "verbose_json"}
    upload = form.files["file"]
    assert (upload.filename, upload.content_type) == ("a.wav", "audio/wav")
    assert upload.data.obj is body, "the upload must not be copied"
    assert upload.data == audio
    rewritten = media.replace_field(body, form, "model", "whisper-large")
    assert media.parse_form(rewritten, content_type).fields["model"] == "whisper-large"


def test_parse_form_rejects_what_is_not_a_form() -> None:
    with raises_400(None):
        media.parse_form(b'{"model": "whisper-1"}', "application/json")
    with raises_400(None):
        media.parse_form(b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\nunterminated",
                         "multipart/form-data; boundary=b")


# --- audio lengths --------------------------------------------------------------------------


def test_audio_seconds_reads_wav_and_mp3_in_place() -> None:
    assert media.audio_seconds(memoryview(wav(1.25))) == pytest.approx(1.25)
    assert media.audio_seconds(memoryview(mp3_bytes(2.0)), "x.mp3") == pytest.approx(2.0, abs=0.05)
    assert media.audio_seconds(b"definitely not audio") is None


def test_audio_seconds_of_a_lame_mp3() -> None:
    lameenc = pytest.importorskip("lameenc")
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(32)
    encoder.set_in_sample_rate(16000)
    encoder.set_channels(1)
    data = bytes(encoder.encode(b"\x00\x00" * 16000 * 2) + encoder.flush())
    assert media.audio_seconds(memoryview(data)) == pytest.approx(2.0, abs=0.1)
    assert media.mp3_seconds(data[:8192], len(data)) == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize("fmt", ["mp3", "wav", "pcm"])
def test_audio_meter_measures_streamed_speech(fmt: str) -> None:
    audio = speech_audio("one two three four five", fmt)  # the fake's speech: 2.0 s
    meter = media.AudioMeter(fmt, audio_format.PCM_BYTES_PER_SECOND)  # the OpenAI route's pcm rate
    for i in range(0, len(audio), 1000):
        meter.feed(audio[i:i + 1000])
    assert meter.seconds() == pytest.approx(2.0, abs=0.05)
    assert media.AudioMeter("opus").seconds() is None
    unknown_rate = media.AudioMeter("pcm")  # a provider that did not say its pcm rate: unmeasured, not guessed
    unknown_rate.feed(b"\x00" * 48_000)
    assert unknown_rate.seconds() is None


def test_wav_seconds_trusts_the_byte_count_not_the_streamed_header() -> None:
    data = bytearray(wav(1.0))
    data[40:44] = b"\xff\xff\xff\xff"  # a streamed WAV's unknown data size
    assert media.wav_seconds(bytes(data[:100]), len(data)) == pytest.approx(1.0)


def test_transcription_usage_from_each_answer_shape() -> None:
    verbose = json.dumps({"task": "transcribe", "duration": 2.48, "text": "hi",
                          "usage": {"type": "duration", "seconds": 3}}).encode()
    assert audio_format.transcription_usage(verbose, "application/json") == media.AudioUsage(2.48, 3.0)
    tokens = json.dumps({"text": "hi", "usage": {"type": "tokens", "input_tokens": 25, "output_tokens": 2,
                                                 "input_token_details": {"text_tokens": 5, "audio_tokens": 20}}})
    usage = audio_format.transcription_usage(tokens.encode(), "application/json")
    assert usage.tokens == TokenUsage(input_tokens=25, output_tokens=2, units={"input_audio_tokens": 20},
                                     counters={"input_text_tokens": 5}) and usage.audio_tokens == 20
    assert audio_format.transcription_usage(b"hello\n", "text/plain") == media.AudioUsage()
    assert media.billed_seconds(media.AudioUsage(2.48, 3.0), 2.5) == 2.48
    assert media.billed_seconds(media.AudioUsage(None, 3.0), 2.5) == 3.0
    assert media.billed_seconds(media.AudioUsage(), 2.5) == 2.5


def test_upload_limit() -> None:
    assert media.upload_limit_bytes(None) == 25 * 1024 * 1024
    assert media.upload_limit_bytes("0.5") == 512 * 1024
    for bad in ("lots", "0", "-3", "nan"):
        with pytest.raises(ValueError, match="TOKENSENSE_MAX_UPLOAD_MB"):
            media.upload_limit_bytes(bad)


# --- prices ---------------------------------------------------------------------------------


def test_image_prices_by_size_quality_and_megapixel() -> None:
    table = MediaPriceTable()
    assert table.image_cost("dall-e-3", count=1) == pytest.approx(0.04)
    assert table.image_cost("dall-e-3", count=2, size="1792x1024", quality="hd") == pytest.approx(0.24)
    assert table.image_cost("dall-e-2", count=1, size="256x256") == pytest.approx(0.016)
    assert table.image_cost("gpt-image-1", count=1, size="auto", quality="auto") == pytest.approx(0.042)
    assert table.image_cost("imagen-4.0-ultra-generate-001", count=3) == pytest.approx(0.18)
    # fal rounds each image up to whole megapixels of 1024x1024.
    assert table.image_cost("fal-ai/flux/dev", count=2, pixels=[(1024, 768), (1024, 1024)]) == pytest.approx(0.05)
    assert table.image_cost("fal-ai/flux/dev", count=1, pixels=[(2048, 1024)]) == pytest.approx(0.05)
    assert table.image_cost("fal-ai/flux/dev", count=1) == pytest.approx(0.025)  # no size in the answer: one MP
    assert table.image_cost("not-a-model", count=1) == 0.0


def test_speech_and_minute_prices() -> None:
    table = MediaPriceTable()
    assert table.speech_cost("tts-1", characters=1000, seconds=None) == pytest.approx(0.015)
    assert table.speech_cost("tts-1-hd", characters=1000, seconds=60) == pytest.approx(0.03)
    assert table.speech_cost("gpt-4o-mini-tts", characters=10, seconds=120) == pytest.approx(0.03)
    assert table.speech_cost("gpt-4o-mini-tts", characters=900, seconds=None) == pytest.approx(0.015)  # 15 chars/s
    assert table.minute_cost("whisper-1", 90) == pytest.approx(0.009)


def test_every_default_price_is_positive() -> None:
    for model, price in DEFAULT_MEDIA_PRICES.items():
        values = [price.per_image, price.per_megapixel, price.per_million_characters, price.per_minute,
                  price.per_thousand_pages, price.per_second, price.per_mtok_hour,
                  *price.per_image_by_size.values(), *price.per_second_by_size.values()]
        assert any(v for v in values if v is not None) and all(v is None or v > 0 for v in values), model


def test_config_overrides_and_declares_media_models() -> None:
    table = MediaPriceTable({"dall-e-3": {"1024x1024/standard": 0.05}, "fal-ai/flux-lora": {"per_megapixel": 0.035},
                             "whisper-1": {"per_minute": 0.01}})
    assert table.image_cost("dall-e-3", count=1) == pytest.approx(0.05)
    assert table.image_cost("dall-e-3", count=1, quality="hd") == pytest.approx(0.08)  # the rest is kept
    assert table.image_cost("fal-ai/flux-lora", count=1, pixels=[(512, 512)]) == pytest.approx(0.035)
    assert table.minute_cost("whisper-1", 60) == pytest.approx(0.01)
    assert table.declared == {"fal-ai/flux-lora"} and "fal-ai/flux-lora" in table.models


@pytest.mark.parametrize(("overrides", "message"), [
    ({"dall-e-3": {"per_kilo": 1.0}}, "unknown key 'per_kilo'"),
    ({"dall-e-3": {"per_image": -1}}, "per_image must be a price"),
    ({"dall-e-3": {"per_image": "cheap"}}, "per_image must be a price"),
])
def test_bad_config_prices_are_clear_errors(overrides: dict, message: str) -> None:
    with pytest.raises(MediaPriceError, match=message):
        MediaPriceTable(overrides)


def test_audio_tokens_are_priced_at_the_audio_rate() -> None:
    usage = TokenUsage(input_tokens=100, output_tokens=10, units={"input_audio_tokens": 100})
    book = PriceBook()
    assert book.token_cost("openai", "gpt-4o-transcribe", usage) == pytest.approx(100 * 6e-6 + 10 * 10e-6)
    declared = PriceBook({"gpt-4o-transcribe": ModelPrice(provider="openai", input_per_mtok=1, output_per_mtok=1)})
    assert declared.token_cost("openai", "gpt-4o-transcribe", usage) == pytest.approx(110e-6)  # its declared price


def test_catalog_prices_media_models_the_table_lacks() -> None:
    assert catalog_media_cost("openai", "tts-1", characters=1_000_000) == pytest.approx(15.0)
    assert catalog_media_cost("openai", "whisper-1", seconds=59.2) == pytest.approx(0.006)
    assert catalog_media_cost("openai", "no-such-model", seconds=60) == 0.0


# --- the addon's response side --------------------------------------------------------------


def media_flow(kind: str, model: str, **state: object):  # type: ignore[no-untyped-def]
    runtime = Runtime(Settings())
    addon = Media(runtime)
    flow = tflow.tflow(resp=True)
    call = CallContext(Endpoint.SPEECH if kind == "speech" else Endpoint.TRANSCRIPTIONS, OPENAI_ERRORS)
    call.provider, call.model = PROVIDERS["openai"], model
    flow.metadata[CALL] = call
    if kind in ("speech", "transcription"):
        state.setdefault("audio", audio_format.AUDIO)  # the OpenAI route's reader of its audio answers
    flow.metadata[MEDIA] = MediaCall(kind, **state)  # type: ignore[arg-type]
    return addon, flow, call


def run_stream(flow, data: bytes, size: int = 50) -> bytes:  # type: ignore[no-untyped-def]
    pieces = [flow.response.stream(data[i:i + size]) for i in range(0, len(data), size)]
    assert all(p != b"" for p in pieces)  # never an empty chunk: it would end the body
    out = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in pieces)
    return out + flow.response.stream(b"")


def test_binary_speech_is_streamed_untouched_and_metered() -> None:
    addon, flow, call = media_flow("speech", "tts-1", characters=23, audio_format="mp3")
    audio = speech_audio("one two three four five", "mp3")
    flow.response.headers["content-type"] = "audio/mpeg"
    addon.responseheaders(flow)
    assert run_stream(flow, audio) == audio
    assert call.stream and call.first_token is not None
    assert call.usage == TokenUsage(characters=23, seconds=call.usage.seconds)
    assert call.usage.seconds == pytest.approx(2.0, abs=0.05)
    assert call.media_cost == pytest.approx(23 * 15 / 1e6)


def test_speech_error_answers_are_not_streamed_or_charged() -> None:
    addon, flow, call = media_flow("speech", "tts-1", characters=23)
    flow.response.status_code = 400
    addon.responseheaders(flow)
    addon.response(flow)
    assert not flow.response.stream and call.usage is None and call.media_cost is None


def test_streamed_transcription_is_metered_from_its_done_event() -> None:
    addon, flow, call = media_flow("transcription", "gpt-4o-mini-transcribe",
                                   upload=media.FormFile("a.wav", "audio/wav", memoryview(wav(3.0))))
    flow.response.headers["content-type"] = "text/event-stream"
    events = (b'data: {"type":"transcript.text.delta","delta":"Hello"}\n\n'
              b'data: {"type":"transcript.text.done","text":"Hello","usage":{"type":"tokens","input_tokens":30,'
              b'"input_token_details":{"text_tokens":0,"audio_tokens":30},"output_tokens":1,"total_tokens":31}}\n\n')
    addon.responseheaders(flow)
    assert run_stream(flow, events, size=7) == events
    assert call.usage == TokenUsage(input_tokens=30, output_tokens=1, seconds=3.0, units={"input_audio_tokens": 30})
    book = PriceBook()
    assert call.media_cost is None  # priced by its tokens, the audio ones in `usage.units`
    total = book.token_cost("openai", "gpt-4o-mini-transcribe", call.usage)
    assert total == pytest.approx(30 * 3e-6 + 1 * 5e-6)  # audio in $3/1M, text out $5/1M


def test_transcription_without_usage_is_measured_from_the_upload() -> None:
    addon, flow, call = media_flow("transcription", "whisper-1",
                                   upload=media.FormFile("a.wav", "audio/wav", memoryview(wav(30.0))))
    flow.response.headers["content-type"] = "text/plain; charset=utf-8"
    flow.response.content = b"Hello there.\n"
    addon.responseheaders(flow)
    addon.response(flow)
    assert call.usage == TokenUsage(seconds=30.0)
    assert call.media_cost == pytest.approx(0.003)
    assert flow.metadata[MEDIA].upload is None, "the view into the upload is released once metered"
    assert math.isclose(call.usage.seconds, 30.0)


def test_invalid_media_prices_in_config_refuse_media_requests_with_the_reason() -> None:
    runtime = Runtime(Settings())
    runtime.config.media_prices = {"dall-e-3": {"per_kilo": 1.0}}
    addon = Media(runtime)
    addon.running()
    flow = tflow.tflow()
    flow.request.path = "/v1/images/generations"
    flow.request.content = b'{"model": "dall-e-3", "prompt": "x"}'
    call = CallContext(Endpoint.IMAGES, OPENAI_ERRORS)
    call.key = SimpleNamespace(project=None)  # type: ignore[assignment]
    flow.metadata[CALL] = call
    addon.request(flow)
    assert flow.response is not None and flow.response.status_code == 500
    assert "per_kilo" in json.loads(flow.response.content)["error"]["message"]


def test_answers_tokensense_made_itself_are_not_translated_as_provider_errors() -> None:
    """A policy refusal (402) on a fal request must keep its OpenAI-shaped message, not become "fal answered 402"."""
    addon, flow, call = media_flow("fal", "fal-ai/flux/dev")
    refusal = GatewayError(402, "The key `k` has spent its budget.", code="budget_exceeded")
    answer_error(flow, OPENAI_ERRORS, refusal)
    addon.responseheaders(flow)
    addon.response(flow)
    assert json.loads(flow.response.content)["error"]["message"] == "The key `k` has spent its budget."


def test_pages_seconds_and_storage_prices() -> None:
    table = MediaPriceTable({"sora-2": {"per_second/1280x720": 0.2}, "ocr-local": {"per_thousand_pages": 3}})
    assert table.page_cost("ocr-local", 1000) == pytest.approx(3.0)  # declared in config.toml
    assert table.page_cost("dall-e-2", 3) is None  # no page price: unpriced, not $0
    assert table.video_cost("sora-2", seconds=8, size="720x1280") == pytest.approx(0.8)
    assert table.video_cost("sora-2", seconds=8, size="1280x720") == pytest.approx(1.6)
    assert table.video_cost("sora-2", seconds=4, size=None) == pytest.approx(0.4)  # the default size
    assert table.video_cost("sora-2-pro", seconds=12, size="1792x1024") == pytest.approx(6.0)
    assert table.video_cost("sora-2", seconds=4, size="1792x1024") is None  # a size sora-2 has no price for
    assert table.storage_cost("gemini-2.5-flash", tokens=1_000_000, seconds=1800) == pytest.approx(0.5)
    assert table.storage_cost("gemini-2.5-pro", tokens=200_000, seconds=3600) == pytest.approx(0.9)
    # A chat model with a storage rate is no media model (the catalog prices its calls).
    assert "gemini-2.5-flash" not in table.models and "sora-2" in table.models
    assert table.get("sora-2-pro").source.startswith("https://platform.openai.com/docs/pricing")
    assert table.get("sora-2").source == "config.toml [media_prices]"  # overridden: the source says so

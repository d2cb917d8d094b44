"""The fake provider's long tail of billable paths, judged by the official SDKs pointed straight at it."""
# ruff: noqa: F811  (the fixtures imported from fakeprovider_fixture are used as test arguments)

from __future__ import annotations

import io

import anthropic
import httpx
import openai
from fakeprovider_fixture import fake_provider, fake_provider_url, fake_requests  # noqa: F401
from google import genai

from tokensense.demo.fakeprovider import media


def openai_client(url: str, prefix: str = "") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}{prefix}/v1", api_key="sk-test", max_retries=0)


def _png() -> io.BytesIO:
    image = io.BytesIO(media.png_bytes(64, 64))
    image.name = "input.png"
    return image


def _wav(seconds: float) -> io.BytesIO:
    audio = io.BytesIO(media.speech_audio("hello " * int(seconds * 2), "wav"))
    audio.name = "speech.wav"
    return audio


def test_image_edit_reports_image_input_tokens_and_variations_none(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    edited = client.images.edit(model="gpt-image-1", image=[_png(), _png()], prompt="Add a hat", size="1024x1024")
    assert edited.data[0].b64_json and edited.usage is not None
    assert edited.usage.input_tokens_details.image_tokens == 2 * 194
    assert edited.usage.output_tokens == 1056
    variation = client.images.create_variation(image=_png(), n=2, size="256x256")
    assert len(variation.data) == 2 and variation.usage is None


def test_translation_moderation_and_completions(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    assert client.audio.translations.create(model="whisper-1", file=_wav(2)).text
    verbose = client.audio.translations.create(model="whisper-1", file=_wav(2), response_format="verbose_json")
    assert verbose.duration > 0

    moderation = client.moderations.create(model="omni-moderation-latest", input=["hello", "graphic violence"])
    assert [r.flagged for r in moderation.results] == [False, True]
    assert moderation.results[1].categories.violence is True

    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 2)
    stream = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi there", stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2


def test_mistral_fim_and_ocr(fake_provider: str) -> None:
    headers = {"authorization": "Bearer mis-test"}
    fim = httpx.post(f"{fake_provider}/mistral/v1/fim/completions", headers=headers,
                     json={"model": "codestral-latest", "prompt": "def add(a, b):", "suffix": "return c"}).json()
    assert fim["object"] == "chat.completion" and fim["usage"]["prompt_tokens"] == 5
    assert fim["choices"][0]["message"]["content"]
    ocr = httpx.post(f"{fake_provider}/mistral/v1/ocr", headers={**headers, "x-fake-pages": "3"},
                     json={"model": "mistral-ocr-latest",
                           "document": {"type": "document_url", "document_url": "https://example.test/a.pdf"}}).json()
    assert ocr["usage_info"]["pages_processed"] == 3 and len(ocr["pages"]) == 3
    assert fake_requests(fake_provider)[-1]["prefix"] == "/mistral"


def test_video_job(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    video = client.videos.create(model="sora-2", prompt="A cat on a piano", seconds="8", size="1280x720")
    assert video.id.startswith("video_") and video.seconds == "8"
    done = client.videos.retrieve(video.id)
    assert done.status == "completed" and done.progress == 100
    assert client.videos.download_content(video.id).read().startswith(b"\x00\x00\x00\x18ftyp")
    waiting = client.videos.create(model="sora-2", prompt="Slow", extra_headers={"x-fake-batch-seconds": "3600"})
    assert client.videos.retrieve(waiting.id).status == "queued"


def test_gemini_context_cache(fake_provider: str) -> None:
    client = genai.Client(api_key="gm-test", http_options={"base_url": fake_provider})
    cache = client.caches.create(model="gemini-2.5-flash", config={
        "contents": [{"role": "user", "parts": [{"text": "a long document " * 50}]}], "ttl": "300s"})
    assert cache.name.startswith("cachedContents/") and cache.usage_metadata.total_token_count == 150
    assert (cache.expire_time - cache.create_time).total_seconds() == 300
    updated = client.caches.update(name=cache.name, config={"ttl": "600s"})
    assert (updated.expire_time - cache.create_time).total_seconds() >= 600
    client.caches.delete(name=cache.name)


def test_passthrough_resources(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    assert list(client.vector_stores.list()) == []
    assert client.vector_stores.create(name="docs").name == "docs"
    assert list(client.fine_tuning.jobs.list()) == []
    claude = anthropic.Anthropic(base_url=fake_provider, api_key="sk-ant-test", max_retries=0)
    uploaded = claude.beta.files.upload(file=("notes.txt", b"hello", "text/plain"))
    assert uploaded.id.startswith("file_") and uploaded.size_bytes == 5

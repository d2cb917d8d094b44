"""The fake provider, judged by the official SDKs pointed straight at it (no gateway)."""
# ruff: noqa: F811  (the fixtures imported from fakeprovider_fixture are used as test arguments)

from __future__ import annotations

import base64
import io
import json
import math
import struct
import wave

import anthropic
import httpx
import openai
import pytest
from fakeprovider_fixture import fake_provider, fake_provider_url, fake_requests, running_fake_provider  # noqa: F401
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import BaseModel

from tokensense.demo.fakeprovider import start
from tokensense.demo.fakeprovider.textgen import Controls, Conversation, example_from_schema, plan_answer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "days"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}},
}
ANTHROPIC_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "metric": {"type": "boolean"}},
        "required": ["location", "metric"],
    },
}


def openai_client(url: str, prefix: str = "") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}{prefix}/v1", api_key="sk-test", max_retries=0)


def anthropic_client(url: str, prefix: str = "") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{url}{prefix}", api_key="sk-ant-test", max_retries=0)


def gemini_client(url: str, prefix: str = "", api_version: str = "v1beta") -> genai.Client:
    """Keep the returned client in a variable: google-genai closes its HTTP client when the Client is collected."""
    return genai.Client(api_key="g-test", http_options=types.HttpOptions(base_url=f"{url}{prefix}", api_version=api_version))


def last_request(url: str) -> dict:
    return fake_requests(url)[-1]


# --- OpenAI format -------------------------------------------------------------------------------


def test_openai_chat_counts_words(fake_provider: str) -> None:
    completion = openai_client(fake_provider).chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris?"}]},
        ],
    )
    assert completion.choices[0].message.content == "Hello from gpt-4o."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 3 + 6
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 12
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    logged = last_request(fake_provider)
    assert logged["method"] == "POST"
    assert logged["path"] == "/v1/chat/completions"
    assert logged["prefix"] == ""
    assert logged["provider"] == "openai"
    assert logged["headers"]["authorization"] == "Bearer sk-test"
    assert logged["body"]["model"] == "gpt-4o"
    assert logged["body"]["messages"][0]["content"] == "You are terse."


def test_openai_reply_cache_and_reasoning_headers(fake_provider: str) -> None:
    completion = openai_client(fake_provider).chat.completions.create(
        model="o3",
        messages=[{"role": "user", "content": "one two"}],
        extra_headers={"x-fake-reply": "Exactly four words here", "x-fake-cached-tokens": "5", "x-fake-reasoning-tokens": "7"},
    )
    assert completion.choices[0].message.content == "Exactly four words here"
    usage = completion.usage
    assert usage.prompt_tokens == 5  # never below the cached part
    assert usage.prompt_tokens_details.cached_tokens == 5
    assert usage.completion_tokens_details.reasoning_tokens == 7
    assert usage.completion_tokens == 4 + 7


def test_openai_stream_without_usage(fake_provider: str) -> None:
    stream = openai_client(fake_provider).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from gpt-4o-mini."
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_stream_with_usage_and_chunk_count(fake_provider: str) -> None:
    stream = openai_client(fake_provider).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "count to five"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-chunks": "5", "x-fake-chunk-delay-ms": "5"},
    )
    chunks = list(stream)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content == ["Hello", " from", " gpt-4o.", " Hello", " from"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 3
    assert chunks[-1].usage.completion_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_openai_tool_call_then_tool_result(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    messages: list[dict] = [{"role": "user", "content": "Weather in Paris for two days?"}]
    completion = client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris", "days": 1}
    assert completion.usage.completion_tokens == len(call.function.arguments.split())

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny and 22 degrees"},
    ]
    followup = client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL])
    assert followup.choices[0].message.content == "The tool returned: Sunny and 22 degrees"
    assert followup.choices[0].finish_reason == "stop"
    assert followup.usage.prompt_tokens == 6 + 4  # user words + tool result words


def test_openai_parallel_tool_calls_and_tool_choice_none(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "both please"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        extra_headers={"x-fake-tool-calls": "3"},
    )
    names = [call.function.name for call in completion.choices[0].message.tool_calls]
    assert names == ["get_weather", "get_time", "get_weather"]
    assert len({call.id for call in completion.choices[0].message.tool_calls}) == 3

    plain = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "no tools"}], tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].message.content == "Hello from gpt-4o."


def test_openai_streamed_tool_calls_reassemble(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    with client.chat.completions.stream(model="gpt-4o", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris", "days": 1}

    # Two parallel calls, reassembled by hand from the raw deltas.
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "weather and time?"}],
            tools=[WEATHER_TOOL, TIME_TOOL],
            stream=True,
            extra_headers={"x-fake-tool-calls": "2"},
        )
    )
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                assert entry["arguments"] == ""  # the first delta carries id and name, no arguments yet
                entry["id"], entry["name"] = delta.id, delta.function.name
            entry["arguments"] += delta.function.arguments or ""
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert json.loads(calls[1]["arguments"]) == {"zone": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


class City(BaseModel):
    name: str
    population: int
    capital: bool
    districts: list[str]


def test_openai_json_modes(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    plain_json = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "json please"}], response_format={"type": "json_object"}
    )
    assert json.loads(plain_json.choices[0].message.content) == {"answer": "Hello from gpt-4o."}

    parsed = client.chat.completions.parse(model="gpt-4o", messages=[{"role": "user", "content": "a city"}], response_format=City)
    assert parsed.choices[0].message.parsed == City(name="Paris", population=1, capital=True, districts=[])


def test_openai_max_tokens_truncates_and_images_are_counted(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    short = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert short.choices[0].message.content == "Hello from"
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 2

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    seen = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": [{"type": "text", "text": "Compare these"}, image, image]}]
    )
    assert seen.choices[0].message.content == "Hello from gpt-4o. I saw 2 images."
    assert seen.usage.prompt_tokens == 2 + 2 * 10


def test_openai_embeddings_base64_and_float(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    result = client.embeddings.create(model="text-embedding-3-small", input=["hello world", "one two three"])
    assert [item.index for item in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 1536
    assert math.isclose(sum(v * v for v in result.data[0].embedding), 1.0, rel_tol=1e-3)
    assert result.usage.prompt_tokens == 5
    assert last_request(fake_provider)["body"]["encoding_format"] == "base64"  # the SDK's default

    floats = client.embeddings.create(model="text-embedding-3-small", input="hello world", dimensions=8, encoding_format="float")
    assert len(floats.data[0].embedding) == 8
    again = client.embeddings.create(model="text-embedding-3-small", input="hello world", dimensions=8, encoding_format="float")
    assert again.data[0].embedding == floats.data[0].embedding


def test_openai_images_generate(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    dalle = client.images.generate(model="dall-e-3", prompt="a lighthouse at dawn", size="1024x1792")
    assert dalle.data[0].revised_prompt == "a lighthouse at dawn"
    png = httpx.get(dalle.data[0].url).content
    assert png.startswith(b"\x89PNG")
    assert struct.unpack(">II", png[16:24]) == (1024, 1792)

    gpt_image = client.images.generate(model="gpt-image-1", prompt="a red square", n=2, quality="low")
    assert len(gpt_image.data) == 2
    assert base64.b64decode(gpt_image.data[0].b64_json).startswith(b"\x89PNG")
    assert gpt_image.usage.output_tokens == 2 * 272
    assert gpt_image.usage.input_tokens == 3


def test_openai_audio_speech_streams_audio(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello there world", response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        audio = b"".join(response.iter_bytes())
    with wave.open(io.BytesIO(audio)) as parsed:
        assert math.isclose(parsed.getnframes() / parsed.getframerate(), 3 * 0.4, abs_tol=0.01)

    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input="Hi") as response:
        assert response.headers["content-type"] == "audio/mpeg"
        mp3 = response.read()
    assert mp3[:2] == b"\xff\xfb"
    assert last_request(fake_provider)["body"]["input"] == "Hi"


def _wav(seconds: float, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x00" * int(seconds * rate))
    return buffer.getvalue()


def test_openai_audio_transcriptions(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    audio = _wav(2.0)
    verbose = client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", audio, "audio/wav"), response_format="verbose_json")
    assert verbose.text == "Hello from whisper-1."
    assert verbose.duration == 2.0
    logged = last_request(fake_provider)
    assert logged["body"]["fields"]["model"] == "whisper-1"
    assert logged["body"]["files"]["file"]["size"] == len(audio)

    plain = client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", audio, "audio/wav"))
    assert plain.text == "Hello from whisper-1."
    assert plain.usage.seconds == 2

    text = client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", audio, "audio/wav"), response_format="text", extra_headers={"x-fake-reply": "said this"}
    )
    assert text.strip() == "said this"


def test_openai_models_list(fake_provider: str) -> None:
    ids = [model.id for model in openai_client(fake_provider).models.list()]
    assert "gpt-4o" in ids and "grok-4" in ids


# --- Anthropic -----------------------------------------------------------------------------------


def test_anthropic_messages_create(fake_provider: str) -> None:
    message = anthropic_client(fake_provider).messages.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello Claude, how are you?"}],
        extra_headers={"x-fake-cached-tokens": "4", "x-fake-cache-write-tokens": "2"},
    )
    assert message.content[0].text == "Hello from claude-sonnet-4-6."
    assert message.stop_reason == "end_turn"
    assert message.id.startswith("msg_")
    assert message.usage.input_tokens == 2 + 5 - 4 - 2  # cache reads and writes excluded
    assert message.usage.cache_read_input_tokens == 4
    assert message.usage.cache_creation_input_tokens == 2
    assert message.usage.output_tokens == 3
    logged = last_request(fake_provider)
    assert logged["path"] == "/v1/messages"
    assert logged["provider"] == "anthropic"
    assert "anthropic-version" in logged["headers"]
    assert logged["body"]["system"] == "Be brief."


def test_anthropic_stream_final_message(fake_provider: str) -> None:
    with anthropic_client(fake_provider).messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "Stream me something nice"}],
        extra_headers={"x-fake-chunks": "4"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from claude-haiku-4-5. Hello"
    assert final.content[0].text == text
    assert final.usage.input_tokens == 4
    assert final.usage.output_tokens == 4
    assert final.stop_reason == "end_turn"


def test_anthropic_tool_use_plain_and_streamed(fake_provider: str) -> None:
    client = anthropic_client(fake_provider)
    messages: list[dict] = [{"role": "user", "content": "Weather in Paris?"}]
    message = client.messages.create(model="claude-sonnet-4-6", max_tokens=200, tools=[ANTHROPIC_WEATHER_TOOL], messages=messages)
    assert message.stop_reason == "tool_use"
    text_block, tool_block = message.content
    assert text_block.text == "Calling get_weather."
    assert tool_block.type == "tool_use" and tool_block.id.startswith("toolu_")
    assert tool_block.input == {"location": "Paris", "metric": True}
    assert message.usage.output_tokens == 2 + len(json.dumps(tool_block.input).split())

    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=200, tools=[ANTHROPIC_WEATHER_TOOL], messages=messages) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert streamed.content[1].input == {"location": "Paris", "metric": True}
    assert streamed.usage.output_tokens == message.usage.output_tokens

    messages += [
        {"role": "assistant", "content": [block.model_dump() for block in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_block.id, "content": "Sunny, 22C"}]},
    ]
    answer = client.messages.create(model="claude-sonnet-4-6", max_tokens=200, tools=[ANTHROPIC_WEATHER_TOOL], messages=messages)
    assert answer.content[0].text == "The tool returned: Sunny, 22C"
    assert answer.stop_reason == "end_turn"


def test_anthropic_overloaded_and_count_tokens(fake_provider: str) -> None:
    client = anthropic_client(fake_provider)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-status": "529"},
        )
    assert caught.value.status_code == 529
    assert isinstance(caught.value, anthropic.InternalServerError)
    assert caught.value.body["error"]["type"] == "overloaded_error"

    counted = client.messages.count_tokens(
        model="claude-sonnet-4-6", system="One two", messages=[{"role": "user", "content": "three four five"}]
    )
    assert counted.input_tokens == 5


# --- Gemini --------------------------------------------------------------------------------------


def test_gemini_generate_content(fake_provider: str) -> None:
    client = gemini_client(fake_provider)
    response = client.models.generate_content(
        model="gemini-2.5-flash",
        contents="Tell me a joke please",
        config=types.GenerateContentConfig(system_instruction="Be funny."),
    )
    assert response.text == "Hello from gemini-2.5-flash."
    usage = response.usage_metadata
    assert usage.prompt_token_count == 5 + 2
    assert usage.candidates_token_count == 3
    assert usage.total_token_count == 10
    assert response.model_version == "gemini-2.5-flash"
    assert response.response_id
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    logged = last_request(fake_provider)
    assert logged["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert logged["provider"] == "gemini"
    assert logged["headers"]["x-goog-api-key"] == "g-test"


def test_gemini_stream_and_headers(fake_provider: str) -> None:
    client = gemini_client(fake_provider)
    chunks = list(
        client.models.generate_content_stream(
            model="gemini-2.5-flash",
            contents="Stream please",
            config=types.GenerateContentConfig(
                http_options=types.HttpOptions(headers={"x-fake-cached-tokens": "1", "x-fake-reasoning-tokens": "4"})
            ),
        )
    )
    assert "".join(chunk.text for chunk in chunks) == "Hello from gemini-2.5-flash."
    assert len(chunks) == 3
    final = chunks[-1].usage_metadata
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert final.prompt_token_count == 2
    assert final.cached_content_token_count == 1
    assert final.thoughts_token_count == 4
    assert final.total_token_count == 2 + 3 + 4
    assert last_request(fake_provider)["query"] == {"alt": "sse"}


def test_gemini_function_call_and_response(fake_provider: str) -> None:
    client = gemini_client(fake_provider)
    tool = types.Tool(
        function_declarations=[
            types.FunctionDeclaration(
                name="get_weather",
                parameters=types.Schema(type="OBJECT", properties={"location": types.Schema(type="STRING")}, required=["location"]),
            )
        ]
    )
    config = types.GenerateContentConfig(tools=[tool])
    response = client.models.generate_content(model="gemini-2.5-flash", contents="Weather in Paris?", config=config)
    (call,) = response.function_calls
    assert call.name == "get_weather"
    assert call.args == {"location": "Paris"}
    assert response.usage_metadata.candidates_token_count == 2

    history = [
        types.Content(role="user", parts=[types.Part.from_text(text="Weather in Paris?")]),
        response.candidates[0].content,
        types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather", response={"result": "22C and sunny"})]),
    ]
    followup = client.models.generate_content(model="gemini-2.5-flash", contents=history, config=config)
    assert followup.text == "The tool returned: 22C and sunny"


class Joke(BaseModel):
    setup: str
    rating: int


def test_gemini_json_count_tokens_and_v1_path(fake_provider: str) -> None:
    client = gemini_client(fake_provider)
    structured = client.models.generate_content(
        model="gemini-2.5-flash",
        contents="a joke as JSON",
        config=types.GenerateContentConfig(response_mime_type="application/json", response_schema=Joke),
    )
    assert structured.parsed == Joke(setup="Paris", rating=1)

    counted = client.models.count_tokens(model="gemini-2.5-flash", contents="one two three four")
    assert counted.total_tokens == 4

    v1_client = gemini_client(fake_provider, api_version="v1")
    v1 = v1_client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert v1.text == "Hello from gemini-2.0-flash."
    assert last_request(fake_provider)["path"] == "/v1/models/gemini-2.0-flash:generateContent"


def test_gemini_embeddings_and_imagen(fake_provider: str) -> None:
    client = gemini_client(fake_provider)
    embedded = client.models.embed_content(
        model="gemini-embedding-001", contents=["hello", "world"], config=types.EmbedContentConfig(output_dimensionality=16)
    )
    assert [len(e.values) for e in embedded.embeddings] == [16, 16]

    # This google-genai release only calls Imagen on Vertex AI, so :predict is checked over plain HTTP.
    images = httpx.post(
        f"{fake_provider}/v1beta/models/imagen-4.0-generate-001:predict",
        headers={"x-goog-api-key": "g-test"},
        json={"instances": [{"prompt": "a fox"}], "parameters": {"sampleCount": 2, "aspectRatio": "16:9"}},
    )
    predictions = images.json()["predictions"]
    assert [p["mimeType"] for p in predictions] == ["image/png", "image/png"]
    png = base64.b64decode(predictions[0]["bytesBase64Encoded"])
    assert png.startswith(b"\x89PNG") and struct.unpack(">II", png[16:24]) == (1408, 768)


# --- fal -----------------------------------------------------------------------------------------


def test_fal_flux_sync_answer(fake_provider: str) -> None:
    response = httpx.post(
        f"{fake_provider}/fal-ai/flux/dev",
        headers={"Authorization": "Key fal-test"},
        json={"prompt": "a misty forest", "num_images": 2, "image_size": "landscape_16_9", "seed": 42},
    )
    assert response.status_code == 200
    body = response.json()
    assert [(image["width"], image["height"]) for image in body["images"]] == [(1024, 576), (1024, 576)]
    assert body["seed"] == 42
    assert body["has_nsfw_concepts"] == [False, False]
    assert body["prompt"] == "a misty forest"
    assert "inference" in body["timings"]
    assert httpx.get(body["images"][0]["url"]).content.startswith(b"\x89PNG")

    custom = httpx.post(
        f"{fake_provider}/fal-ai/flux/schnell",
        headers={"Authorization": "Key fal-test"},
        json={"prompt": "x", "image_size": {"width": 300, "height": 200}},
    )
    assert (custom.json()["images"][0]["width"], custom.json()["images"][0]["height"]) == (300, 200)

    missing_key = httpx.post(f"{fake_provider}/fal-ai/flux/dev", headers={"Authorization": "Bearer nope"}, json={"prompt": "x"})
    assert missing_key.status_code == 401
    assert "detail" in missing_key.json()


# --- control headers, auth, routing, request log -------------------------------------------------


def test_error_status_in_each_native_shape(fake_provider: str) -> None:
    with pytest.raises(openai.RateLimitError) as rate_limited:
        openai_client(fake_provider).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-fake-status": "429"}
        )
    assert rate_limited.value.response.headers["retry-after"] == "1"
    assert rate_limited.value.body["code"] == "rate_limit_exceeded"

    client = gemini_client(fake_provider)
    with pytest.raises(genai_errors.ServerError) as unavailable:
        client.models.generate_content(
            model="gemini-2.5-flash",
            contents="hi",
            config=types.GenerateContentConfig(http_options=types.HttpOptions(headers={"x-fake-status": "503"})),
        )
    assert unavailable.value.code == 503
    assert unavailable.value.status == "UNAVAILABLE"

    with pytest.raises(anthropic.RateLimitError):
        anthropic_client(fake_provider).messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "hi"}], extra_headers={"x-fake-status": "429"}
        )

    bad_header = httpx.post(f"{fake_provider}/v1/chat/completions", headers={"Authorization": "Bearer k", "x-fake-delay": "soon"}, json={})
    assert bad_header.status_code == 400
    assert "x-fake-delay" in bad_header.json()["error"]["message"]


def test_missing_keys_are_401_in_native_shapes(fake_provider: str) -> None:
    chat = httpx.post(f"{fake_provider}/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
    assert chat.status_code == 401 and set(chat.json()["error"]) == {"message", "type", "param", "code"}
    claude = httpx.post(f"{fake_provider}/v1/messages", json={"model": "claude-sonnet-4-6"})
    assert claude.status_code == 401 and claude.json()["type"] == "error" and claude.json()["error"]["type"] == "authentication_error"
    gemini = httpx.post(f"{fake_provider}/v1beta/models/gemini-2.5-flash:generateContent", json={"contents": []})
    assert gemini.status_code == 401 and gemini.json()["error"]["status"] == "UNAUTHENTICATED"
    by_query = httpx.post(
        f"{fake_provider}/v1beta/models/gemini-2.5-flash:generateContent?key=abc", json={"contents": [{"parts": [{"text": "hi"}]}]}
    )
    assert by_query.status_code == 200
    with_x_api_key = httpx.post(
        f"{fake_provider}/v1/messages",
        headers={"x-api-key": "k"},
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert with_x_api_key.status_code == 200
    no_max_tokens = httpx.post(
        f"{fake_provider}/v1/messages",
        headers={"x-api-key": "k"},
        json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert no_max_tokens.status_code == 400 and no_max_tokens.json()["error"]["type"] == "invalid_request_error"


def test_delay_is_honoured(fake_provider: str) -> None:
    completion = openai_client(fake_provider).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-fake-delay": "0.2"}
    )
    assert completion.choices[0].message.content == "Hello from gpt-4o."


def test_broken_connections(fake_provider: str) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.post(
            f"{fake_provider}/v1/chat/completions",
            headers={"Authorization": "Bearer k", "x-fake-broken": "1"},
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        )
    with pytest.raises(httpx.TransportError):
        with httpx.stream(
            "POST",
            f"{fake_provider}/v1/chat/completions",
            headers={"Authorization": "Bearer k", "x-fake-broken": "1"},
            json={"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        ) as response:
            response.read()
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{fake_provider}/v1/chat/completions", headers={"Authorization": "Bearer k", "x-fake-broken": "reset"}, json={})


def test_prefix_routing_and_request_log(fake_provider: str) -> None:
    openai_client(fake_provider, "/xai").chat.completions.create(model="grok-4", messages=[{"role": "user", "content": "hi"}])
    anthropic_client(fake_provider, "/claude").messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    google_client = gemini_client(fake_provider, "/google")
    google_client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    httpx.post(f"{fake_provider}/fal/fal-ai/flux/dev", headers={"Authorization": "Key k"}, json={"prompt": "x"})
    httpx.post(
        f"{fake_provider}/mistral/chat/completions",
        headers={"Authorization": "Bearer k"},
        json={"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]},
    )
    logged = fake_requests(fake_provider)
    assert [(entry["prefix"], entry["provider"]) for entry in logged] == [
        ("/xai", "openai"),
        ("/claude", "anthropic"),
        ("/google", "gemini"),
        ("/fal", "fal"),
        ("/mistral", "openai"),
    ]
    assert all(set(entry) >= {"method", "path", "prefix", "query", "headers", "body"} for entry in logged)
    assert httpx.delete(f"{fake_provider}/_fake/requests").json() == {"cleared": 5}
    assert fake_requests(fake_provider) == []


async def test_start_in_process() -> None:
    runner, url = await start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{url}/v1/embeddings", headers={"Authorization": "Bearer k"}, json={"model": "mistral-embed", "input": "a b c"}
            )
        assert response.status_code == 200
        assert len(response.json()["data"][0]["embedding"]) == 1024
        assert response.json()["usage"]["prompt_tokens"] == 3
    finally:
        await runner.cleanup()


def test_tls_cli(tmp_path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with running_fake_provider("--tls-cert", str(cert_file), "--tls-key", str(key_file)) as url:
        assert url.startswith("https://127.0.0.1:")
        assert httpx.get(f"{url}/_fake/health", verify=False).json() == {"status": "ok"}


# --- the deterministic core, without a server ----------------------------------------------------


def test_example_from_schema_follows_required_refs_and_types() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"$ref": "#/$defs/City"},
            "note": {"type": ["string", "null"]},
            "ignored": {"type": "string"},
        },
        "required": ["city", "note"],
        "$defs": {
            "City": {"type": "OBJECT", "properties": {"n": {"type": "NUMBER"}, "ok": {"type": "BOOLEAN"}, "tags": {"type": "ARRAY"}}}
        },
    }
    assert example_from_schema(schema) == {"city": {"n": 1, "ok": True, "tags": []}, "note": "Paris"}


def test_plan_answer_truncates_repeated_words() -> None:
    conv = Conversation(model="m", max_tokens=4)
    answer = plan_answer(conv, Controls(chunks=6))
    assert answer.text == "Hello from m. Hello"
    assert answer.truncated and answer.output_tokens == 4

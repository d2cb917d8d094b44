"""The openai SDK talking to Claude and Gemini models through the gateway's translation, end to end."""

from __future__ import annotations

import base64
import json

import openai
import pytest
from conftest import Gateway

pytestmark = pytest.mark.e2e

MODELS = [("claude-sonnet-4-6", "anthropic"), ("gemini-2.5-flash", "gemini")]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# A 1x1 PNG.
PIXEL = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0f01f0005000"
    "1ff5c2e3a9b0000000049454e44ae426082")).decode()


def client(gw: Gateway, exec_id: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0,
                         default_headers={"x-execution-id": exec_id, "x-workflow-tag": "translated", **headers})


def one_record(gw: Gateway, exec_id: str, provider: str) -> dict:
    [record] = gw.wait_records(execution_id=exec_id)
    assert record["provider"] == provider and record["endpoint"] == "chat.completions"
    assert record["cost_usd"] > 0 and record["workflow"] == "translated"
    return record


@pytest.mark.parametrize(("model", "provider"), MODELS)
def test_plain_chat(gateway: Gateway, exec_id: str, model: str, provider: str) -> None:
    completion = client(gateway, exec_id).chat.completions.create(
        model=model, messages=[{"role": "system", "content": "be brief"},
                               {"role": "user", "content": "hello there model"}])
    assert completion.object == "chat.completion" and completion.model == model
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 5  # "be brief" + "hello there model"
    req = gateway.fake.last(provider)
    assert gateway.key not in str(req)
    if provider == "anthropic":
        assert req["path"].endswith("/v1/messages") and req["body"]["system"]
    else:
        assert req["path"].endswith(f"/v1beta/models/{model}:generateContent") and req["body"]["systemInstruction"]
    record = one_record(gateway, exec_id, provider)
    assert record["input_tokens"] == 5 and record["output_tokens"] == completion.usage.completion_tokens


@pytest.mark.parametrize(("model", "provider"), MODELS)
def test_streamed_chat(gateway: Gateway, exec_id: str, model: str, provider: str) -> None:
    chunks = list(client(gateway, exec_id).chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream something nice"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].prompt_tokens == 3
    record = one_record(gateway, exec_id, provider)
    assert record["stream"] == 1 and record["input_tokens"] == 3 and record["ttft_ms"] is not None


@pytest.mark.parametrize(("model", "provider"), MODELS)
def test_streamed_chat_without_usage_sends_no_usage_chunk(gateway: Gateway, exec_id: str, model: str,
                                                          provider: str) -> None:
    chunks = list(client(gateway, exec_id).chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": "hi"}]))
    assert all(c.usage is None for c in chunks)
    assert one_record(gateway, exec_id, provider)["input_tokens"] == 1


@pytest.mark.parametrize(("model", "provider"), MODELS)
def test_tool_round_trip(gateway: Gateway, exec_id: str, model: str, provider: str) -> None:
    c = client(gateway, exec_id)
    messages = [{"role": "user", "content": "what is the weather in Paris"}]
    first = c.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [tool_call] = choice.message.tool_calls
    assert tool_call.function.name == "get_weather" and json.loads(tool_call.function.arguments) == {"city": "Paris"}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": tool_call.id, "content": "sunny and 22C"}]
    final = c.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert "sunny and 22C" in final.choices[0].message.content
    records = gateway.wait_records(count=2, execution_id=exec_id)
    assert len(records) == 2 and all(r["cost_usd"] > 0 for r in records)


@pytest.mark.parametrize(("model", "provider"), MODELS)
def test_streamed_tool_calls_reassemble_to_the_unstreamed_answer(gateway: Gateway, exec_id: str, model: str,
                                                                 provider: str) -> None:
    c = client(gateway, exec_id, **{"x-fake-tool-calls": "2"})
    messages = [{"role": "user", "content": "weather in two places"}]
    plain = c.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    calls: dict[int, dict] = {}
    finish = None
    for chunk in c.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], stream=True):
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = delta.id or entry["id"]
            if delta.function and delta.function.name:
                entry["name"] += delta.function.name
            if delta.function and delta.function.arguments:
                entry["arguments"] += delta.function.arguments
    assert finish == "tool_calls" and len(calls) == 2
    streamed = [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)]
    unstreamed = [(t.function.name, json.loads(t.function.arguments)) for t in plain.choices[0].message.tool_calls]
    assert streamed == unstreamed
    assert all(calls[i]["id"] for i in calls)
    assert len(gateway.wait_records(count=2, execution_id=exec_id)) == 2


@pytest.mark.parametrize(("model", "provider"), MODELS)
def test_json_mode(gateway: Gateway, exec_id: str, model: str, provider: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    completion = client(gateway, exec_id).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "a city as json"}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    assert json.loads(completion.choices[0].message.content) == {"city": "Paris"}
    one_record(gateway, exec_id, provider)


@pytest.mark.parametrize(("model", "provider"), MODELS)
def test_image_input(gateway: Gateway, exec_id: str, model: str, provider: str) -> None:
    completion = client(gateway, exec_id).chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]}])
    assert "1 image" in completion.choices[0].message.content
    req = gateway.fake.last(provider)
    if provider == "anthropic":
        block = req["body"]["messages"][0]["content"][1]
        assert block["type"] == "image" and block["source"]["type"] == "base64"
    else:
        assert req["body"]["contents"][0]["parts"][1]["inlineData"]["mimeType"] == "image/png"
    assert one_record(gateway, exec_id, provider)["input_tokens"] == 15  # 5 words + 10 for the image


@pytest.mark.parametrize(("model", "provider", "status", "error_class"), [
    ("claude-sonnet-4-6", "anthropic", 529, openai.InternalServerError),
    ("gemini-2.5-flash", "gemini", 429, openai.RateLimitError),
])
def test_provider_error_keeps_its_status(gateway: Gateway, exec_id: str, model: str, provider: str, status: int,
                                         error_class: type) -> None:
    with pytest.raises(error_class) as e:
        client(gateway, exec_id, **{"x-fake-status": str(status)}).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == status
    if status == 529:
        assert e.value.body["code"] == "overloaded_error"
    assert e.value.response.headers["x-tokensense-attempts"] == "2"  # retried once ([routing] retries = 1)
    records = gateway.wait_records(2, execution_id=exec_id)
    assert [(r["attempt"], r["status"]) for r in records] == [(1, status), (2, status)] and all(r["error"] for r in records)


def test_unmappable_parameter_is_a_400_naming_it(gateway: Gateway, exec_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway, exec_id).chat.completions.create(
            model="claude-sonnet-4-6", n=2, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "n"

"""OpenAI chat completions ⇄ Anthropic Messages translation, on recorded Anthropic payloads."""

from __future__ import annotations

import collections.abc
import copy
import json
import types
import typing
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx  # the installed anthropic and openai SDKs are built on httpx2
import openai
import pydantic
import pytest
import typing_extensions
from anthropic.types import message_create_params
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tokensense.providers.anthropic import chat as tr
from tokensense.providers.chat_format import decode_tool_call_id
from tokensense.providers.translation import TranslationError

# Older models in the mapping tables are deprecated in the installed SDK's model list.
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
MODEL = "claude-sonnet-4-6"
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
PDF_B64 = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a location.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Current weather for a location.",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def sse_events(name: str) -> list[dict]:
    """The `data:` payloads of a recorded SSE stream, in order."""
    text = (FIXTURES / name).read_text().replace("\r\n", "\n")
    events = []
    for block in text.split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.splitlines() if line.startswith("data:"))
        if data:
            events.append(json.loads(data))
    return events


def translate_stream(events: list[dict], *, include_usage: bool, model: str = MODEL) -> tuple[list[dict], tr.ChatStreamTranslator]:
    translator = tr.ChatStreamTranslator(model=model, include_usage=include_usage)
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    chunks.extend(translator.finish())
    return chunks, translator


def reassemble(chunks: list[dict]) -> Any:
    """What the openai SDK builds from the chunks (its own stream accumulator)."""
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion()


def message_summary(message: Any) -> dict:
    """Content, tool calls (arguments parsed) and finish reason, comparable between stream and non-stream."""
    return {
        "content": message.content or None,
        "tool_calls": [
            (call.id, call.function.name, json.loads(call.function.arguments)) for call in message.tool_calls or []
        ],
    }


def openai_request(**fields: Any) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}


# --- checking request bodies against the anthropic SDK's own types ---------------------------


def check_typed(value: Any, tp: Any, path: str = "body") -> None:
    """Raise AssertionError unless `value` fits the SDK's TypedDict annotation `tp`, unknown keys included."""
    origin = typing.get_origin(tp)
    if tp in (object, typing.Any):
        return
    if origin in (typing.Required, typing.NotRequired, typing.Annotated):
        return check_typed(value, typing.get_args(tp)[0], path)
    if typing_extensions.is_typeddict(tp):
        assert isinstance(value, dict), f"{path}: expected an object for {tp.__name__}"
        hints = typing.get_type_hints(tp)
        unknown = set(value) - set(hints)
        assert not unknown, f"{path}: {sorted(unknown)} are not fields of {tp.__name__}"
        missing = set(tp.__required_keys__) - set(value)
        assert not missing, f"{path}: {sorted(missing)} are required by {tp.__name__}"
        for key, item in value.items():
            check_typed(item, hints[key], f"{path}.{key}")
        return
    if origin in (typing.Union, types.UnionType):
        errors = []
        for member in typing.get_args(tp):
            try:
                return check_typed(value, member, path)
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{path}: fits no member of the union: {errors}")
    if origin is typing.Literal:
        assert value in typing.get_args(tp), f"{path}: {value!r} not in {typing.get_args(tp)}"
        return
    if origin in (dict, collections.abc.Mapping):
        assert isinstance(value, dict), f"{path}: expected an object"
        return
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence) or getattr(origin, "__name__", "") == "SequenceNotStr":
        assert isinstance(value, list), f"{path}: expected a list"
        for i, item in enumerate(value):
            check_typed(item, typing.get_args(tp)[0], f"{path}[{i}]")
        return
    if tp is type(None):
        assert value is None, f"{path}: expected null"
        return
    if tp is float:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path}: expected a number"
        return
    if isinstance(tp, type) and tp in (str, int, bool):
        assert isinstance(value, tp) and (tp is bool or not isinstance(value, bool)), f"{path}: expected {tp.__name__}"
        return
    if isinstance(tp, typing.TypeAliasType):
        return check_typed(value, tp.__value__, path)
    raise AssertionError(f"{path}: cannot check against {tp!r}")


# The installed SDK is pinned to API version 2026-10-21, which dropped the
# sampling parameters; models before Claude 4.7 still take them on the API
# versions the gateway sends, so they are checked apart and sent as extra_body.
SAMPLING_PARAMS = ("temperature", "top_p", "top_k")


def sent_by_anthropic_sdk(body: dict) -> dict:
    """The JSON the official anthropic SDK sends for `client.messages.create(**body)`."""
    captured: dict = {}

    def answer(request: httpx.Request) -> httpx.Response:
        captured.update(json.loads(request.content))
        if captured.get("stream"):
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=(FIXTURES / "stream_text.sse").read_bytes()
            )
        return httpx.Response(200, json=load("message_text.json"))

    client = anthropic.Anthropic(
        api_key="sk-ant-test", max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(answer))
    )
    params = copy.deepcopy(body)
    sampling = {key: params.pop(key) for key in SAMPLING_PARAMS if key in params}
    # An explicit timeout skips the SDK's client-side refusal of long unstreamed requests.
    result = client.messages.create(**params, extra_body=sampling or None, timeout=60)
    if body.get("stream"):
        list(result)
    return captured


def assert_valid_anthropic_request(body: dict) -> None:
    params = (
        message_create_params.MessageCreateParamsStreaming
        if body.get("stream")
        else message_create_params.MessageCreateParamsNonStreaming
    )
    check_typed({k: v for k, v in body.items() if k not in SAMPLING_PARAMS}, params)
    assert all(isinstance(body[key], (int, float)) for key in SAMPLING_PARAMS if key in body)
    assert sent_by_anthropic_sdk(body) == body


# --- requests --------------------------------------------------------------------------------

BASE_EXPECTED = {"model": MODEL, "max_tokens": tr.DEFAULT_MAX_TOKENS, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}

REQUEST_CASES = [
    ("defaults", {}, {}),
    ("max_tokens", {"max_tokens": 500}, {"max_tokens": 500}),
    ("max_completion_tokens wins", {"max_tokens": 500, "max_completion_tokens": 700}, {"max_tokens": 700}),
    ("stream", {"stream": False}, {"stream": False}),
    ("sampling on Claude 4.6", {"temperature": 0.3, "top_p": 0.9, "top_k": 40}, {"temperature": 0.3, "top_p": 0.9, "top_k": 40}),
    ("stop string", {"stop": "END"}, {"stop_sequences": ["END"]}),
    ("stop list", {"stop": ["END", "###"]}, {"stop_sequences": ["END", "###"]}),
    ("OpenAI's default sampling is not sent", {"temperature": 1, "top_p": 1}, {}),
    (
        "sampling on a model before Claude 4.7",
        {"model": "claude-haiku-4-5", "temperature": 0, "top_p": 0.5},
        {"model": "claude-haiku-4-5", "temperature": 0, "top_p": 0.5},
    ),
    ("nulls are absent", {"temperature": None, "tools": None, "stop": None}, {}),
    (
        "defaults and no-effect hints",
        {
            "n": 1,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "logprobs": False,
            "store": False,
            "parallel_tool_calls": True,
            "prompt_cache_key": "tenant-42",
            "metadata": {"run": "nightly"},
            "stream_options": {"include_usage": True},
        },
        {},
    ),
    (
        "tools and auto",
        {"tools": [WEATHER_TOOL], "tool_choice": "auto"},
        {"tools": [WEATHER_TOOL_ANTHROPIC], "tool_choice": {"type": "auto"}},
    ),
    (
        "tool_choice none",
        {"tools": [WEATHER_TOOL], "tool_choice": "none"},
        {"tools": [WEATHER_TOOL_ANTHROPIC], "tool_choice": {"type": "none"}},
    ),
    (
        "tool_choice required",
        {"tools": [WEATHER_TOOL], "tool_choice": "required"},
        {"tools": [WEATHER_TOOL_ANTHROPIC], "tool_choice": {"type": "any"}},
    ),
    (
        "tool_choice named",
        {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {"tools": [WEATHER_TOOL_ANTHROPIC], "tool_choice": {"type": "tool", "name": "get_weather"}},
    ),
    (
        "parallel_tool_calls false is disable_parallel_tool_use true",
        {"tools": [WEATHER_TOOL], "parallel_tool_calls": False},
        {"tools": [WEATHER_TOOL_ANTHROPIC], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
    ),
    (
        "parallel_tool_calls false with required",
        {"tools": [WEATHER_TOOL], "tool_choice": "required", "parallel_tool_calls": False},
        {"tools": [WEATHER_TOOL_ANTHROPIC], "tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
    ),
    (
        "parallel_tool_calls false with none",
        {"tools": [WEATHER_TOOL], "tool_choice": "none", "parallel_tool_calls": False},
        {"tools": [WEATHER_TOOL_ANTHROPIC], "tool_choice": {"type": "none"}},
    ),
    ("parallel_tool_calls false without tools", {"parallel_tool_calls": False}, {}),
    (
        "strict tool, no parameters",
        {"tools": [{"type": "function", "function": {"name": "ping", "strict": True}}]},
        {"tools": [{"name": "ping", "input_schema": {"type": "object", "properties": {}}, "strict": True}]},
    ),
    ("response_format text", {"response_format": {"type": "text"}}, {}),
    (
        "response_format json_schema is structured output",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "city",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                        "additionalProperties": False,
                    },
                },
            }
        },
        {
            "output_config": {
                "format": {
                    "type": "json_schema",
                    "schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                        "additionalProperties": False,
                    },
                }
            }
        },
    ),
    (
        "response_format json_object is a system instruction",
        {"response_format": {"type": "json_object"}},
        {"system": [{"type": "text", "text": tr.JSON_OBJECT_INSTRUCTION}]},
    ),
    (
        "reasoning_effort high before Claude 4.6: budget, max_tokens above it",
        {"model": "claude-sonnet-4-5", "reasoning_effort": "high"},
        {
            "model": "claude-sonnet-4-5",
            "thinking": {"type": "enabled", "budget_tokens": 24576},
            "max_tokens": 24576 + tr.DEFAULT_MAX_TOKENS,
        },
    ),
    (
        "reasoning_effort low with a small cap: cap added to the budget",
        {"model": "claude-opus-4-5-20251101", "reasoning_effort": "low", "max_completion_tokens": 512},
        {"model": "claude-opus-4-5-20251101", "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 1024 + 512},
    ),
    (
        "reasoning_effort medium with room to spare keeps the cap",
        {"model": "claude-3-7-sonnet-20250219", "reasoning_effort": "medium", "max_tokens": 20000},
        {"model": "claude-3-7-sonnet-20250219", "thinking": {"type": "enabled", "budget_tokens": 8192}, "max_tokens": 20000},
    ),
    (
        "reasoning_effort on Claude 4.7 is adaptive thinking with effort",
        {"model": "claude-opus-4-7", "reasoning_effort": "medium"},
        {
            "model": "claude-opus-4-7",
            "thinking": {"type": "adaptive"},
            "output_config": {"effort": "medium"},
            "max_tokens": 8192 + tr.DEFAULT_MAX_TOKENS,
        },
    ),
    (
        "reasoning_effort minimal on Claude 4.6 is effort low",
        {"model": "claude-sonnet-4-6", "reasoning_effort": "minimal", "max_tokens": 2000},
        {"model": "claude-sonnet-4-6", "thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}, "max_tokens": 2000},
    ),
    ("reasoning_effort none", {"reasoning_effort": "none"}, {"thinking": {"type": "disabled"}}),
    ("user is metadata.user_id", {"user": "user-1"}, {"metadata": {"user_id": "user-1"}}),
    (
        "safety_identifier wins over user",
        {"user": "user-1", "safety_identifier": "hash-9"},
        {"metadata": {"user_id": "hash-9"}},
    ),
    ("service_tier default", {"service_tier": "default"}, {"service_tier": "standard_only"}),
    ("service_tier auto", {"service_tier": "auto"}, {"service_tier": "auto"}),
    (
        "content parts: jpg data URL, PDF file, text",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG_1PX}"}},
                        {"type": "file", "file": {"filename": "report.pdf", "file_data": f"data:application/pdf;base64,{PDF_B64}"}},
                        {"type": "text", "text": "Summarise both."},
                    ],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG_1PX}},
                        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64}},
                        {"type": "text", "text": "Summarise both."},
                    ],
                }
            ]
        },
    ),
    (
        "consecutive user messages merge; a final assistant message is a prefill",
        {
            "messages": [
                {"role": "user", "content": "Name a colour."},
                {"role": "user", "content": [{"type": "text", "text": "Answer in JSON."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "{\"colour\": \""}]},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Name a colour."}, {"type": "text", "text": "Answer in JSON."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "{\"colour\": \""}]},
            ]
        },
    ),
    (
        "system in the middle joins the system prompt; empty assistant turn is skipped",
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": ""},
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Again"},
            ]
        },
        {
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Again"}]}],
        },
    ),
]


@pytest.mark.parametrize(("fields", "changes"), [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES])
def test_request_mapping(fields: dict, changes: dict) -> None:
    body = tr.chat_request_to_provider(openai_request(**fields))
    assert body == {**BASE_EXPECTED, **changes}
    assert_valid_anthropic_request(body)


def test_tool_round_trip_history() -> None:
    """System + developer, images (data URL and https), assistant tool calls and their results, in Anthropic's shape."""
    fixture = load("chat_request_tool_round_trip.json")
    body = tr.chat_request_to_provider(fixture["openai"])
    assert body == fixture["anthropic"]
    assert_valid_anthropic_request(body)


def test_request_is_not_modified() -> None:
    request = load("chat_request_tool_round_trip.json")["openai"]
    before = copy.deepcopy(request)
    tr.chat_request_to_provider(request)
    assert request == before


ERROR_CASES = [
    ("n", {"n": 2}, "n", "n=2 is not supported for Anthropic models"),
    ("seed", {"seed": 7}, "seed", "seed=7"),
    ("presence_penalty", {"presence_penalty": 0.5}, "presence_penalty", "presence_penalty=0.5"),
    ("frequency_penalty", {"frequency_penalty": 1}, "frequency_penalty", "frequency_penalty=1"),
    ("logprobs", {"logprobs": True}, "logprobs", "logprobs=True"),
    ("top_logprobs", {"top_logprobs": 3}, "top_logprobs", "top_logprobs"),
    ("logit_bias", {"logit_bias": {"50256": -100}}, "logit_bias", "'logit_bias' is not supported"),
    ("verbosity", {"verbosity": "low"}, "verbosity", "verbosity='low'"),
    ("store", {"store": True}, "store", "store=True"),
    ("audio", {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities", "modalities"),
    ("web_search_options", {"web_search_options": {}}, "web_search_options", "web_search_options"),
    ("legacy functions", {"functions": [{"name": "f"}]}, "functions", "functions"),
    ("unknown parameter", {"frobnicate": True}, "frobnicate", "frobnicate=True"),
    ("model missing", {"model": None}, "model", "'model' is required"),
    ("messages empty", {"messages": []}, "messages", "non-empty"),
    (
        "legacy function role",
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "function", "name": "f", "content": "1"}]},
        "messages[1].role",
        "'function' cannot be translated",
    ),
    ("message name", {"messages": [{"role": "user", "name": "alice", "content": "Hi"}]}, "messages[0].name", "name"),
    (
        "input_audio part",
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
        "messages[0].content[0].type",
        "'input_audio' is not supported",
    ),
    (
        "svg image",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}}]}]},
        "messages[0].content[0].image_url.url",
        "image/svg+xml",
    ),
    (
        "ftp image",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]},
        "messages[0].content[0].image_url.url",
        "http(s) or data URL",
    ),
    (
        "OpenAI file id",
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}]},
        "messages[0].content[0].file.file_id",
        "file storage",
    ),
    (
        "image in a system message",
        {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]},
        "messages[0].content[0].type",
        "only text parts",
    ),
    (
        "broken tool-call arguments",
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": "}}]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
        "not valid JSON",
    ),
    ("custom tool", {"tools": [{"type": "custom", "custom": {"name": "sql"}}]}, "tools[0].type", "only function tools"),
    ("tool_choice without tools", {"tool_choice": "auto"}, "tool_choice", "only allowed when 'tools'"),
    (
        "allowed_tools tool_choice",
        {"tools": [WEATHER_TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}},
        "tool_choice",
        "'allowed_tools' is not supported",
    ),
    ("reasoning_effort value", {"reasoning_effort": "extreme"}, "reasoning_effort", "not one of"),
    (
        "sampling on Claude 4.7+",
        {"model": "claude-opus-4-7", "temperature": 0.2},
        "temperature",
        "temperature=0.2 is not supported for claude-opus-4-7",
    ),
    ("top_k on Claude 5", {"model": "claude-sonnet-5", "top_k": 40}, "top_k", "top_k=40"),
    ("service_tier flex", {"service_tier": "flex"}, "service_tier", "service_tier='flex'"),
    (
        "json_schema without schema",
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format.json_schema.schema",
        "required",
    ),
]


@pytest.mark.parametrize(("fields", "param", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_unmappable_requests_name_the_parameter(fields: dict, param: str, message: str) -> None:
    with pytest.raises(TranslationError) as raised:
        tr.chat_request_to_provider(openai_request(**fields))
    assert raised.value.param == param
    assert message in raised.value.message
    error = raised.value.openai_error()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


# --- answers ---------------------------------------------------------------------------------

RESPONSE_CASES = [
    (
        "message_text.json",
        {"content": "Paris is the capital of France. It has been the seat of government since the late 10th century.", "tool_calls": []},
        "stop",
        {"prompt_tokens": 21 + 188 + 1024, "completion_tokens": 26, "cached": 1024, "reasoning": 0},
    ),
    (
        "message_multi_tool.json",
        {
            "content": "I'll check the weather in both cities and the current UTC time.",
            "tool_calls": [
                ("toolu_01A09q90qw90lq917835lq9", "get_weather", {"location": "Paris, France", "unit": "celsius"}),
                ("toolu_01B2kq8a5ZpTtmJrH3Lrv7Nc", "get_weather", {"location": "London, UK", "unit": "celsius"}),
                ("toolu_01C7bW3xYh1sGdQ2mPz9ReTu", "get_utc_time", {}),
            ],
        },
        "tool_calls",
        {"prompt_tokens": 512, "completion_tokens": 167, "cached": 0, "reasoning": 0},
    ),
    ("message_refusal.json", {"content": "I can't help with that.", "tool_calls": []}, "content_filter", {"prompt_tokens": 35, "completion_tokens": 9, "cached": 0, "reasoning": 0}),
]


@pytest.mark.parametrize(("fixture", "message", "finish_reason", "usage"), RESPONSE_CASES, ids=[c[0] for c in RESPONSE_CASES])
def test_response(fixture: str, message: dict, finish_reason: str, usage: dict) -> None:
    provider = load(fixture)
    anthropic.types.Message.model_validate(provider)
    result = tr.chat_response_from_provider(provider, model="claude-sonnet-4-5")
    completion = ChatCompletion.model_validate(result)
    assert completion.object == "chat.completion"
    assert completion.model == "claude-sonnet-4-5"
    assert completion.id == f"chatcmpl-{provider['id']}"
    assert message_summary(completion.choices[0].message) == message
    assert completion.choices[0].message.refusal is None
    assert completion.choices[0].finish_reason == finish_reason
    assert completion.usage.prompt_tokens == usage["prompt_tokens"]
    assert completion.usage.completion_tokens == usage["completion_tokens"]
    assert completion.usage.total_tokens == usage["prompt_tokens"] + usage["completion_tokens"]
    assert completion.usage.prompt_tokens_details.cached_tokens == usage["cached"]
    assert completion.usage.completion_tokens_details.reasoning_tokens == usage["reasoning"]


def test_tool_calls_only_answer_has_null_content() -> None:
    result = tr.chat_response_from_provider(load("message_thinking_tool.json"), model=MODEL)
    message = ChatCompletion.model_validate(result).choices[0].message
    assert message.content is None
    assert result["usage"]["completion_tokens_details"]["reasoning_tokens"] == 58
    assert [call.function.name for call in message.tool_calls] == ["get_weather"]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    provider = {**load("message_text.json"), "stop_reason": stop_reason}
    assert tr.chat_response_from_provider(provider, model=MODEL)["choices"][0]["finish_reason"] == finish_reason


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {"input_tokens": 10, "output_tokens": 5},
            {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
        ),
        (
            {"input_tokens": 3, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 500, "output_tokens": 300, "output_tokens_details": {"thinking_tokens": 120}},
            {
                "prompt_tokens": 2503,
                "completion_tokens": 300,
                "total_tokens": 2803,
                "prompt_tokens_details": {"cached_tokens": 2000, "cache_write_tokens": 500},
                "completion_tokens_details": {"reasoning_tokens": 120},
            },
        ),
        (
            {"input_tokens": 7, "cache_read_input_tokens": None, "cache_creation_input_tokens": None, "output_tokens": 1},
            {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
        ),
    ],
)
def test_usage_to_openai(usage: dict, expected: dict) -> None:
    assert tr.usage_to_openai(usage) == expected


# --- streams ---------------------------------------------------------------------------------

STREAM_CASES = [
    ("stream_text.sse", "message_text.json"),
    ("stream_multi_tool.sse", "message_multi_tool.json"),
    ("stream_thinking_tool.sse", "message_thinking_tool.json"),
]


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize(("stream", "message"), STREAM_CASES, ids=[c[0] for c in STREAM_CASES])
def test_stream_reassembles_to_the_unstreamed_answer(stream: str, message: str, include_usage: bool) -> None:
    events = sse_events(stream)
    for event in events:
        if event["type"] not in ("ping", "error"):  # the SDK reads those two apart from the event union
            pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent).validate_python(event)
    chunks, translator = translate_stream(events, include_usage=include_usage)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)

    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        (f"chatcmpl-{events[0]['message']['id']}", chunks[0]["created"], MODEL, "chat.completion.chunk")
    }
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}

    unstreamed = tr.chat_response_from_provider(load(message), model=MODEL)
    streamed = reassemble(chunks)
    assert message_summary(streamed.choices[0].message) == message_summary(
        ChatCompletion.model_validate(unstreamed).choices[0].message
    )
    assert streamed.choices[0].finish_reason == unstreamed["choices"][0]["finish_reason"]

    if include_usage:
        *body, last = chunks
        assert all(c["usage"] is None for c in body)
        assert last["choices"] == [] and last["usage"] == unstreamed["usage"]
        assert body[-1]["choices"][0]["delta"] == {} and body[-1]["choices"][0]["finish_reason"] is not None
    else:
        assert all("usage" not in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] is not None
    assert tr.usage_to_openai(translator.usage) == unstreamed["usage"]


def test_stream_tool_call_chunks_follow_openai_shape() -> None:
    """Tool-call index counts tool calls only, although Anthropic interleaves them with a text block."""
    chunks, _ = translate_stream(sse_events("stream_multi_tool.sse"), include_usage=False)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    starts = [call for call in calls if "id" in call]
    assert [(s["index"], s["id"], s["type"], s["function"]) for s in starts] == [
        (0, "toolu_01A09q90qw90lq917835lq9", "function", {"name": "get_weather", "arguments": ""}),
        (1, "toolu_01B2kq8a5ZpTtmJrH3Lrv7Nc", "function", {"name": "get_weather", "arguments": ""}),
        (2, "toolu_01C7bW3xYh1sGdQ2mPz9ReTu", "function", {"name": "get_utc_time", "arguments": ""}),
    ]
    fragments = [call for call in calls if "id" not in call]
    assert all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in fragments)
    by_call = {i: "".join(f["function"]["arguments"] for f in fragments if f["index"] == i) for i in range(3)}
    assert {i: json.loads(arguments) for i, arguments in by_call.items()} == {
        0: {"location": "Paris, France", "unit": "celsius"},
        1: {"location": "London, UK", "unit": "celsius"},
        2: {},
    }


def test_stream_is_translated_event_by_event() -> None:
    """Every text or argument delta is sent on as soon as it arrives, nothing waits for the end."""
    translator = tr.ChatStreamTranslator(model=MODEL, include_usage=True)
    for event in sse_events("stream_multi_tool.sse"):
        chunks = translator.feed(event)
        delta = event.get("delta") or {}
        if delta.get("type") == "text_delta":
            assert [c["choices"][0]["delta"] for c in chunks] == [{"content": delta["text"]}]
        elif delta.get("type") == "input_json_delta" and delta["partial_json"]:
            assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"] == {"arguments": delta["partial_json"]}
        elif event["type"] == "message_delta":
            assert chunks[0]["choices"][0]["finish_reason"] == "tool_calls"
        elif event["type"] == "message_stop":
            assert chunks[0]["choices"] == [] and chunks[0]["usage"]["completion_tokens"] == 167
    assert translator.finish() == []
    assert translator.usage["output_tokens"] == 167


def test_stream_error_event_becomes_openai_error() -> None:
    chunks, _ = translate_stream(sse_events("stream_overloaded.sse"), include_usage=True)
    *content, error = chunks
    assert [c["choices"][0]["delta"].get("content") for c in content] == ["", "Once upon a time"]
    assert error == {"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": "overloaded_error"}}


def _sse_bytes(chunks: list[dict]) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def _openai_client(sse: bytes) -> openai.OpenAI:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse)
    )
    return openai.OpenAI(api_key="tsk_test", base_url="http://gateway.test/v1", http_client=httpx.Client(transport=transport))


def test_openai_sdk_reads_the_translated_stream() -> None:
    chunks, _ = translate_stream(sse_events("stream_multi_tool.sse"), include_usage=True)
    client = _openai_client(_sse_bytes(chunks))
    with client.chat.completions.stream(model=MODEL, messages=[{"role": "user", "content": "Weather?"}]) as stream:
        final = stream.get_final_completion()
    unstreamed = ChatCompletion.model_validate(tr.chat_response_from_provider(load("message_multi_tool.json"), model=MODEL))
    assert message_summary(final.choices[0].message) == message_summary(unstreamed.choices[0].message)
    assert final.usage == unstreamed.usage


def test_openai_sdk_raises_on_translated_stream_error() -> None:
    chunks, _ = translate_stream(sse_events("stream_overloaded.sse"), include_usage=False)
    client = _openai_client(_sse_bytes(chunks))
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A story"}], stream=True)
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(stream)


# --- thinking carried through the tool loop ------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
def test_thinking_returns_with_its_tool_calls(streamed: bool) -> None:
    """Anthropic needs the turn's thinking block back with its tool_use; the OpenAI tool-call id carries it."""
    if streamed:
        chunks, _ = translate_stream(sse_events("stream_thinking_tool.sse"), include_usage=False)
        message = reassemble(chunks).choices[0].message
    else:
        result = tr.chat_response_from_provider(load("message_thinking_tool.json"), model=MODEL)
        message = ChatCompletion.model_validate(result).choices[0].message
    call = message.tool_calls[0]
    assert decode_tool_call_id(call.id)[0] == "toolu_01NRLabsLyVHZPKxbKvkfSMn"

    history = [
        {"role": "user", "content": "Do I need an umbrella in Tokyo tomorrow?"},
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "{\"forecast\": \"rain\", \"high\": 19}"},
    ]
    body = tr.chat_request_to_provider(openai_request(messages=history, reasoning_effort="low"))
    thinking = load("message_thinking_tool.json")["content"][0]
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            thinking,
            {"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather", "input": {"location": "Tokyo, Japan", "unit": "celsius"}},
        ],
    }
    assert body["messages"][2]["content"][0]["tool_use_id"] == "toolu_01NRLabsLyVHZPKxbKvkfSMn"
    assert_valid_anthropic_request(body)


def test_thinking_without_tool_calls_is_not_content() -> None:
    provider = {
        **load("message_text.json"),
        "content": [
            {"type": "thinking", "thinking": "Simple fact.", "signature": "EqQBCgIYAhIM"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
            {"type": "text", "text": "Paris."},
        ],
    }
    result = tr.chat_response_from_provider(provider, model=MODEL)
    assert result["choices"][0]["message"] == {"role": "assistant", "content": "Paris.", "refusal": None}


@pytest.mark.parametrize(
    ("model", "adaptive"),
    [
        ("claude-3-7-sonnet-20250219", False),
        ("claude-3-5-haiku-latest", False),
        ("claude-sonnet-4-20250514", False),
        ("claude-opus-4-1", False),
        ("claude-sonnet-4-5@20250929", False),
        ("claude-haiku-4-5-20251001", False),
        ("claude-opus-4-6", True),
        ("claude-sonnet-4-6", True),
        ("claude-opus-4-7", True),
        ("claude-sonnet-5", True),
        ("anthropic/claude-opus-4-8", True),
    ],
)
def test_thinking_mode_by_model(model: str, adaptive: bool) -> None:
    assert tr.uses_adaptive_thinking(model) is adaptive


@pytest.mark.parametrize(
    ("model", "rejects"),
    [
        ("claude-3-7-sonnet-20250219", False),
        ("claude-haiku-4-5", False),
        ("claude-opus-4-6", False),
        ("claude-sonnet-4-6", False),
        ("claude-opus-4-7", True),
        ("claude-haiku-5-5", True),
        ("claude-mythos-preview", True),
    ],
)
def test_sampling_params_by_model(model: str, rejects: bool) -> None:
    assert tr.rejects_sampling_params(model) is rejects


# --- errors ----------------------------------------------------------------------------------

ERROR_BODIES = [
    (529, (FIXTURES / "error_overloaded.json").read_bytes(), "overloaded_error", "overloaded_error", "Overloaded"),
    (400, (FIXTURES / "error_invalid_request.json").read_bytes(), "invalid_request_error", "invalid_request_error", "max_tokens: 300000 > 64000"),
    (429, (FIXTURES / "error_rate_limit.json").read_bytes(), "rate_limit_error", "rate_limit_error", "exceed the rate limit"),
    (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "api_error", "api_error", "502 Bad Gateway"),
    (529, b"", "overloaded_error", "overloaded_error", "Anthropic answered HTTP 529"),
    (500, b"\xff\xfe not utf-8", "api_error", "api_error", "not utf-8"),
    (401, b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}', "authentication_error", "authentication_error", "invalid x-api-key"),
]


@pytest.mark.parametrize(("status", "body", "type_", "code", "message"), ERROR_BODIES)
def test_error_from_provider(status: int, body: bytes, type_: str, code: str, message: str) -> None:
    error = tr.error_from_provider(status, body)
    assert set(error) == {"error"}
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert (error["error"]["type"], error["error"]["code"]) == (type_, code)
    assert message in error["error"]["message"]
    openai.types.ErrorObject.model_validate(error["error"])


def test_translation_error_body() -> None:
    with pytest.raises(TranslationError) as raised:
        tr.chat_request_to_provider(openai_request(n=2))
    assert raised.value.openai_error() == {
        "error": {
            "message": "n=2 is not supported for Anthropic models; remove it from the request",
            "type": "invalid_request_error",
            "param": "n",
            "code": "unsupported_parameter",
        }
    }

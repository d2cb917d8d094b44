"""OpenAI chat completions ⇄ Gemini generateContent translation, on recorded Gemini payloads."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from google import genai
from google.genai import types as gt
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic.alias_generators import to_camel

from tokensense.providers.chat_format import decode_tool_call_id
from tokensense.providers.gemini import chat as tr
from tokensense.providers.translation import TranslationError

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
MODEL = "gemini-2.5-flash"
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
PDF_B64 = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg=="
WAV_B64 = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a location.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}
WEATHER_DECLARATIONS = [
    {
        "functionDeclarations": [
            {
                "name": "get_weather",
                "description": "Current weather for a location.",
                "parametersJsonSchema": {
                    "type": "object",
                    "properties": {"location": {"type": "string"}},
                    "required": ["location"],
                },
            }
        ]
    }
]


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def sse_events(name: str) -> list[dict]:
    """The `data:` payloads of a recorded SSE stream (Gemini separates events with CRLF CRLF)."""
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
    return {
        "content": message.content or None,
        "tool_calls": [
            (call.id, call.function.name, json.loads(call.function.arguments)) for call in message.tool_calls or []
        ],
    }


def openai_request(**fields: Any) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}


# --- checking request bodies against the google-genai SDK --------------------------------------


def sdk_config(body: dict) -> gt.GenerateContentConfig:
    """The SDK config equivalent to a request body; the SDK's models forbid unknown fields."""
    fields = dict(body.get("generationConfig") or {})
    for key in ("systemInstruction", "tools", "toolConfig"):
        if key in body:
            fields[key] = body[key]
    return gt.GenerateContentConfig.model_validate_json(json.dumps(fields))


def sent_by_genai_sdk(body: dict, model: str) -> dict:
    """The JSON google-genai sends for the same contents and config (alias names, base64 bytes and all)."""
    captured: dict = {}

    def answer(request: httpx.Request) -> httpx.Response:
        captured.update(json.loads(request.content))
        return httpx.Response(200, json=load("response_text.json"))

    client = genai.Client(
        api_key="test-key",
        http_options=gt.HttpOptions(httpx_client=httpx.Client(transport=httpx.MockTransport(answer))),
    )
    contents = [gt.Content.model_validate_json(json.dumps(content)) for content in body["contents"]]
    client.models.generate_content(model=model, contents=contents, config=sdk_config(body))
    return captured


BYTES_FIELDS = {"data", "thoughtSignature"}


def base64_bytes(value: str) -> bytes:
    return base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4))


def assert_valid_gemini_request(body: dict, model: str = MODEL) -> None:
    assert set(body) <= {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
    for content in body["contents"]:
        gt.Content.model_validate_json(json.dumps(content))
    if "generationConfig" in body:
        gt.GenerationConfig.model_validate_json(json.dumps(body["generationConfig"]))
    sent = sent_by_genai_sdk(body, model)
    if sent.get("generationConfig") == {} and "generationConfig" not in body:
        del sent["generationConfig"]  # the SDK always sends one, empty when nothing is set
    assert camel_keys(sent) == camel_keys(body)


def camel_keys(value: Any) -> Any:
    """`value` in one spelling: the SDK sends some nested fields snake_cased (`mime_type`) and bytes
    in URL-safe base64; Gemini's JSON parser takes either spelling of a field and either alphabet."""
    if isinstance(value, dict):
        return {
            to_camel(key): base64_bytes(item) if to_camel(key) in BYTES_FIELDS else camel_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [camel_keys(item) for item in value]
    return value


# --- requests --------------------------------------------------------------------------------

BASE_EXPECTED = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}

REQUEST_CASES = [
    ("defaults; model and stream go in the URL", {"stream": True, "stream_options": {"include_usage": True}}, {}),
    (
        "generation config",
        {
            "temperature": 0.4,
            "top_p": 0.9,
            "top_k": 32,
            "n": 2,
            "seed": 1234,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "max_tokens": 300,
            "stop": "END",
        },
        {
            "generationConfig": {
                "temperature": 0.4,
                "topP": 0.9,
                "topK": 32,
                "candidateCount": 2,
                "seed": 1234,
                "presencePenalty": 0.5,
                "frequencyPenalty": -0.5,
                "maxOutputTokens": 300,
                "stopSequences": ["END"],
            }
        },
    ),
    ("max_completion_tokens wins", {"max_tokens": 10, "max_completion_tokens": 20}, {"generationConfig": {"maxOutputTokens": 20}}),
    (
        "no-effect parameters",
        {"user": "u-1", "safety_identifier": "h-1", "service_tier": "auto", "prompt_cache_key": "k", "metadata": {"a": "b"}, "logprobs": False},
        {},
    ),
    ("response_format json_object", {"response_format": {"type": "json_object"}}, {"generationConfig": {"responseMimeType": "application/json"}}),
    (
        "response_format json_schema",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "city", "description": "A city.", "schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
            }
        },
        {
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "description": "A city."},
            }
        },
    ),
    ("tools, no tool_choice", {"tools": [WEATHER_TOOL]}, {"tools": WEATHER_DECLARATIONS}),
    (
        "tool_choice none",
        {"tools": [WEATHER_TOOL], "tool_choice": "none", "parallel_tool_calls": False},
        {"tools": WEATHER_DECLARATIONS, "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}},
    ),
    (
        "tool_choice required",
        {"tools": [WEATHER_TOOL], "tool_choice": "required"},
        {"tools": WEATHER_DECLARATIONS, "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}},
    ),
    (
        "tool_choice named",
        {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {
            "tools": WEATHER_DECLARATIONS,
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        },
    ),
    (
        "strict tool is VALIDATED mode",
        {"tools": [{"type": "function", "function": {"name": "ping", "strict": True}}]},
        {"tools": [{"functionDeclarations": [{"name": "ping"}]}], "toolConfig": {"functionCallingConfig": {"mode": "VALIDATED"}}},
    ),
    (
        "strict tool with required stays ANY",
        {"tools": [{"type": "function", "function": {"name": "ping", "strict": True}}], "tool_choice": "required"},
        {"tools": [{"functionDeclarations": [{"name": "ping"}]}], "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}},
    ),
    ("parallel_tool_calls false without tools", {"parallel_tool_calls": False}, {}),
    ("reasoning_effort on Gemini 2.5 is a budget", {"reasoning_effort": "medium"}, {"generationConfig": {"thinkingConfig": {"thinkingBudget": 8192}}}),
    ("reasoning_effort none on Gemini 2.5", {"reasoning_effort": "none"}, {"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}),
    (
        "reasoning_effort on Gemini 3 is a level",
        {"model": "gemini-3-pro-preview", "reasoning_effort": "high"},
        {"generationConfig": {"thinkingConfig": {"thinkingLevel": "HIGH"}}},
    ),
    (
        "reasoning_effort minimal on Gemini 3 Flash",
        {"model": "gemini-3-flash-preview", "reasoning_effort": "minimal"},
        {"generationConfig": {"thinkingConfig": {"thinkingLevel": "MINIMAL"}}},
    ),
    (
        "content parts: https png, extensionless URL, audio, PDF",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/charts/q3.png?v=2"}},
                        {"type": "image_url", "image_url": {"url": "https://images.example.com/photo/8812"}},
                        {"type": "input_audio", "input_audio": {"data": WAV_B64, "format": "wav"}},
                        {"type": "file", "file": {"filename": "report.pdf", "file_data": f"data:application/pdf;base64,{PDF_B64}"}},
                        {"type": "text", "text": "Describe all of these."},
                    ],
                }
            ]
        },
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/charts/q3.png?v=2"}},
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://images.example.com/photo/8812"}},
                        {"inlineData": {"mimeType": "audio/wav", "data": WAV_B64}},
                        {"inlineData": {"mimeType": "application/pdf", "data": PDF_B64}},
                        {"text": "Describe all of these."},
                    ],
                }
            ]
        },
    ),
    (
        "roles merge; system anywhere joins systemInstruction",
        {
            "messages": [
                {"role": "user", "content": "One."},
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Two."}]},
                {"role": "assistant", "content": "Noted."},
                {"role": "assistant", "content": [{"type": "text", "text": "Anything else?"}]},
            ]
        },
        {
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "One."}, {"text": "Two."}]},
                {"role": "model", "parts": [{"text": "Noted."}, {"text": "Anything else?"}]},
            ],
        },
    ),
]


@pytest.mark.parametrize(("fields", "changes"), [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES])
def test_request_mapping(fields: dict, changes: dict) -> None:
    request = openai_request(**fields)
    body = tr.chat_request_to_provider(request)
    assert body == {**BASE_EXPECTED, **changes}
    assert_valid_gemini_request(body, request["model"])


def test_tool_round_trip_history() -> None:
    """System + developer, images (data URL and https), assistant tool calls and their results, in Gemini's shape."""
    fixture = load("chat_request_tool_round_trip.json")
    body = tr.chat_request_to_provider(fixture["openai"])
    assert body == fixture["gemini"]
    assert_valid_gemini_request(body)


def test_request_is_not_modified() -> None:
    request = load("chat_request_tool_round_trip.json")["openai"]
    before = copy.deepcopy(request)
    tr.chat_request_to_provider(request)
    assert request == before


ERROR_CASES = [
    ("logprobs", {"logprobs": True, "top_logprobs": 2}, "logprobs", "logprobs=True is not supported for Gemini models"),
    ("logit_bias", {"logit_bias": {"1": 5}}, "logit_bias", "'logit_bias'"),
    ("verbosity", {"verbosity": "high"}, "verbosity", "verbosity='high'"),
    ("store", {"store": True}, "store", "store=True"),
    ("prediction", {"prediction": {"type": "content", "content": "x"}}, "prediction", "prediction"),
    ("unknown parameter", {"frobnicate": 1}, "frobnicate", "frobnicate=1"),
    (
        "parallel_tool_calls false with tools",
        {"tools": [WEATHER_TOOL], "parallel_tool_calls": False},
        "parallel_tool_calls",
        "no switch",
    ),
    (
        "reasoning_effort none on Gemini 3",
        {"model": "gemini-3-pro-preview", "reasoning_effort": "none"},
        "reasoning_effort",
        "always thinks",
    ),
    ("service_tier flex", {"service_tier": "flex"}, "service_tier", "service_tier='flex'"),
    (
        "tool result for an unknown call",
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
        "messages[1].tool_call_id",
        "matches no tool call",
    ),
    ("message name", {"messages": [{"role": "user", "name": "bob", "content": "Hi"}]}, "messages[0].name", "name"),
    (
        "function role",
        {"messages": [{"role": "function", "name": "f", "content": "1"}]},
        "messages[0].role",
        "'function' cannot be translated",
    ),
    (
        "unknown content part",
        {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "https://x.test/v.mp4"}}]}]},
        "messages[0].content[0].type",
        "'video_url'",
    ),
    (
        "not a base64 data URL",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]}]},
        "messages[0].content[0].image_url.url",
        "not a base64 data URL",
    ),
    ("custom tool", {"tools": [{"type": "custom", "custom": {"name": "sql"}}]}, "tools[0].type", "only function tools"),
    (
        "assistant arguments not an object",
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
        "JSON object",
    ),
]


@pytest.mark.parametrize(("fields", "param", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_unmappable_requests_name_the_parameter(fields: dict, param: str, message: str) -> None:
    with pytest.raises(TranslationError) as raised:
        tr.chat_request_to_provider(openai_request(**fields))
    assert raised.value.param == param
    assert message in raised.value.message


@pytest.mark.parametrize(
    ("model", "levels"),
    [
        ("gemini-2.0-flash", False),
        ("gemini-2.5-pro", False),
        ("models/gemini-2.5-flash-lite", False),
        ("gemini-3-pro-preview", True),
        ("gemini-3.5-flash", True),
        ("gemini-flash-latest", True),
    ],
)
def test_thinking_parameter_by_model(model: str, levels: bool) -> None:
    assert tr.uses_thinking_levels(model) is levels


# --- answers ---------------------------------------------------------------------------------

def _call_ids(resp: dict) -> list[str]:
    return [call["id"] for call in tr.chat_response_from_provider(resp, model=MODEL)["choices"][0]["message"].get("tool_calls", [])]


RESPONSE_CASES = [
    (
        "response_text.json",
        [({"content": "Paris is the capital of France. It has been the seat of government since the late 10th century.", "tool_calls": []}, "stop")],
        {"prompt_tokens": 1290, "completion_tokens": 22 + 77, "cached": 1024, "reasoning": 77},
    ),
    (
        "response_parallel_calls.json",
        [
            (
                {
                    "content": None,
                    "tool_calls": [
                        ("get_weather", {"location": "Paris, France", "unit": "celsius"}),
                        ("get_weather", {"location": "London, UK", "unit": "celsius"}),
                        ("get_utc_time", {}),
                    ],
                },
                "tool_calls",
            )
        ],
        {"prompt_tokens": 187, "completion_tokens": 51 + 164, "cached": 0, "reasoning": 164},
    ),
    (
        "response_text_and_call.json",
        [({"content": "Let me look up the forecast for Tokyo.", "tool_calls": [("get_weather", {"location": "Tokyo, Japan"})]}, "tool_calls")],
        {"prompt_tokens": 96, "completion_tokens": 24 + 31, "cached": 0, "reasoning": 31},
    ),
    (
        "response_two_candidates.json",
        [
            ({"content": "Autumn leaves drift down", "tool_calls": []}, "stop"),
            ({"content": "Crisp air, golden light", "tool_calls": []}, "length"),
        ],
        {"prompt_tokens": 11, "completion_tokens": 12, "cached": 0, "reasoning": 0},
    ),
    ("response_safety.json", [({"content": None, "tool_calls": []}, "content_filter")], {"prompt_tokens": 14, "completion_tokens": 0, "cached": 0, "reasoning": 0}),
    ("response_prompt_blocked.json", [({"content": None, "tool_calls": []}, "content_filter")], {"prompt_tokens": 12, "completion_tokens": 0, "cached": 0, "reasoning": 0}),
]


@pytest.mark.parametrize(("fixture", "choices", "usage"), RESPONSE_CASES, ids=[c[0] for c in RESPONSE_CASES])
def test_response(fixture: str, choices: list, usage: dict) -> None:
    provider = load(fixture)
    gt.GenerateContentResponse.model_validate_json(json.dumps(provider))  # the fixture is in Gemini's real shape
    result = tr.chat_response_from_provider(provider, model="gemini-flash")
    completion = ChatCompletion.model_validate(result)
    assert completion.object == "chat.completion"
    assert completion.model == "gemini-flash"
    assert completion.id == f"chatcmpl-{provider['responseId']}"
    got = [
        (
            {
                "content": choice.message.content,
                "tool_calls": [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []],
            },
            choice.finish_reason,
        )
        for choice in completion.choices
    ]
    assert got == choices
    assert [choice.index for choice in completion.choices] == list(range(len(choices)))
    assert completion.usage.prompt_tokens == usage["prompt_tokens"]
    assert completion.usage.completion_tokens == usage["completion_tokens"]
    assert completion.usage.total_tokens == usage["prompt_tokens"] + usage["completion_tokens"]
    assert completion.usage.prompt_tokens_details.cached_tokens == usage["cached"]
    assert completion.usage.completion_tokens_details.reasoning_tokens == usage["reasoning"]


def test_generated_tool_call_ids_are_stable_and_distinct() -> None:
    provider = load("response_parallel_calls.json")
    first, second = _call_ids(provider), _call_ids(copy.deepcopy(provider))
    assert first == second
    bases = [decode_tool_call_id(call_id)[0] for call_id in first]
    assert len(set(bases)) == 3 and all(base.startswith("call_") and len(base) == 29 for base in bases)
    other = {**provider, "responseId": "another-response"}
    assert not set(_call_ids(other)) & set(first)


def test_gemini_function_call_id_is_kept() -> None:
    provider = load("response_text_and_call.json")
    provider["candidates"][0]["content"]["parts"][1]["functionCall"]["id"] = "fc-7c1e"
    (call_id,) = _call_ids(provider)
    assert decode_tool_call_id(call_id) == ("fc-7c1e", {"gemini_id": True})


@pytest.mark.parametrize(
    ("reason", "called", "finish_reason"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("IMAGE_SAFETY", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("OTHER", False, "stop"),
    ],
)
def test_finish_reasons(reason: str, called: bool, finish_reason: str) -> None:
    provider = load("response_text_and_call.json" if called else "response_text.json")
    provider["candidates"][0]["finishReason"] = reason
    assert tr.chat_response_from_provider(provider, model=MODEL)["choices"][0]["finish_reason"] == finish_reason


def test_thought_parts_are_not_content() -> None:
    provider = load("response_text.json")
    provider["candidates"][0]["content"]["parts"].insert(0, {"text": "**Recalling geography** The user asks...", "thought": True})
    result = tr.chat_response_from_provider(provider, model=MODEL)
    assert result["choices"][0]["message"]["content"].startswith("Paris is the capital")


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {"promptTokenCount": 10, "candidatesTokenCount": 4, "totalTokenCount": 14},
            {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
        ),
        (
            {"promptTokenCount": 2000, "cachedContentTokenCount": 1500, "candidatesTokenCount": 40, "thoughtsTokenCount": 300, "toolUsePromptTokenCount": 25, "totalTokenCount": 2365},
            {"prompt_tokens": 2025, "completion_tokens": 340, "total_tokens": 2365, "prompt_tokens_details": {"cached_tokens": 1500}, "completion_tokens_details": {"reasoning_tokens": 300}},
        ),
        (
            {},
            {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
        ),
    ],
)
def test_usage_to_openai(usage: dict, expected: dict) -> None:
    assert tr.usage_to_openai(usage) == expected


# --- streams ---------------------------------------------------------------------------------

STREAM_CASES = [
    ("stream_text.sse", "response_text.json"),
    ("stream_parallel_calls.sse", "response_parallel_calls.json"),
    ("stream_text_and_call.sse", "response_text_and_call.json"),
]


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize(("stream", "response"), STREAM_CASES, ids=[c[0] for c in STREAM_CASES])
def test_stream_reassembles_to_the_unstreamed_answer(stream: str, response: str, include_usage: bool) -> None:
    events = sse_events(stream)
    for event in events:
        gt.GenerateContentResponse.model_validate_json(json.dumps(event))
    chunks, translator = translate_stream(events, include_usage=include_usage)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)

    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        (f"chatcmpl-{events[0]['responseId']}", chunks[0]["created"], MODEL, "chat.completion.chunk")
    }
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}

    unstreamed = tr.chat_response_from_provider(load(response), model=MODEL)
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
    assert translator.usage == events[-1]["usageMetadata"]


def test_stream_sends_each_function_call_as_it_arrives() -> None:
    """Parallel calls split over two chunks: id/name chunk then arguments, tool-call index running on."""
    events = sse_events("stream_parallel_calls.sse")
    translator = tr.ChatStreamTranslator(model=MODEL, include_usage=False)
    first = translator.feed(events[0])
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in first[1:]]
    assert [(c["index"], c.get("type"), c["function"].get("name"), c["function"]["arguments"]) for c in calls] == [
        (0, "function", "get_weather", ""),
        (0, None, None, '{"location":"Paris, France","unit":"celsius"}'),
        (1, "function", "get_weather", ""),
        (1, None, None, '{"location":"London, UK","unit":"celsius"}'),
    ]
    assert set(calls[1]) == {"index", "function"}
    second = translator.feed(events[1])
    assert [c["choices"][0]["delta"].get("tool_calls", [{}])[0].get("index") for c in second] == [2, 2, None]
    assert second[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_with_two_candidates() -> None:
    """n=2: every candidate is its own choice index, with its own role chunk and finish reason."""
    response = load("response_two_candidates.json")
    head = {"modelVersion": response["modelVersion"], "responseId": response["responseId"]}
    events = [
        {**head, "candidates": [{"content": c["content"], "index": c["index"]} for c in response["candidates"]]},
        {
            **head,
            "candidates": [
                {"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": c["finishReason"], "index": c["index"]}
                for c in response["candidates"]
            ],
            "usageMetadata": response["usageMetadata"],
        },
    ]
    chunks, _ = translate_stream(events, include_usage=True)
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    # get_final_completion() refuses a choice that hit the length limit; the snapshot is the same data.
    streamed = state.current_completion_snapshot
    unstreamed = ChatCompletion.model_validate(tr.chat_response_from_provider(response, model=MODEL))
    assert [(c.index, c.message.content, c.finish_reason) for c in streamed.choices] == [
        (c.index, c.message.content, c.finish_reason) for c in unstreamed.choices
    ]
    assert streamed.usage == unstreamed.usage


def test_stream_blocked_prompt() -> None:
    chunks, _ = translate_stream([load("response_prompt_blocked.json")], include_usage=False)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "content_filter"]


def test_stream_error_event_becomes_openai_error() -> None:
    chunks, _ = translate_stream(sse_events("stream_unavailable.sse"), include_usage=True)
    *content, error = chunks
    assert [c["choices"][0]["delta"].get("content") for c in content] == ["", "Here is a long story about"]
    assert error == {
        "error": {"message": "The model is overloaded. Please try again later.", "type": "server_error", "param": None, "code": "UNAVAILABLE"}
    }


def _openai_client(chunks: list[dict]) -> openai.OpenAI:
    sse = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
    transport = httpx2.MockTransport(
        lambda request: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=sse)
    )
    return openai.OpenAI(api_key="tsk_test", base_url="http://gateway.test/v1", http_client=httpx2.Client(transport=transport))


def test_openai_sdk_reads_the_translated_stream() -> None:
    chunks, _ = translate_stream(sse_events("stream_parallel_calls.sse"), include_usage=True)
    with _openai_client(chunks).chat.completions.stream(model=MODEL, messages=[{"role": "user", "content": "Weather?"}]) as stream:
        final = stream.get_final_completion()
    unstreamed = ChatCompletion.model_validate(tr.chat_response_from_provider(load("response_parallel_calls.json"), model=MODEL))
    assert message_summary(final.choices[0].message) == message_summary(unstreamed.choices[0].message)
    assert final.usage == unstreamed.usage


def test_openai_sdk_raises_on_translated_stream_error() -> None:
    chunks, _ = translate_stream(sse_events("stream_unavailable.sse"), include_usage=False)
    stream = _openai_client(chunks).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A story"}], stream=True)
    with pytest.raises(openai.APIError, match="overloaded"):
        list(stream)


# --- the tool loop: names, ids and thought signatures back to Gemini ---------------------------


@pytest.mark.parametrize("streamed", [False, True])
def test_tool_loop_returns_names_and_thought_signature(streamed: bool) -> None:
    """Gemini 3 rejects a function-call turn without its thought signature; the tool-call id carries it back."""
    if streamed:
        chunks, _ = translate_stream(sse_events("stream_parallel_calls.sse"), include_usage=False, model="gemini-3-pro-preview")
        message = reassemble(chunks).choices[0].message
    else:
        result = tr.chat_response_from_provider(load("response_parallel_calls.json"), model="gemini-3-pro-preview")
        message = ChatCompletion.model_validate(result).choices[0].message
    results = ['{"temperature": 18}', '{"temperature": 14}', "2025-06-01T09:30:00Z"]
    history = [
        {"role": "user", "content": "Weather in Paris and London, and the time?"},
        message.model_dump(exclude_none=True),
        *({"role": "tool", "tool_call_id": call.id, "content": text} for call, text in zip(message.tool_calls, results)),
    ]
    body = tr.chat_request_to_provider(openai_request(model="gemini-3-pro-preview", messages=history))
    recorded = load("response_parallel_calls.json")["candidates"][0]["content"]
    assert body["contents"][1] == recorded  # the model turn goes back exactly as Gemini sent it
    assert body["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"result": {"temperature": 18}}}},
            {"functionResponse": {"name": "get_weather", "response": {"result": {"temperature": 14}}}},
            {"functionResponse": {"name": "get_utc_time", "response": {"result": "2025-06-01T09:30:00Z"}}},
        ],
    }
    assert_valid_gemini_request(body, "gemini-3-pro-preview")


def test_google_extra_content_signature_is_honoured() -> None:
    """Clients of Google's own OpenAI endpoint keep the signature in `extra_content`; it goes back too."""
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "function-call-1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Oslo"}'},
                    "extra_content": {"google": {"thought_signature": "CiQBcsjafD2b1Rg2"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "function-call-1", "content": "-3C, snow"},
    ]
    body = tr.chat_request_to_provider(openai_request(messages=history))
    assert body["contents"][1]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"location": "Oslo"}}, "thoughtSignature": "CiQBcsjafD2b1Rg2"}
    ]
    assert body["contents"][2]["parts"] == [{"functionResponse": {"name": "get_weather", "response": {"result": "-3C, snow"}}}]


def test_gemini_call_id_goes_back_on_call_and_response() -> None:
    provider = load("response_text_and_call.json")
    provider["candidates"][0]["content"]["parts"][1]["functionCall"]["id"] = "fc-7c1e"
    message = tr.chat_response_from_provider(provider, model=MODEL)["choices"][0]["message"]
    history = [
        {"role": "user", "content": "Umbrella in Tokyo?"},
        message,
        {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": '{"rain": true}'},
    ]
    body = tr.chat_request_to_provider(openai_request(messages=history))
    assert body["contents"][1]["parts"][1] == {"functionCall": {"id": "fc-7c1e", "name": "get_weather", "args": {"location": "Tokyo, Japan"}}}
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"id": "fc-7c1e", "name": "get_weather", "response": {"result": {"rain": True}}}}
    ]


# --- errors ----------------------------------------------------------------------------------

ERROR_BODIES = [
    (400, (FIXTURES / "error_invalid_argument.json").read_bytes(), "invalid_request_error", "INVALID_ARGUMENT", "thinking budget"),
    (429, (FIXTURES / "error_resource_exhausted.json").read_bytes(), "rate_limit_error", "RESOURCE_EXHAUSTED", "exceeded your current quota"),
    (503, (FIXTURES / "error_unavailable.json").read_bytes(), "server_error", "UNAVAILABLE", "overloaded"),
    (403, b'[{"error": {"code": 403, "message": "Method doesn\'t allow unregistered callers.", "status": "PERMISSION_DENIED"}}]', "permission_error", "PERMISSION_DENIED", "unregistered callers"),
    (502, b"<html><title>502 Server Error</title></html>", "api_error", None, "502 Server Error"),
    (504, b"", "timeout_error", None, "Gemini answered HTTP 504"),
]


@pytest.mark.parametrize(("status", "body", "type_", "code", "message"), ERROR_BODIES)
def test_error_from_provider(status: int, body: bytes, type_: str, code: str | None, message: str) -> None:
    error = tr.error_from_provider(status, body)
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
    assert (error["error"]["type"], error["error"]["code"]) == (type_, code)
    assert message in error["error"]["message"]
    openai.types.ErrorObject.model_validate(error["error"])

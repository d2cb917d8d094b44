"""OpenAI Responses ⇄ Anthropic Messages and ⇄ Gemini generateContent: requests, answers, streams, errors.

Translated answers are judged by the openai SDK: unstreamed ones are validated as `Response` objects,
streamed ones are served to `client.responses.stream` through an httpx mock transport, so the SDK's own
event parsing and snapshot accumulation rebuild the response.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import Response

from tokensense.providers import chat_format as oa
from tokensense.providers import responses_format as rf
from tokensense.providers.anthropic import responses as anthropic_responses
from tokensense.providers.gemini import responses as gemini_responses
from tokensense.providers.responses_stream import ResponsesTranslatingStream
from tokensense.providers.translation import TranslationError

FIXTURES = Path(__file__).parent / "fixtures"
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a location.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["location", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def codex_like_request(model: str) -> dict:
    """A request as Codex CLI and the Agents SDK send them: instructions, typed items, store off, reasoning on."""
    return {
        "model": model,
        "instructions": "You are a coding agent.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use celsius."}]},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather where this photo was taken?"},
                    {"type": "input_image", "image_url": PNG, "detail": "auto"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-opaque"},
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Checking Paris.", "annotations": []}],
            },
            {"type": "function_call", "id": "fc_1", "call_id": "toolu_01A", "name": "get_weather",
             "arguments": "{\"location\":\"Paris\",\"unit\":\"celsius\"}"},
            {"type": "function_call_output", "call_id": "toolu_01A", "output": "18C, cloudy"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "max_output_tokens": 2048,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "stream": True,
        "prompt_cache_key": "session-123",
    }


def sdk_stream(body: bytes, **request: object) -> tuple[list, Response]:
    """Serve `body` as the SSE answer of POST /v1/responses and read it with `client.responses.stream`."""

    def answer(http_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = openai.OpenAI(api_key="k", base_url="http://test/v1", max_retries=0,
                           http_client=httpx.Client(transport=httpx.MockTransport(answer)))
    with client.responses.stream(**{"model": "m", "input": "hi", **request}) as stream:
        events = list(stream)
        final = stream.get_final_response() if events[-1].type == "response.completed" else None
    return events, final


def translate_stream(translator: object, data: bytes, piece: int = 7) -> bytes:
    stream = ResponsesTranslatingStream(translator)
    out = []
    for i in range(0, len(data), piece):
        produced = stream(data[i : i + piece])
        out.extend(produced if isinstance(produced, list) else [produced])
    out.append(stream(b""))
    return b"".join(out)


# --- Anthropic: requests -------------------------------------------------------------------------


def test_anthropic_request_from_codex_like_items() -> None:
    body = anthropic_responses.responses_request_to_provider(codex_like_request("claude-sonnet-4-5"))
    assert body["system"] == [{"type": "text", "text": "You are a coding agent."}, {"type": "text", "text": "Use celsius."}]
    assert body["max_tokens"] == 8192 + 2048  # thinking budget (medium) + the client's cap
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert body["stream"] is True
    assert body["tools"] == [{
        "name": "get_weather",
        "description": "Current weather for a location.",
        "input_schema": WEATHER_TOOL["parameters"],
        "strict": True,
    }]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "Weather where this photo was taken?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG.split(",", 1)[1]}},
        ]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking Paris."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "Paris", "unit": "celsius"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18C, cloudy"},
            {"type": "text", "text": "And tomorrow?"},
        ]},
    ]


def test_anthropic_request_string_input_and_json_schema() -> None:
    body = anthropic_responses.responses_request_to_provider({
        "model": "claude-sonnet-4-6",
        "input": "List three colours.",
        "text": {"format": {"type": "json_schema", "name": "colours", "strict": True,
                            "schema": {"type": "object", "properties": {"colours": {"type": "array"}}}}},
        "temperature": 1,
        "metadata": {"ticket": "42"},
    })
    assert body == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "List three colours."}]}],
        "output_config": {"format": {"type": "json_schema",
                                     "schema": {"type": "object", "properties": {"colours": {"type": "array"}}}}},
    }


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, "input[0].content[0].file_id"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "input[0].content[0].type"),
        ({"previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"max_output_tokens": 0}, "max_output_tokens"),  # raised by the chat translator, renamed
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/bmp;base64,Qk0="}]}]},
         "input[0].content[0].image_url.url"),  # ditto, with the item index mapped back
        ({"temperature": 0.2, "model": "claude-opus-4-7"}, "temperature"),
    ],
)
def test_anthropic_unmappable_requests_name_the_responses_field(change: dict, param: str) -> None:
    request = {"model": "claude-sonnet-4-5", "input": "hi", **change}
    with pytest.raises(TranslationError) as caught:
        anthropic_responses.responses_request_to_provider(request)
    assert caught.value.param == param
    assert "messages[" not in caught.value.message and "max_completion_tokens" not in caught.value.message


# --- Anthropic: answers --------------------------------------------------------------------------


def test_anthropic_answer_text() -> None:
    answer = anthropic_responses.responses_response_from_provider(
        fixture("anthropic/message_text.json"), model="claude-sonnet-4-6", request={"model": "claude-sonnet-4-6", "input": "hi"}
    )
    response = Response.model_validate(answer)
    assert response.status == "completed"
    assert response.output_text == fixture("anthropic/message_text.json")["content"][0]["text"]
    assert response.model == "claude-sonnet-4-6"
    usage = fixture("anthropic/message_text.json")["usage"]
    assert response.usage.input_tokens == usage["input_tokens"] + usage.get("cache_read_input_tokens", 0) + \
        usage.get("cache_creation_input_tokens", 0)
    assert response.usage.output_tokens == usage["output_tokens"]


def test_anthropic_answer_thinking_and_tool_call_round_trip() -> None:
    request = {"model": "claude-sonnet-4-6", "input": "Umbrella for Tokyo?", "tools": [WEATHER_TOOL],
               "reasoning": {"effort": "low", "summary": "auto"}}
    answer = anthropic_responses.responses_response_from_provider(
        fixture("anthropic/message_thinking_tool.json"), model="claude-sonnet-4-6", request=request
    )
    response = Response.model_validate(answer)
    reasoning, call = response.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text.startswith("The user wants to know")
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"location": "Tokyo, Japan", "unit": "celsius"}
    assert oa.decode_tool_call_id(call.call_id)[0] == "toolu_01NRLabsLyVHZPKxbKvkfSMn"
    assert response.usage.output_tokens_details.reasoning_tokens == 58

    # The client sends the output back with the tool's result: the thinking returns before the tool_use.
    follow_up = {**request, "input": [
        {"role": "user", "content": "Umbrella for Tokyo?"},
        *[item.model_dump(exclude_none=True) for item in response.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "rain, 21C"},
    ]}
    body = anthropic_responses.responses_request_to_provider(follow_up)
    assistant = body["messages"][1]["content"]
    assert [block["type"] for block in assistant] == ["thinking", "tool_use"]
    assert assistant[0]["signature"].startswith("EqQB")
    assert assistant[1]["id"] == "toolu_01NRLabsLyVHZPKxbKvkfSMn"
    assert body["messages"][2]["content"][0]["tool_use_id"] == "toolu_01NRLabsLyVHZPKxbKvkfSMn"


def test_anthropic_answer_without_summary_request_has_empty_reasoning_summary() -> None:
    answer = anthropic_responses.responses_response_from_provider(
        fixture("anthropic/message_thinking_tool.json"), model="claude-sonnet-4-6", request={"input": "x"}
    )
    assert answer["output"][0] == {**answer["output"][0], "type": "reasoning", "summary": []}


@pytest.mark.parametrize(
    ("stop_reason", "status", "reason"),
    [("end_turn", "completed", None), ("max_tokens", "incomplete", "max_output_tokens"),
     ("refusal", "incomplete", "content_filter"), ("pause_turn", "completed", None)],
)
def test_anthropic_stop_reasons(stop_reason: str, status: str, reason: str | None) -> None:
    message = {**fixture("anthropic/message_text.json"), "stop_reason": stop_reason}
    response = Response.model_validate(anthropic_responses.responses_response_from_provider(message, model="claude-x"))
    assert response.status == status
    assert (response.incomplete_details.reason if response.incomplete_details else None) == reason


# --- Anthropic: streams --------------------------------------------------------------------------


def test_anthropic_stream_rebuilds_the_unstreamed_answer_in_the_sdk() -> None:
    request = {"model": "claude-sonnet-4-6", "input": "Umbrella?", "tools": [WEATHER_TOOL], "reasoning": {"summary": "auto"}}
    translator = anthropic_responses.ResponsesStreamTranslator(model="claude-sonnet-4-6", request=request)
    body = translate_stream(translator, raw("anthropic/stream_thinking_tool.sse"))
    assert b"[DONE]" not in body and body.startswith(b"event: response.created\ndata: ")
    events, final = sdk_stream(body, tools=[WEATHER_TOOL])
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.reasoning_summary_text.delta" in kinds
    assert kinds.count("response.function_call_arguments.delta") == 2
    unstreamed = anthropic_responses.responses_response_from_provider(
        fixture("anthropic/message_thinking_tool.json"), model="claude-sonnet-4-6", request=request
    )
    assert [item.type for item in final.output] == [item["type"] for item in unstreamed["output"]]
    assert final.output[0].summary[0].text == unstreamed["output"][0]["summary"][0]["text"]
    call = final.output[1]
    assert (call.call_id, call.name) == (unstreamed["output"][1]["call_id"], unstreamed["output"][1]["name"])
    assert json.loads(call.arguments) == json.loads(unstreamed["output"][1]["arguments"])  # fragments as Anthropic sent them
    assert call.parsed_arguments == {"location": "Tokyo, Japan", "unit": "celsius"}
    assert final.usage.model_dump(exclude_none=True) == unstreamed["usage"]
    assert translator.final["id"] == final.id and translator.usage["output_tokens"] == 112


def test_anthropic_stream_text_in_the_sdk() -> None:
    translator = anthropic_responses.ResponsesStreamTranslator(model="claude-sonnet-4-6")
    events, final = sdk_stream(translate_stream(translator, raw("anthropic/stream_text.sse"), piece=3))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == deltas and deltas
    done = [e for e in events if e.type == "response.output_text.done"]
    assert done[0].text == deltas


def test_anthropic_stream_error_event_fails_the_response() -> None:
    translator = anthropic_responses.ResponsesStreamTranslator(model="claude-sonnet-4-6")
    events, final = sdk_stream(translate_stream(translator, raw("anthropic/stream_overloaded.sse")))
    assert final is None
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.failed" and kinds.count("error") == 1
    error = events[kinds.index("error")]
    assert error.code == "overloaded_error" and error.message == "Overloaded"
    assert events[-1].response.output[0].content[0].text == "Once upon a time"  # what came before the error
    assert events[-1].response.status == "failed" and events[-1].response.error.code == "overloaded_error"


def test_anthropic_stream_cut_short_fails_the_response() -> None:
    data = raw("anthropic/stream_text.sse")
    cut = data[: data.index(b"event: message_delta")]
    translator = anthropic_responses.ResponsesStreamTranslator(model="claude-sonnet-4-6")
    events, final = sdk_stream(translate_stream(translator, cut))
    assert final is None and events[-1].type == "response.failed"
    assert events[-1].response.error.code == "stream_interrupted"


# --- Gemini --------------------------------------------------------------------------------------


def test_gemini_request_from_codex_like_items() -> None:
    request = codex_like_request("gemini-2.5-flash")
    request["input"][4]["call_id"] = request["input"][5]["call_id"] = "call_abc"
    request["parallel_tool_calls"] = True
    body = gemini_responses.responses_request_to_provider(request)
    assert body["systemInstruction"] == {"parts": [{"text": "You are a coding agent."}, {"text": "Use celsius."}]}
    assert body["generationConfig"] == {
        "maxOutputTokens": 2048,
        "thinkingConfig": {"thinkingBudget": 8192, "includeThoughts": True},
    }
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "VALIDATED"}}  # strict tool
    assert body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][1]["parts"] == [
        {"text": "Checking Paris."},
        {"functionCall": {"name": "get_weather", "args": {"location": "Paris", "unit": "celsius"}}},
    ]
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"result": "18C, cloudy"}}},
        {"text": "And tomorrow?"},
    ]


def test_gemini_function_output_without_its_call_is_a_400_naming_the_item() -> None:
    with pytest.raises(TranslationError) as caught:
        gemini_responses.responses_request_to_provider({
            "model": "gemini-2.5-flash",
            "input": [{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "x", "output": "1"}],
        })
    assert caught.value.param == "input[1].tool_call_id"


def test_gemini_answer_and_signature_round_trip() -> None:
    request = {"model": "gemini-3-pro-preview", "input": "Weather?", "tools": [WEATHER_TOOL]}
    answer = gemini_responses.responses_response_from_provider(
        fixture("gemini/response_text_and_call.json"), model="gemini-3-pro-preview", request=request
    )
    response = Response.model_validate(answer)
    message, call = response.output
    assert message.content[0].text == "Let me look up the forecast for Tokyo."
    assert call.name == "get_weather" and json.loads(call.arguments) == {"location": "Tokyo, Japan"}
    assert response.usage.output_tokens == 24 + 31 and response.usage.output_tokens_details.reasoning_tokens == 31
    follow_up = {**request, "input": [
        {"role": "user", "content": "Weather?"},
        *[item.model_dump(exclude_none=True) for item in response.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "{\"temp\": 21}"},
    ]}
    body = gemini_responses.responses_request_to_provider(follow_up)
    assert body["contents"][2]["parts"][0] == {"functionResponse": {"name": "get_weather", "response": {"result": {"temp": 21}}}}


def test_gemini_thoughts_become_reasoning_summary() -> None:
    resp = {
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Considering the ", "thought": True}, {"text": "question.", "thought": True},
            {"text": "Answer: "}, {"text": "42."},
        ]}, "finishReason": "MAX_TOKENS", "index": 0}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "thoughtsTokenCount": 4, "cachedContentTokenCount": 2},
        "responseId": "abc",
    }
    answer = gemini_responses.responses_response_from_provider(resp, model="gemini-2.5-pro", request={"reasoning": {"summary": "auto"}})
    response = Response.model_validate(answer)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].summary[0].text == "Considering the question."
    assert response.output_text == "Answer: 42."
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.input_tokens_details.cached_tokens == 2 and response.usage.output_tokens == 7

    sse = b"".join(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n" for chunk in (
        {"candidates": [{"content": {"role": "model", "parts": [resp["candidates"][0]["content"]["parts"][0]]}}], "responseId": "abc"},
        {"candidates": [{"content": {"role": "model", "parts": resp["candidates"][0]["content"]["parts"][1:3]}}], "responseId": "abc"},
        {**resp, "candidates": [{**resp["candidates"][0], "content": {"role": "model", "parts": [{"text": "42."}]}}]},
    ))
    translator = gemini_responses.ResponsesStreamTranslator(model="gemini-2.5-pro", request={"reasoning": {"summary": "auto"}})
    events, final = sdk_stream(translate_stream(translator, sse), reasoning={"summary": "auto"})
    assert final is None  # MAX_TOKENS: the stream ends with response.incomplete
    assert events[-1].type == "response.incomplete"
    streamed = events[-1].response
    assert streamed.output[0].summary[0].text == "Considering the question."
    assert streamed.output[1].content[0].text == "Answer: 42." and streamed.output[1].status == "incomplete"


def test_gemini_stream_text_and_call_in_the_sdk() -> None:
    request = {"model": "gemini-2.5-flash", "input": "Weather?", "tools": [WEATHER_TOOL]}
    translator = gemini_responses.ResponsesStreamTranslator(model="gemini-2.5-flash", request=request)
    events, final = sdk_stream(translate_stream(translator, raw("gemini/stream_text_and_call.sse")), tools=[WEATHER_TOOL])
    unstreamed = gemini_responses.responses_response_from_provider(
        fixture("gemini/response_text_and_call.json"), model="gemini-2.5-flash", request=request
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "Let me look up the forecast for Tokyo."
    assert final.output[1].call_id == unstreamed["output"][1]["call_id"]  # same id streamed or not
    assert final.output[1].arguments == unstreamed["output"][1]["arguments"]
    assert final.usage.model_dump(exclude_none=True) == unstreamed["usage"]


def test_gemini_stream_error_fails_the_response() -> None:
    translator = gemini_responses.ResponsesStreamTranslator(model="gemini-2.5-flash")
    events, final = sdk_stream(translate_stream(translator, raw("gemini/stream_unavailable.sse")))
    assert final is None and events[-1].type == "response.failed" and "error" in [e.type for e in events]
    assert events[-1].response.error.code == "UNAVAILABLE"
    assert events[-1].response.output[0].content[0].text == "Here is a long story about"


def test_gemini_parallel_tool_calls_false_is_a_400() -> None:
    with pytest.raises(TranslationError) as caught:
        gemini_responses.responses_request_to_provider(
            {"model": "gemini-2.5-flash", "input": "x", "tools": [WEATHER_TOOL], "parallel_tool_calls": False}
        )
    assert caught.value.param == "parallel_tool_calls"


# --- shared --------------------------------------------------------------------------------------


def test_errors_keep_the_openai_shape() -> None:
    body = anthropic_responses.error_from_provider(529, raw("anthropic/error_overloaded.json"))
    assert body["error"]["type"] == "overloaded_error"
    body = gemini_responses.error_from_provider(429, raw("gemini/error_resource_exhausted.json"))
    assert body["error"]["code"] == "RESOURCE_EXHAUSTED"


def test_with_previous_conversation_puts_stored_items_first() -> None:
    stored = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
              rf.message_item("b")]
    body = rf.with_previous_conversation({"model": "m", "previous_response_id": "resp_1", "input": "c"}, stored)
    assert "previous_response_id" not in body
    assert [item.get("role") for item in body["input"]] == ["user", "assistant", "user"]
    translated = anthropic_responses.responses_request_to_provider(body)
    assert [m["role"] for m in translated["messages"]] == ["user", "assistant", "user"]


@pytest.mark.parametrize("translation", [anthropic_responses.ResponsesTranslation(), gemini_responses.ResponsesTranslation()])
def test_translation_objects(translation) -> None:
    """The `Translator` shape the pipeline drives: request, answer, error, stream."""
    body = translation.request({"model": "alias", "input": "hi"}, model="claude-sonnet-4-6" if translation.provider_format == "anthropic" else "gemini-2.5-flash", stream=True)
    if translation.provider_format == "anthropic":
        assert body["model"] == "claude-sonnet-4-6" and body["stream"] is True
        provider_answer = fixture("anthropic/message_text.json")
    else:
        assert "model" not in body and "stream" not in body
        provider_answer = fixture("gemini/response_text.json")
    answer = translation.answer(provider_answer, model="m", request={"input": "hi"}, response_id="resp_fixed")
    assert Response.model_validate(answer).id == "resp_fixed"
    assert "error" in translation.error(500, b"boom")
    assert translation.stream(model="m").feed is not None


def test_codex_namespace_tools_and_client_metadata() -> None:
    """Codex sends `client_metadata` and groups sub-agent tools in a `namespace` tool."""
    namespace = {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [
        {"type": "function", "name": "close_agent", "strict": False,
         "parameters": {"type": "object", "properties": {"target": {"type": "string"}}, "required": ["target"]}}]}
    request = {"model": "claude-sonnet-4-6", "input": "close it", "tools": [WEATHER_TOOL, namespace],
               "client_metadata": {"session_id": "s1"}}
    body = anthropic_responses.responses_request_to_provider(request)
    assert [tool["name"] for tool in body["tools"]] == ["get_weather", "multi_agent_v1__close_agent"]
    message = {**fixture("anthropic/message_text.json"), "stop_reason": "tool_use", "content": [
        {"type": "tool_use", "id": "toolu_9", "name": "multi_agent_v1__close_agent", "input": {"target": "a1"}}]}
    response = Response.model_validate(anthropic_responses.responses_response_from_provider(
        message, model="claude-sonnet-4-6", request=request))
    call = response.output[0]
    assert (call.name, call.namespace) == ("close_agent", "multi_agent_v1")
    follow_up = {**request, "input": [{"role": "user", "content": "close it"}, call.model_dump(exclude_none=True),
                                      {"type": "function_call_output", "call_id": call.call_id, "output": "closed"}]}
    sent = anthropic_responses.responses_request_to_provider(follow_up)
    assert sent["messages"][1]["content"][0]["name"] == "multi_agent_v1__close_agent"

    events = anthropic_responses.ResponsesStreamTranslator(model="m", request=request)
    out = events.feed({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 3}}})
    out += events.feed({"type": "content_block_start", "index": 0, "content_block": {
        "type": "tool_use", "id": "toolu_9", "name": "multi_agent_v1__close_agent", "input": {}}})
    out += events.feed({"type": "content_block_stop", "index": 0})
    done = [e for e in out if e["type"] == "response.output_item.done"][0]["item"]
    assert (done["name"], done["namespace"], done["arguments"]) == ("close_agent", "multi_agent_v1", "{}")

"""Usage of Responses API answers and streams: terminal events, cached and reasoning tokens, tool calls."""
# ruff: noqa: F811  (the fixtures imported from fakeprovider_fixture are used as test arguments)

from __future__ import annotations

import json

import httpx
from fakeprovider_fixture import fake_provider, fake_provider_url  # noqa: F401

from tokensense.core.usage import TokenUsage
from tokensense.metering.sse import EventSplitter, parse_event
from tokensense.providers.openai import (
    OpenAIAdapter,
    ResponsesStreamUsage,
    responses_tool_calls,
    usage_from_openai,
    usage_from_response,
)


def read_stream(raw: bytes) -> ResponsesStreamUsage:
    meter = ResponsesStreamUsage()
    splitter = EventSplitter()
    for block in splitter.feed(raw) + [splitter.rest()]:
        if not block.strip():
            continue
        event, payload = parse_event(block)
        meter.feed(event, json.loads(payload))
    return meter


def post(url: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/responses", json=body, headers={"authorization": "Bearer k", **headers})


def test_unstreamed_answer_usage_with_cached_reasoning_and_searches(fake_provider: str) -> None:
    answer = post(fake_provider, {"model": "gpt-5", "input": "news of today", "tools": [{"type": "web_search"}]},
                  **{"x-fake-cached-tokens": "2", "x-fake-reasoning-tokens": "5"}).json()
    usage = usage_from_response(answer)
    assert (usage.input_tokens, usage.cached_input_tokens) == (3, 2)
    assert (usage.output_tokens, usage.reasoning_tokens) == (3 + 5, 5)
    assert responses_tool_calls(answer["output"]) == {"web_searches": 1}
    # The adapter's generic body reader reads the same top-level usage.
    assert OpenAIAdapter().usage_from_body(answer).input_tokens == 3


def test_stream_usage_from_the_terminal_event(fake_provider: str) -> None:
    raw = post(fake_provider, {"model": "gpt-5", "input": "a b c", "stream": True,
                               "tools": [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["v"]}]},
               **{"x-fake-reasoning-tokens": "4", "x-fake-cached-tokens": "1"}).content
    meter = read_stream(raw)
    usage = meter.result()
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.reasoning_tokens) == (3, 1, 7, 4)
    assert meter.tool_calls == {"web_searches": 1, "file_searches": 1}
    assert meter.status == "completed" and meter.response_id.startswith("resp_")


def test_incomplete_and_failed_streams_are_metered() -> None:
    usage = {"input_tokens": 10, "output_tokens": 16, "total_tokens": 26,
             "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
    for kind, status in (("response.incomplete", "incomplete"), ("response.failed", "failed")):
        meter = ResponsesStreamUsage()
        meter.feed(kind, {"type": kind, "sequence_number": 9, "response": {"id": "resp_1", "status": status, "output": [], "usage": usage}})
        assert meter.result().output_tokens == 16 and meter.status == status


def test_events_without_usage_change_nothing() -> None:
    meter = ResponsesStreamUsage()
    meter.feed("response.output_text.delta", {"type": "response.output_text.delta", "delta": "hi", "usage": {"input_tokens": 99}})
    assert meter.result() == TokenUsage()


def test_chat_usage_still_read() -> None:
    usage = usage_from_openai({"prompt_tokens": 5, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 1}})
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) == (5, 2, 1)


def test_web_searches_are_billable_units() -> None:
    answer = {"id": "resp_1", "status": "completed", "output": [{"type": "web_search_call"}, {"type": "web_search_call"}],
              "usage": {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}}
    usage = usage_from_response(answer)
    assert usage.units.get("web_searches") == 2

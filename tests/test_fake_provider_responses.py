"""The fake provider's Responses API, judged by the openai SDK pointed straight at it (no gateway)."""
# ruff: noqa: F811  (the fixtures imported from fakeprovider_fixture are used as test arguments)

from __future__ import annotations

import json

import httpx
import openai
import pytest
from fakeprovider_fixture import fake_provider, fake_provider_url, fake_requests  # noqa: F401
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseReasoningItem,
)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


def client(url: str, prefix: str = "") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}{prefix}/v1", api_key="sk-test", max_retries=0)


def test_create_counts_words_and_answers_a_message(fake_provider: str) -> None:
    response = client(fake_provider).responses.create(
        model="gpt-5", instructions="Be brief.", input="What is the capital of France?"
    )
    assert response.output_text == "Hello from gpt-5."
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert isinstance(response.output[0], ResponseOutputMessage)
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (8, 3, 11)
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert fake_requests(fake_provider)[-1]["path"] == "/v1/responses"


def test_cached_and_reasoning_tokens_and_reasoning_item(fake_provider: str) -> None:
    response = client(fake_provider).responses.create(
        model="o4-mini",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "think hard please"}]}],
        reasoning={"effort": "high", "summary": "auto"},
        include=["reasoning.encrypted_content"],
        extra_headers={"x-fake-cached-tokens": "2", "x-fake-reasoning-tokens": "7"},
    )
    reasoning = response.output[0]
    assert isinstance(reasoning, ResponseReasoningItem)
    assert reasoning.summary[0].text == "Thinking about the answer."
    assert reasoning.encrypted_content
    assert response.usage.input_tokens == 3
    assert response.usage.input_tokens_details.cached_tokens == 2
    assert response.usage.output_tokens == 3 + 7
    assert response.usage.output_tokens_details.reasoning_tokens == 7


def test_function_call_round_trip_with_previous_response_id(fake_provider: str) -> None:
    oai = client(fake_provider)
    first = oai.responses.create(model="gpt-4.1", input="Weather in Paris?", tools=[WEATHER])
    call = first.output[0]
    assert isinstance(call, ResponseFunctionToolCall)
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert first.usage.output_tokens == 2  # {"city": "Paris"} is two words

    second = oai.responses.create(
        model="gpt-4.1",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "22C and sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == "The tool returned: 22C and sunny"
    assert second.previous_response_id == first.id
    # The stored conversation counts: "Weather in Paris?" (3) + "22C and sunny" (3).
    assert second.usage.input_tokens == 6


def test_unknown_previous_response_id_is_a_400(fake_provider: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(fake_provider).responses.create(model="gpt-4.1", previous_response_id="resp_nope", input="hi")
    assert caught.value.body["param"] == "previous_response_id"


def test_stream_events_rebuild_the_answer(fake_provider: str) -> None:
    kinds: list[str] = []
    numbers: list[int] = []
    with client(fake_provider).responses.stream(
        model="gpt-5",
        input="Hi there",
        reasoning={"summary": "auto"},
        extra_headers={"x-fake-chunks": "4", "x-fake-reasoning-tokens": "3"},
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            numbers.append(event.sequence_number)
        final = stream.get_final_response()
    assert numbers == list(range(len(numbers)))
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 4
    assert "response.reasoning_summary_text.delta" in kinds
    assert final.output_text == "Hello from gpt-5. Hello"
    assert final.usage.output_tokens == 4 + 3


def test_stream_function_call_arguments(fake_provider: str) -> None:
    with client(fake_provider).responses.stream(model="gpt-4.1", input="Weather?", tools=[WEATHER]) as stream:
        deltas = [event.delta for event in stream if event.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call" and "".join(deltas) == call.arguments == '{"city": "Paris"}'
    assert call.parsed_arguments == {"city": "Paris"}  # strict tools are parsed by the SDK


def test_raw_stream_is_event_and_data_lines(fake_provider: str) -> None:
    with httpx.stream(
        "POST",
        f"{fake_provider}/v1/responses",
        headers={"authorization": "Bearer sk"},
        json={"model": "gpt-5", "input": "hi", "stream": True},
    ) as answer:
        raw = answer.read().decode()
    blocks = [block for block in raw.split("\n\n") if block]
    first_event, first_data = blocks[0].split("\n")
    assert first_event == "event: response.created"
    assert json.loads(first_data.removeprefix("data: "))["response"]["status"] == "in_progress"
    last = json.loads(blocks[-1].split("\n")[1].removeprefix("data: "))
    completed = ResponseCompletedEvent.model_validate(last)
    assert completed.response.usage.total_tokens == 1 + 3
    assert "[DONE]" not in raw


def test_truncated_answer_is_incomplete(fake_provider: str) -> None:
    with client(fake_provider).responses.stream(
        model="gpt-5", input="hi", max_output_tokens=16, extra_headers={"x-fake-chunks": "20"}
    ) as stream:
        kinds = [event.type for event in stream]
    assert kinds[-1] == "response.incomplete"
    response = client(fake_provider).responses.create(
        model="gpt-5", input="hi", max_output_tokens=16, extra_headers={"x-fake-chunks": "20"}
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 16


def test_web_and_file_search_calls(fake_provider: str) -> None:
    response = client(fake_provider).responses.create(
        model="gpt-5",
        input="latest news",
        tools=[{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}],
    )
    kinds = [item.type for item in response.output]
    assert kinds == ["web_search_call", "file_search_call", "message"]
    assert response.output[0].action.query == "latest news"
    with client(fake_provider).responses.stream(model="gpt-5", input="news", tools=[{"type": "web_search"}]) as stream:
        streamed = [event.type for event in stream]
    assert "response.web_search_call.completed" in streamed


def test_retrieve_input_items_delete(fake_provider: str) -> None:
    oai = client(fake_provider)
    created = oai.responses.create(
        model="gpt-5",
        input=[
            {"role": "developer", "content": "Be kind."},
            {"role": "user", "content": "one"},
        ],
    )
    again = oai.responses.retrieve(created.id)
    assert again.output_text == created.output_text and again.id == created.id

    items = list(oai.responses.input_items.list(created.id, order="asc", limit=1))
    assert [item.role for item in items] == ["developer", "user"]  # two pages of one item each
    assert items[1].content[0].text == "one"

    oai.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(created.id)


def test_store_false_is_not_retrievable(fake_provider: str) -> None:
    oai = client(fake_provider)
    created = oai.responses.create(model="gpt-5", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(created.id)


def test_background_and_cancel(fake_provider: str) -> None:
    oai = client(fake_provider)
    queued = oai.responses.create(model="gpt-5", input="hi", background=True)
    assert queued.status == "queued" and queued.output == []
    cancelled = oai.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    done = oai.responses.create(model="gpt-5", input="hi")
    with pytest.raises(openai.BadRequestError):
        oai.responses.cancel(done.id)


def test_input_tokens_and_compact(fake_provider: str) -> None:
    oai = client(fake_provider)
    counted = oai.responses.input_tokens.count(model="gpt-5", input="three words here", instructions="Be brief.")
    assert counted.input_tokens == 5
    compacted = oai.responses.compact(
        model="gpt-5",
        input=[
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "bye"},
        ],
    )
    assert compacted.object == "response.compaction"
    assert [item.type for item in compacted.output] == ["message", "message", "compaction"]
    assert compacted.usage.input_tokens == 4 and compacted.usage.output_tokens == 1


def test_xai_prefix_and_auth(fake_provider: str) -> None:
    response = client(fake_provider, "/xai").responses.create(model="grok-4", input="hi")
    assert response.output_text == "Hello from grok-4."
    assert fake_requests(fake_provider)[-1]["prefix"] == "/xai"
    no_key = httpx.post(f"{fake_provider}/v1/responses", json={"model": "gpt-5", "input": "hi"})
    assert no_key.status_code == 401 and "API key" in no_key.json()["error"]["message"]
    wrong_method = httpx.get(f"{fake_provider}/v1/responses", headers={"authorization": "Bearer k"})
    assert wrong_method.status_code == 405

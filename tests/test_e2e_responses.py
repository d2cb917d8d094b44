"""The openai SDK's Responses API through the gateway: OpenAI and xAI passed through, Claude and Gemini translated."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from conftest import Gateway

pytestmark = pytest.mark.e2e

# (model, provider, prefix at the fake, translated)
MODELS = [
    ("gpt-4.1", "openai", "openai", False),
    ("grok-4", "xai", "xai", False),
    ("claude-sonnet-4-6", "anthropic", "anthropic", True),
    ("gemini-2.5-flash", "gemini", "gemini", True),
]
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def client(gw: Gateway, exec_id: str, key: str | None = None, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key or gw.key, max_retries=0,
                         default_headers={"x-execution-id": exec_id, **headers})


def records(gw: Gateway, exec_id: str, count: int = 1) -> list[dict]:
    rows = gw.wait_records(count=count, execution_id=exec_id)
    assert len(rows) == count, rows
    return rows


@pytest.mark.parametrize(("model", "provider", "prefix", "translated"), MODELS)
def test_create(gateway: Gateway, exec_id: str, model: str, provider: str, prefix: str, translated: bool) -> None:
    response = client(gateway, exec_id).responses.create(model=model, instructions="Be brief.",
                                                         input="hello there model")
    assert response.output_text == f"Hello from {model}." and response.status == "completed"
    assert response.model == model and response.usage.input_tokens == 5
    upstream = gateway.fake.last(prefix)
    assert gateway.key not in json.dumps(upstream)
    if provider == "anthropic":
        assert upstream["path"].endswith("/v1/messages") and upstream["body"]["system"][0]["text"] == "Be brief."
    elif provider == "gemini":
        assert upstream["path"].endswith(f"/v1beta/models/{model}:generateContent")
    else:
        assert upstream["path"].endswith("/v1/responses") and upstream["body"]["instructions"] == "Be brief."
    [record] = records(gateway, exec_id)
    assert (record["endpoint"], record["provider"], record["model"]) == ("responses", provider, model)
    assert record["input_tokens"] == 5 and record["output_tokens"] == response.usage.output_tokens
    assert record["cost_usd"] > 0 and record["status"] == 200


@pytest.mark.parametrize(("model", "provider", "prefix", "translated"), MODELS)
def test_stream(gateway: Gateway, exec_id: str, model: str, provider: str, prefix: str, translated: bool) -> None:
    with client(gateway, exec_id, **{"x-fake-chunks": "5"}).responses.stream(model=model, input="stream it") as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text and len(final.output_text.split()) == 5
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    [record] = records(gateway, exec_id)
    assert record["stream"] == 1 and record["input_tokens"] == 2 and record["output_tokens"] == 5
    assert record["cost_usd"] > 0 and record["ttft_ms"] is not None


@pytest.mark.parametrize(("model", "provider", "prefix", "translated"), MODELS)
def test_function_round_trip_with_previous_response_id(gateway: Gateway, exec_id: str, model: str, provider: str,
                                                       prefix: str, translated: bool) -> None:
    c = client(gateway, exec_id)
    first = c.responses.create(model=model, input="weather in Paris?", tools=[WEATHER])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    second = c.responses.create(model=model, previous_response_id=first.id, tools=[WEATHER],
                                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny 22C"}])
    assert second.output_text == "The tool returned: sunny 22C"
    upstream = gateway.fake.last(prefix)["body"]
    if provider == "anthropic":  # the stored conversation was sent again, translated
        assert [m["role"] for m in upstream["messages"]] == ["user", "assistant", "user"]
        assert upstream["messages"][1]["content"][-1]["type"] == "tool_use"
    elif provider == "gemini":
        assert [c["role"] for c in upstream["contents"]] == ["user", "model", "user"]
        assert upstream["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"
    else:  # the provider keeps the conversation: the id goes through
        assert upstream["previous_response_id"] == first.id
    rows = records(gateway, exec_id, 2)
    assert all(r["cost_usd"] > 0 for r in rows)

    again = c.responses.retrieve(second.id)
    assert again.id == second.id and again.output_text == second.output_text
    items = list(c.responses.input_items.list(second.id))
    assert items[0].type == "function_call_output"


@pytest.mark.parametrize(("model", "provider", "prefix", "translated"), MODELS)
def test_another_key_gets_404(gateway: Gateway, exec_id: str, model: str, provider: str, prefix: str,
                              translated: bool) -> None:
    created = client(gateway, exec_id).responses.create(model=model, input="mine")
    name = f"other-{exec_id}"
    other = json.loads(gateway.cli("keys", "create", name, "--json").stdout)["key"]
    intruder = client(gateway, exec_id, key=other)
    gateway.fake.clear()
    with pytest.raises(openai.NotFoundError):
        intruder.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        intruder.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        intruder.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        intruder.responses.create(model=model, previous_response_id=created.id, input="continue")
    assert gateway.fake.requests() == []  # nothing reached the provider
    # The owner still can.
    assert client(gateway, exec_id).responses.retrieve(created.id).id == created.id


def test_unknown_response_id_is_404(gateway: Gateway, exec_id: str) -> None:
    with pytest.raises(openai.NotFoundError):
        client(gateway, exec_id).responses.retrieve("resp_never_made_here")
    bad = httpx.get(f"{gateway.url}/v1/responses/bad%20id", headers={"authorization": f"Bearer {gateway.key}"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_model"


@pytest.mark.parametrize(("model", "prefix"), [("gpt-5", "openai"), ("grok-4", "xai")])
def test_companions_pass_through(gateway: Gateway, exec_id: str, model: str, prefix: str) -> None:
    c = client(gateway, exec_id)
    counted = c.responses.input_tokens.count(model=model, input="three words here")
    assert counted.input_tokens == 3
    compacted = c.responses.compact(model=model, input=[{"role": "user", "content": "a b"},
                                                        {"role": "assistant", "content": "c"}])
    assert compacted.output[-1].type == "compaction"
    queued = c.responses.create(model=model, input="later", background=True)
    assert c.responses.cancel(queued.id).status == "cancelled"
    c.responses.delete(queued.id)
    assert gateway.fake.last(prefix)["method"] == "DELETE"
    rows = gateway.wait_records(count=5, execution_id=exec_id)
    endpoints = [r["endpoint"] for r in rows]
    assert endpoints == ["responses.input_tokens", "responses.compact", "responses", "responses.cancel",
                         "responses.delete"]
    assert rows[1]["cost_usd"] > 0 and rows[1]["input_tokens"] == 3


def test_web_search_calls_are_counted(gateway: Gateway, exec_id: str) -> None:
    response = client(gateway, exec_id).responses.create(model="gpt-5", input="news", tools=[{"type": "web_search"}])
    assert response.output[0].type == "web_search_call"
    [record] = records(gateway, exec_id)
    assert record["input_tokens"] == 1


def test_model_lists_in_the_sdks_shape(gateway: Gateway) -> None:
    headers = {"authorization": f"Bearer {gateway.key}"}
    anthropic_list = httpx.get(f"{gateway.url}/v1/models", headers={**headers, "anthropic-version": "2023-06-01"},
                               params={"limit": 2}).json()
    assert len(anthropic_list["data"]) == 2 and anthropic_list["has_more"] is True
    assert anthropic_list["data"][0]["type"] == "model" and anthropic_list["data"][0]["display_name"]
    every_claude = httpx.get(f"{gateway.url}/v1/models", headers={**headers, "anthropic-version": "2023-06-01"},
                             params={"limit": 1000}).json()["data"]
    assert every_claude and all(m["id"].startswith("claude") for m in every_claude)  # /v1/messages serves no GPT
    google = httpx.get(f"{gateway.url}/v1beta/models", headers={"x-goog-api-key": gateway.key},
                       params={"pageSize": 1000}).json()
    assert google["models"][0]["name"].startswith("models/")
    assert all(m["name"].startswith(("models/gemini", "models/gemma", "models/imagen", "models/veo", "models/learnlm",
                                     "models/text-embedding", "models/embedding"))
               for m in google["models"]), [m["name"] for m in google["models"]]
    one = httpx.get(f"{gateway.url}/v1/models/gpt-4.1", headers=headers).json()
    assert (one["id"], one["object"], one["owned_by"]) == ("gpt-4.1", "model", "openai")
    gemini = httpx.get(f"{gateway.url}/v1beta/models/gemini-2.5-flash", headers={"x-goog-api-key": gateway.key}).json()
    assert gemini["name"] == "models/gemini-2.5-flash"
    missing = httpx.get(f"{gateway.url}/v1/models/gpt-nope", headers=headers)
    assert missing.status_code == 404


def test_agent_session_headers_become_the_execution_id(gateway: Gateway, exec_id: str) -> None:
    headers = {"authorization": f"Bearer {gateway.key}", "x-workflow-tag": exec_id}
    body = {"model": "gpt-4.1", "input": "hi"}
    httpx.post(f"{gateway.url}/v1/responses", json=body, headers={**headers, "session-id": f"codex-{exec_id}"})
    httpx.post(f"{gateway.url}/v1/messages", headers={**headers, "x-claude-code-session-id": f"cc-{exec_id}",
                                                      "anthropic-version": "2023-06-01"},
               json={"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
    httpx.post(f"{gateway.url}/v1/responses", json=body,
               headers={**headers, "session-id": "ignored", "x-execution-id": f"explicit-{exec_id}"})
    rows = gateway.wait_records(count=3, workflow=exec_id)
    assert [r["execution_id"] for r in rows] == [f"codex-{exec_id}", f"cc-{exec_id}", f"explicit-{exec_id}"]

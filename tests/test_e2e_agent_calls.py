"""End to end, with the official SDKs: the calls agents make besides generating (issue 14's remaining gaps).

Gemini embeddings metered (their answers carry no usage: the gateway counts the input with `:countTokens`),
count_tokens / countTokens / Responses input_tokens recorded free, /v1/responses/compact for translated
models refused with its reason, refused calls recorded with the model asked for, and 404s for unknown
models in the asking SDK's error shape.
"""

from __future__ import annotations

import json
import time
import uuid

import anthropic
import httpx
import openai
import pytest
from conftest import Gateway
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

pytestmark = pytest.mark.e2e


def new_key(gw: Gateway, *options: str) -> str:
    return json.loads(gw.cli("keys", "create", f"ac-{uuid.uuid4().hex[:8]}", *options, "--json").stdout)["key"]


def genai_client(gw: Gateway, key: str | None = None, **headers: str) -> genai.Client:
    return genai.Client(api_key=key or gw.key, http_options=types.HttpOptions(
        base_url=gw.url, api_version="v1beta", headers=headers))


def anthropic_client(gw: Gateway, key: str | None = None, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key or gw.key, default_headers=headers, max_retries=0)


def openai_client(gw: Gateway, key: str | None = None, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key or gw.key, default_headers=headers, max_retries=0)


def fake_requests(gw: Gateway, path_end: str, marker: str) -> list[dict]:
    """The requests the fake provider got on a path ending with `path_end` whose body mentions `marker`."""
    return [r for r in gw.fake.requests() if r["path"].endswith(path_end) and marker in json.dumps(r.get("body"))]


def wait_fake(gw: Gateway, path_end: str, marker: str, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = fake_requests(gw, path_end, marker)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# --- 1. Gemini embeddings ---------------------------------------------------------------------------


def test_genai_embed_content_is_metered_by_counting_its_input(gateway: Gateway, exec_id: str) -> None:
    """The SDK calls :batchEmbedContents, whose answer has only vectors: the gateway counts the same contents
    with the model's free :countTokens after answering, and prices the tokens (gemini-embedding-001)."""
    marker = uuid.uuid4().hex[:10]
    client = genai_client(gateway, **{"x-execution-id": exec_id})
    result = client.models.embed_content(model="gemini-embedding-001",
                                         contents=[f"alpha beta {marker}", f"gamma {marker}"])
    assert result.embeddings is not None and len(result.embeddings) == 2
    assert len(result.embeddings[0].values or []) == 3072
    [embed] = fake_requests(gateway, "/v1beta/models/gemini-embedding-001:batchEmbedContents", marker)
    [count] = wait_fake(gateway, "/v1beta/models/gemini-embedding-001:countTokens", marker)
    assert count["body"] == {"contents": [r["content"] for r in embed["body"]["requests"]]}
    assert count["headers"].get("x-goog-api-key") and gateway.key not in json.dumps(count)
    [record] = gateway.wait_records(execution_id=exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == ("gemini", "gemini-embedding-001", "gemini")
    assert record["input_tokens"] == 5 and record["output_tokens"] == 0  # the fake counts words
    assert record["cost_usd"] == pytest.approx(5 * 0.15 / 1e6)
    assert json.loads(record["details"])["counters"] == {"counted_input_tokens": 5}


def test_embed_content_single_is_counted_too(gateway: Gateway, exec_id: str) -> None:
    marker = uuid.uuid4().hex[:10]
    r = httpx.post(f"{gateway.url}/v1beta/models/gemini-embedding-001:embedContent",
                   headers={"x-goog-api-key": gateway.key, "x-execution-id": exec_id},
                   json={"content": {"parts": [{"text": f"one two three {marker}"}]}}, timeout=30)
    assert r.status_code == 200 and len(r.json()["embedding"]["values"]) == 3072
    assert "x-tokensense-request-id" in r.headers
    assert wait_fake(gateway, "/v1beta/models/gemini-embedding-001:countTokens", marker)
    [record] = gateway.wait_records(execution_id=exec_id)
    assert record["input_tokens"] == 4 and record["cost_usd"] > 0


def test_embed_answer_with_usage_metadata_is_metered_from_it(gateway: Gateway, exec_id: str) -> None:
    """google-genai reads `usageMetadata` on embedding answers when the API sends it: then it is the usage,
    and no count is made."""
    marker = uuid.uuid4().hex[:10]
    usage = {"promptTokenCount": 11, "totalTokenCount": 11}
    client = genai_client(gateway, **{"x-execution-id": exec_id, "x-fake-usage": json.dumps(usage)})
    result = client.models.embed_content(model="gemini-embedding-001", contents=f"hello {marker}")
    assert result.usage_metadata is not None and result.usage_metadata.prompt_token_count == 11
    [record] = gateway.wait_records(execution_id=exec_id)
    assert record["input_tokens"] == 11 and record["cost_usd"] == pytest.approx(11 * 0.15 / 1e6)
    assert not fake_requests(gateway, ":countTokens", marker)


def test_openai_embeddings_route_refuses_gemini_models_clearly(gateway: Gateway) -> None:
    """/v1/embeddings speaks OpenAI's format; Gemini embedding models are served on their native routes."""
    with pytest.raises(openai.BadRequestError) as e:
        openai_client(gateway).embeddings.create(model="gemini-embedding-001", input="hi")
    assert e.value.body["code"] == "unsupported_model_for_endpoint"


# --- 2./3. free counting calls ------------------------------------------------------------------------


def test_anthropic_count_tokens_is_free_and_not_refused_by_a_spent_budget(gateway: Gateway, exec_id: str) -> None:
    key = new_key(gateway, "--budget-usd", "0.0000001")
    client = anthropic_client(gateway, key, **{"x-execution-id": exec_id})
    with pytest.raises(anthropic.APIStatusError) as refused:  # a generating call does not fit the budget
        client.messages.create(model="claude-sonnet-4-6", max_tokens=50,
                               messages=[{"role": "user", "content": "hello there"}])
    assert refused.value.status_code == 402
    counted = client.messages.count_tokens(model="claude-sonnet-4-6",
                                           messages=[{"role": "user", "content": "hello there friend"}])
    assert counted.input_tokens == 3
    records = gateway.wait_records(2, execution_id=exec_id)
    by_endpoint = {r["endpoint"]: r for r in records}
    free = by_endpoint["messages.count_tokens"]
    assert (free["status"], free["model"], free["cost_usd"]) == (200, "claude-sonnet-4-6", 0)
    assert free["cost_usd"] is not None  # priced (free), not unpriced
    assert by_endpoint["messages"]["status"] == 402 and by_endpoint["messages"]["model"] == "claude-sonnet-4-6"


def test_gemini_count_tokens_is_free(gateway: Gateway, exec_id: str) -> None:
    key = new_key(gateway, "--budget-usd", "0.0000001")
    client = genai_client(gateway, key, **{"x-execution-id": exec_id})  # kept: a dropped client closes its pool
    result = client.models.count_tokens(model="gemini-2.5-flash", contents="how many tokens is this")
    assert result.total_tokens == 5
    [record] = gateway.wait_records(execution_id=exec_id)
    assert (record["endpoint"], record["model"], record["status"]) == ("gemini", "gemini-2.5-flash", 200)
    assert record["cost_usd"] == 0 and record["cost_usd"] is not None


@pytest.mark.parametrize(("model", "upstream"), [
    ("claude-sonnet-4-6", "/v1/messages/count_tokens"),
    ("gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:countTokens"),
])
def test_responses_input_tokens_for_translated_models(gateway: Gateway, exec_id: str, model: str,
                                                      upstream: str) -> None:
    marker = uuid.uuid4().hex[:10]
    client = openai_client(gateway, **{"x-execution-id": exec_id})
    counted = client.responses.input_tokens.count(
        model=model, instructions="be brief", input=f"count these four {marker}",
        tools=[{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}])
    assert counted.object == "response.input_tokens" and counted.input_tokens > 4
    [sent] = fake_requests(gateway, upstream, marker)
    if model.startswith("claude"):
        assert set(sent["body"]) <= {"model", "messages", "system", "tools", "tool_choice", "thinking"}
        assert sent["body"]["system"] and sent["body"]["tools"][0]["name"] == "lookup"
    else:
        inner = sent["body"]["generateContentRequest"]
        assert inner["model"] == f"models/{model}" and inner["systemInstruction"]
    [record] = gateway.wait_records(execution_id=exec_id)
    assert (record["endpoint"], record["model"], record["status"]) == ("responses.input_tokens", model, 200)
    assert record["cost_usd"] == 0 and record["cost_usd"] is not None


@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "gemini-2.5-flash"])
def test_responses_compact_for_translated_models_is_400_with_the_reason(gateway: Gateway, exec_id: str,
                                                                        model: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        openai_client(gateway, **{"x-execution-id": exec_id}).responses.compact(
            model=model, input=[{"role": "user", "content": "hello"}])
    assert e.value.body["code"] == "unsupported_model_for_endpoint"
    assert "OpenAI models only" in e.value.body["message"] and "encrypted" in e.value.body["message"]
    [record] = gateway.wait_records(execution_id=exec_id)
    assert (record["status"], record["model"], record["endpoint"]) == (400, model, "responses.compact")


# --- 4. refused calls keep the model asked for -------------------------------------------------------


def _chat(gw: Gateway, key: str, exec_id: str, model: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions",
                      headers={"authorization": f"Bearer {key}", "x-execution-id": exec_id},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
                            **extra}, timeout=30)


def test_refused_calls_keep_the_requested_model(gateway: Gateway, exec_id: str) -> None:
    only_gpt = new_key(gateway, "--allow-model", "gpt-*")
    assert _chat(gateway, only_gpt, exec_id, "claude-sonnet-4-6").status_code == 403
    broke = new_key(gateway, "--budget-usd", "0.0000001")
    assert _chat(gateway, broke, exec_id, "gpt-4o-mini").status_code == 402
    slow = new_key(gateway, "--rpm", "1")
    assert _chat(gateway, slow, exec_id, "gpt-4o-mini").status_code == 200
    assert _chat(gateway, slow, exec_id, "gpt-4.1-mini").status_code == 429
    assert _chat(gateway, gateway.key, exec_id, "gpt-no-such-model-9").status_code == 404
    assert _chat(gateway, gateway.key, exec_id, "openai/gpt-4o-mini", max_tokens="many").status_code == 400
    records = gateway.wait_records(6, execution_id=exec_id)
    assert [(r["status"], r["model"]) for r in records] == [
        (403, "claude-sonnet-4-6"), (402, "gpt-4o-mini"), (200, "gpt-4o-mini"), (429, "gpt-4.1-mini"),
        (404, "gpt-no-such-model-9"), (400, "openai/gpt-4o-mini")]


# --- 5. 404s in the asking SDK's shape ---------------------------------------------------------------


def test_unknown_model_is_anthropic_not_found_for_the_anthropic_sdk(gateway: Gateway) -> None:
    client = anthropic_client(gateway)
    with pytest.raises(anthropic.NotFoundError) as e:
        client.models.retrieve("claude-no-such-model")
    assert e.value.body == {"type": "error", "error": {"type": "not_found_error", "message": e.value.body["error"]
                                                       ["message"]}}
    assert "claude-no-such-model" in e.value.message
    with pytest.raises(anthropic.NotFoundError) as m:
        client.messages.create(model="claude-no-such-model", max_tokens=10,
                               messages=[{"role": "user", "content": "hi"}])
    assert m.value.body["type"] == "error" and m.value.body["error"]["type"] == "not_found_error"
    assert "claude-no-such-model" in m.value.message


def test_unknown_model_is_google_not_found_for_genai(gateway: Gateway) -> None:
    client = genai_client(gateway)
    with pytest.raises(genai_errors.ClientError) as e:
        client.models.get(model="gemini-no-such-model")
    assert (e.value.code, e.value.status) == (404, "NOT_FOUND") and "gemini-no-such-model" in (e.value.message or "")
    with pytest.raises(genai_errors.ClientError) as g:
        client.models.generate_content(model="gemini-no-such-model", contents="hi")
    assert (g.value.code, g.value.status) == (404, "NOT_FOUND") and "gemini-no-such-model" in (g.value.message or "")


def test_unknown_model_is_openai_not_found_for_the_openai_sdk(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        openai_client(gateway).models.retrieve("gpt-no-such-model")
    assert e.value.body["code"] == "model_not_found" and "gpt-no-such-model" in e.value.body["message"]


def test_an_admin_key_reads_any_calls_record_and_others_do_not(gateway: Gateway, exec_id: str) -> None:
    """`keys create --admin`: a key that may read every record, also through `GET /v1/tokensense/requests/{id}`."""
    answer = _chat(gateway, gateway.key, exec_id, "gpt-4o-mini")
    assert answer.status_code == 200
    request_id = answer.headers["x-tokensense-request-id"]
    url = f"{gateway.url}/v1/tokensense/requests/{request_id}"
    admin, other = new_key(gateway, "--admin"), new_key(gateway)
    read = httpx.get(url, headers={"authorization": f"Bearer {admin}"}, timeout=30)
    assert read.status_code == 200
    assert read.json()["request_id"] == request_id and read.json()["execution_id"] == exec_id
    assert httpx.get(url, headers={"authorization": f"Bearer {other}"}, timeout=30).status_code == 404
    assert httpx.get(url, headers={"authorization": f"Bearer {gateway.key}"}, timeout=30).status_code == 200

"""End to end: the official openai SDK through the gateway process to the fake provider process."""

from __future__ import annotations

import openai
import pytest
from conftest import PROVIDER_KEYS, Gateway

pytestmark = pytest.mark.e2e


def client(gw: Gateway, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, default_headers=headers, max_retries=0)


def assert_forwarded(gw: Gateway, prefix: str, provider: str) -> dict:
    req = gw.fake.last(prefix)
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["authorization"] == f"Bearer {PROVIDER_KEYS[provider]}"
    assert gw.key not in str(req), "the TokenSense key must not reach the provider"
    return req


@pytest.mark.parametrize(("model", "provider"), [
    ("gpt-4o-mini", "openai"), ("grok-3-mini", "xai"), ("mistral-small-latest", "mistral"),
])
def test_chat(gateway: Gateway, exec_id: str, model: str, provider: str) -> None:
    c = client(gateway, **{"x-workflow-tag": "wf-chat", "x-step": "answer", "x-execution-id": exec_id,
                           "x-source": "pytest"})
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "say hello to the tests"}])
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens == 5
    assert float(raw.headers["x-tokensense-cost-usd"]) > 0
    assert raw.headers["x-tokensense-request-id"]
    req = assert_forwarded(gateway, provider, provider)
    assert req["body"]["model"] == model
    [record] = gateway.wait_records(execution_id=exec_id)
    assert record["provider"] == provider and record["model"] == model and record["status"] == 200
    assert record["input_tokens"] == completion.usage.prompt_tokens
    assert record["output_tokens"] == completion.usage.completion_tokens
    assert record["cost_usd"] > 0
    assert (record["workflow"], record["step"], record["source"], record["project"]) == \
        ("wf-chat", "answer", "pytest", "proj-default")
    assert record["key_name"] == "e2e" and record["stream"] == 0
    assert record["request_id"] == raw.headers["x-tokensense-request-id"]


@pytest.mark.parametrize(("model", "provider"), [
    ("gpt-4o-mini", "openai"), ("grok-3-mini", "xai"), ("mistral-small-latest", "mistral"),
])
def test_streamed_chat_without_include_usage_hides_the_usage_chunk(gateway: Gateway, exec_id: str, model: str,
                                                                    provider: str) -> None:
    c = client(gateway, **{"x-workflow-tag": "wf-stream", "x-execution-id": exec_id})
    chunks = list(c.chat.completions.create(model=model, stream=True,
                                            messages=[{"role": "user", "content": "stream to me please"}]))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    assert all(ch.choices for ch in chunks), "the usage-only chunk the client did not ask for must be removed"
    req = assert_forwarded(gateway, provider, provider)
    assert req["body"]["stream_options"] == {"include_usage": True}
    [record] = gateway.wait_records(execution_id=exec_id)
    assert record["stream"] == 1 and record["input_tokens"] == 4 and record["output_tokens"] > 0
    assert record["cost_usd"] > 0 and record["ttft_ms"] is not None


def test_streamed_chat_with_include_usage_keeps_it(gateway: Gateway, exec_id: str) -> None:
    c = client(gateway, **{"x-execution-id": exec_id})
    chunks = list(c.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "count my tokens"}]))
    usage_chunks = [ch for ch in chunks if ch.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].usage.prompt_tokens == 3
    [record] = gateway.wait_records(execution_id=exec_id)
    assert record["input_tokens"] == 3
    assert record["output_tokens"] == usage_chunks[0].usage.completion_tokens


def test_embeddings(gateway: Gateway, exec_id: str) -> None:
    c = client(gateway, **{"x-execution-id": exec_id, "x-project": "search"})
    result = c.embeddings.create(model="text-embedding-3-small", input=["one two three", "four five"])
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    assert_forwarded(gateway, "openai", "openai")
    [record] = gateway.wait_records(execution_id=exec_id)
    assert record["endpoint"] == "embeddings" and record["input_tokens"] == 5 and record["cost_usd"] > 0
    assert record["project"] == "search"


def test_models_lists_what_the_key_can_use(gateway: Gateway) -> None:
    ids = {m.id for m in client(gateway).models.list()}
    assert {"gpt-4o-mini", "claude-sonnet-4-6", "gemini-2.5-flash", "grok-3-mini"} <= ids
    assert {"dall-e-3", "whisper-1", "fal-ai/flux/dev"} <= ids  # media models from the media price table

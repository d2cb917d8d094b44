"""End to end with the official anthropic and google-genai SDKs on the native passthrough routes."""

from __future__ import annotations

import anthropic
import pytest
from conftest import PROVIDER_KEYS, STORED_ANTHROPIC_KEY, Gateway
from google import genai
from google.genai import types

pytestmark = pytest.mark.e2e


def anthropic_client(gw: Gateway, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.key, default_headers=headers, max_retries=0)


def genai_client(gw: Gateway, api_version: str = "v1beta", **headers: str) -> genai.Client:
    return genai.Client(api_key=gw.key, http_options=types.HttpOptions(
        base_url=gw.url, api_version=api_version, headers=headers))


def test_anthropic_messages(gateway: Gateway, exec_id: str) -> None:
    c = anthropic_client(gateway, **{"x-workflow-tag": "wf-claude", "x-execution-id": exec_id})
    message = c.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                messages=[{"role": "user", "content": "hello claude"}])
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.input_tokens == 2
    req = gateway.fake.last("anthropic")
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["x-api-key"] == STORED_ANTHROPIC_KEY  # the stored, encrypted key was used
    assert gateway.key not in str(req)
    [record] = gateway.wait_records(execution_id=exec_id)
    assert (record["provider"], record["endpoint"], record["workflow"]) == ("anthropic", "messages", "wf-claude")
    assert record["input_tokens"] == 2 and record["output_tokens"] == message.usage.output_tokens
    assert record["cost_usd"] > 0


def test_anthropic_messages_stream_with_cache_tokens(gateway: Gateway, exec_id: str) -> None:
    c = anthropic_client(gateway, **{"x-execution-id": exec_id, "x-fake-cached-tokens": "6"})
    with c.messages.stream(model="claude-sonnet-4-6", max_tokens=100,
                           messages=[{"role": "user", "content": "stream me a short answer please"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text and text
    [record] = gateway.wait_records(execution_id=exec_id)
    assert record["stream"] == 1
    # six prompt words, all six read from the cache
    assert record["input_tokens"] == 6 and record["cached_input_tokens"] == 6
    assert record["output_tokens"] == final.usage.output_tokens > 0
    assert record["cost_usd"] > 0 and record["ttft_ms"] is not None


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
def test_gemini_generate_content(gateway: Gateway, exec_id: str, api_version: str) -> None:
    c = genai_client(gateway, api_version, **{"x-workflow-tag": "wf-gemini", "x-execution-id": exec_id})
    response = c.models.generate_content(model="gemini-2.5-flash", contents="hello gemini friend")
    assert response.text
    assert response.usage_metadata.prompt_token_count == 3
    req = gateway.fake.last("gemini")
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["x-goog-api-key"] == PROVIDER_KEYS["gemini"]
    assert gateway.key not in str(req)
    assert req["path"].endswith(f"/{api_version}/models/gemini-2.5-flash:generateContent")
    [record] = gateway.wait_records(execution_id=exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == ("gemini", "gemini-2.5-flash", "gemini")
    assert record["input_tokens"] == 3 and record["cost_usd"] > 0


def test_gemini_stream_with_reasoning_tokens(gateway: Gateway, exec_id: str) -> None:
    c = genai_client(gateway, **{"x-execution-id": exec_id, "x-fake-reasoning-tokens": "7"})
    chunks = list(c.models.generate_content_stream(model="gemini-2.5-flash", contents="tell me a story"))
    text = "".join(ch.text or "" for ch in chunks)
    assert text
    req = gateway.fake.last("gemini")
    assert req["query"].get("alt") == "sse"
    [record] = gateway.wait_records(execution_id=exec_id)
    last = chunks[-1].usage_metadata
    assert record["stream"] == 1 and record["input_tokens"] == 4
    assert record["reasoning_tokens"] == 7
    assert record["output_tokens"] == last.candidates_token_count + 7
    assert record["cost_usd"] > 0


def test_gemini_key_in_query_string_is_accepted_and_removed(gateway: Gateway, exec_id: str) -> None:
    import httpx

    r = httpx.post(f"{gateway.url}/v1beta/models/gemini-2.5-flash:generateContent",
                   params={"key": gateway.key}, headers={"x-execution-id": exec_id},
                   json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert r.status_code == 200, r.text
    req = gateway.fake.last("gemini")
    assert "key" not in req["query"]
    assert gateway.key not in str(req)

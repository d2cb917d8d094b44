"""Counting the input of answers without usage (Gemini embeddings), and what the record says when it fails."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tokensense.core.endpoints import Endpoint
from tokensense.core.usage import TokenUsage
from tokensense.gateway.call import CallContext
from tokensense.gateway.forward import PendingUpstream
from tokensense.gateway.input_count import InputCount, count_input_tokens
from tokensense.gateway.record import build_record
from tokensense.gateway.routing import classify
from tokensense.gateway.upstream_client import UpstreamClient
from tokensense.metering.pricing import PriceBook
from tokensense.providers import PROVIDERS
from tokensense.providers.base import Upstream
from tokensense.providers.gemini import GOOGLE_ERRORS
from tokensense.providers.gemini import NATIVE as GEMINI_NATIVE

GEMINI = PROVIDERS["gemini"]


def test_gemini_counts_embed_and_batch_embed_inputs_with_count_tokens() -> None:
    content = {"parts": [{"text": "hello"}]}
    assert GEMINI.input_count(GEMINI_NATIVE, "embedContent", "gemini-embedding-001", "v1beta",
                              {"content": content}) == \
        ("/v1beta/models/gemini-embedding-001:countTokens", {"contents": [content]})
    other = {"parts": [{"text": "world"}]}
    assert GEMINI.input_count(GEMINI_NATIVE, "batchEmbedContents", "gemini-embedding-001", "v1",
                              {"requests": [{"content": content}, {"content": other}]}) == \
        ("/v1/models/gemini-embedding-001:countTokens", {"contents": [content, other]})
    # generation answers carry usageMetadata; nothing to count
    assert GEMINI.input_count(GEMINI_NATIVE, "generateContent", "gemini-2.5-flash", "v1beta", {}) is None
    assert GEMINI.input_count(GEMINI_NATIVE, "embedContent", "gemini-embedding-001", None, {"content": "x"}) is None
    assert GEMINI.counted_tokens({"totalTokens": 7}) == 7 and GEMINI.counted_tokens({"error": {}}) is None
    assert PROVIDERS["openai"].input_count(Endpoint.EMBEDDINGS, None, "text-embedding-3-small", None, {}) is None


def _count(handler) -> TokenUsage | None:
    async def run() -> TokenUsage | None:
        client = UpstreamClient(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        pending = PendingUpstream(GEMINI, "https://gemini.test", "provider-key", Upstream(GEMINI_NATIVE, "/x"))
        try:
            return await count_input_tokens(client, InputCount.for_gateway(
                pending, "/v1beta/models/m:countTokens", {"contents": [{"parts": [{"text": "a b"}]}]}))
        finally:
            await client.close()

    return asyncio.run(run())


def test_count_input_tokens_sends_the_provider_key_and_reads_the_total() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"totalTokens": 2})

    usage = _count(handler)
    assert usage is not None and usage.input_tokens == 2 and usage.counters == {"counted_input_tokens": 2}
    assert str(seen[0].url) == "https://gemini.test/v1beta/models/m:countTokens"
    assert seen[0].headers["x-goog-api-key"] == "provider-key"
    assert json.loads(seen[0].content) == {"contents": [{"parts": [{"text": "a b"}]}]}


@pytest.mark.parametrize("answer", [
    httpx.Response(500, json={"error": {"message": "boom"}}),
    httpx.Response(200, content=b"not json"),
    httpx.Response(200, json={"nothing": 1}),
])
def test_a_failed_count_is_none(answer: httpx.Response) -> None:
    assert _count(lambda request: answer) is None


def test_a_connection_failure_is_none() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    assert _count(handler) is None


def _call(**fields) -> CallContext:
    call = CallContext(GEMINI_NATIVE, GOOGLE_ERRORS, provider=GEMINI, model="gemini-embedding-001",
                       action="embedContent")
    for name, value in fields.items():
        setattr(call, name, value)
    return call


def test_uncounted_tokens_are_recorded_unpriced_never_zero() -> None:
    prices = PriceBook()
    assert build_record(_call(usage=TokenUsage(input_tokens=1000)), status=200, prices=prices).cost_usd == \
        pytest.approx(1000 * 0.15 / 1e6)
    assert build_record(_call(usage_unknown=True), status=200, prices=prices).cost_usd is None


def test_free_calls_are_recorded_at_zero() -> None:
    vertex = "/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash"
    for path in ("/v1/messages/count_tokens", "/v1/responses/input_tokens", "/v1beta/models/gemini-2.5-flash:countTokens",
                 f"{vertex}:countTokens"):
        assert classify("POST", path).free, path
    for path in ("/v1beta/models/gemini-embedding-001:embedContent", "/v1/messages", f"{vertex}:generateContent"):
        assert not classify("POST", path).free, path
    record = build_record(_call(free=True, usage=TokenUsage(input_tokens=50)), status=200, prices=PriceBook())
    assert record.cost_usd == 0

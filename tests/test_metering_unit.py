"""Usage extraction, SSE framing, stream metering and pricing on recorded provider payloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokensense.core.usage import TokenUsage
from tokensense.gateway.call import CallContext
from tokensense.gateway.record import build_record
from tokensense.gateway.routing import Endpoint
from tokensense.gateway.stream import PassthroughStream
from tokensense.metering.attribution import attribution
from tokensense.metering.pricing import PriceBook
from tokensense.metering.sse import EventSplitter, parse_event
from tokensense.metering.usage_extract import find_usage_object
from tokensense.providers import PROVIDERS
from tokensense.providers.openai import OPENAI_ERRORS

STREAMS = Path(__file__).parent / "fixtures" / "streams"


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_event_splitter_reassembles_events_across_any_chunking(size: int) -> None:
    raw = (STREAMS / "anthropic_messages.sse").read_bytes()
    splitter = EventSplitter()
    events = [e for chunk in chunked(raw, size) for e in splitter.feed(chunk)]
    assert b"".join(events) + splitter.rest() == raw
    assert len(events) == 8
    assert parse_event(events[0])[0] == "message_start"


def test_event_splitter_handles_crlf_events() -> None:
    raw = (STREAMS / "gemini_stream.sse").read_bytes()
    splitter = EventSplitter()
    events = [e for chunk in chunked(raw, 5) for e in splitter.feed(chunk)]
    assert len(events) == 2
    assert json.loads(parse_event(events[1])[1])["usageMetadata"]["thoughtsTokenCount"] == 25


def run_stream(provider: str, fixture: str, *, drop: bool, size: int = 13) -> tuple[bytes, TokenUsage]:
    adapter = PROVIDERS[provider]
    call = CallContext(Endpoint.CHAT, OPENAI_ERRORS)
    collector = adapter.stream_usage()
    stream = PassthroughStream(call, collector, adapter.usage_markers(), drop_usage_chunk=drop)
    raw = (STREAMS / fixture).read_bytes()
    pieces = [stream(c) for c in chunked(raw, size)]
    # Nothing to send is an empty list, never b"" (mitmproxy would write an empty chunk: the end of the body).
    assert all(p != b"" for p in pieces)
    out = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in pieces) + stream(b"")
    assert call.first_token is not None
    return out, collector.result()


def test_openai_stream_usage_is_read_and_passed_through_unchanged_when_client_asked() -> None:
    raw = (STREAMS / "openai_chat_include_usage.sse").read_bytes()
    out, usage = run_stream("openai", "openai_chat_include_usage.sse", drop=False)
    assert out == raw
    assert usage == TokenUsage(input_tokens=19, output_tokens=3, service_tier="default")


def test_openai_usage_chunk_is_removed_when_only_tokensense_asked() -> None:
    out, usage = run_stream("openai", "openai_chat_include_usage.sse", drop=True)
    assert b'"prompt_tokens"' not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert out.count(b"data: ") == 5  # four content chunks and [DONE]
    assert usage.input_tokens == 19 and usage.output_tokens == 3


def test_anthropic_stream_usage_from_message_start_and_delta() -> None:
    raw = (STREAMS / "anthropic_messages.sse").read_bytes()
    out, usage = run_stream("anthropic", "anthropic_messages.sse", drop=False)
    assert out == raw
    # input_tokens counts cache reads and writes too (TokenSense convention)
    assert usage == TokenUsage(input_tokens=472 + 100 + 2048, output_tokens=15, cached_input_tokens=2048,
                               cache_write_tokens=100, service_tier="standard")


def test_gemini_stream_usage_from_last_usage_metadata() -> None:
    raw = (STREAMS / "gemini_stream.sse").read_bytes()
    out, usage = run_stream("gemini", "gemini_stream.sse", drop=False)
    assert out == raw
    assert usage == TokenUsage(input_tokens=9, output_tokens=11 + 25, cached_input_tokens=4, reasoning_tokens=25)


def test_find_usage_object_reads_the_top_level_usage_of_a_large_answer() -> None:
    body = {"object": "list", "data": [{"embedding": [0.1] * 5000, "index": 0}], "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert find_usage_object(json.dumps(body).encode(), b"usage") == {"prompt_tokens": 8, "total_tokens": 8}


def test_find_usage_object_ignores_a_quoted_usage_inside_content() -> None:
    body = {"choices": [{"message": {"content": 'say "usage": {"prompt_tokens": 99}'}}]}
    assert find_usage_object(json.dumps(body).encode(), b"usage") is None


def test_unstreamed_usage_per_provider() -> None:
    openai = {"usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
                        "prompt_tokens_details": {"cached_tokens": 40},
                        "completion_tokens_details": {"reasoning_tokens": 20}}}
    assert PROVIDERS["openai"].usage_from_body(openai) == TokenUsage(
        input_tokens=100, output_tokens=50, cached_input_tokens=40, reasoning_tokens=20)
    gemini = {"usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 7}}
    assert PROVIDERS["gemini"].usage_from_body(gemini) == TokenUsage(input_tokens=10, output_tokens=12,
                                                                       reasoning_tokens=7)
    assert PROVIDERS["fal"].usage_from_body({"images": [{}, {}]}) == TokenUsage(images=2)


def test_prices_come_from_the_catalog_and_cache_reads_are_cheaper() -> None:
    book = PriceBook()
    plain = book.token_cost("anthropic", "claude-sonnet-4-5", TokenUsage(input_tokens=100_000))
    cached = book.token_cost("anthropic", "claude-sonnet-4-5",
                             TokenUsage(input_tokens=100_000, cached_input_tokens=100_000))
    assert plain == pytest.approx(0.3)  # $3 per million below the long-context tier
    assert 0 < cached < plain
    assert book.token_cost("openai", "gpt-4o-mini", TokenUsage(output_tokens=1_000_000)) == pytest.approx(0.6)
    assert not book.knows("openai", "gpt-does-not-exist")


def test_attribution_headers_and_key_project_fallback() -> None:
    headers = {"x-workflow-tag": "lead-enrichment", "x-step": "summarize", "x-execution-id": "exec-1",
               "x-source": "make"}
    fields = attribution(headers, None)
    assert fields == {"workflow": "lead-enrichment", "step": "summarize", "execution_id": "exec-1",
                      "source": "make", "project": None}


def test_build_record_prices_and_times_the_call() -> None:
    call = CallContext(Endpoint.CHAT, OPENAI_ERRORS, provider=PROVIDERS["openai"], model="gpt-4o-mini",
                       usage=TokenUsage(input_tokens=1000, output_tokens=1000))
    record = build_record(call, status=200, prices=PriceBook())
    assert record.cost_usd == pytest.approx((1000 * 0.15 + 1000 * 0.6) / 1e6)
    assert record.provider == "openai" and record.status == 200 and record.latency_ms >= 0

"""Invoice-grade accounting (issue 13): usage readers, unpriced calls, overrides, config prices, lookups, catalog update."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from keyinfo import key_info
from pydantic import ValidationError

from tokensense.config import FileConfig, ModelPrice
from tokensense.core.usage import TokenUsage
from tokensense.gateway.call import CallContext
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.price_policy import unpriced_refusal
from tokensense.gateway.record import build_record
from tokensense.gateway.request_lookup import answer_request, request_id_from_path
from tokensense.gateway.routing import Endpoint, classify
from tokensense.metering.catalog_update import CatalogUpdateError, fetch_catalog, load_saved_catalog
from tokensense.metering.pricing import PriceBook
from tokensense.metering.usage_extract import find_service_tier, usage_from_answer, with_request_tier
from tokensense.providers import PROVIDERS
from tokensense.providers.anthropic.usage import usage_from_anthropic
from tokensense.providers.gemini.usage import usage_from_gemini
from tokensense.providers.openai import OPENAI_ERRORS
from tokensense.providers.openai_usage import usage_from_openai
from tokensense.providers.usage_fields import reset_warnings


def _key(budget: float | None = None, name: str = "k", key_id: str = "key1") -> KeyInfo:
    return key_info(id=key_id, name=name, budget_usd=budget)


# -- usage readers ------------------------------------------------------------------------------


def test_wrong_types_and_negative_counts_are_ignored_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 12 item 6: a negative or mistyped usage field is 0, never a negative cost, and logged once per field."""
    reset_warnings()
    bad = {"prompt_tokens": -500, "completion_tokens": "12", "total_tokens": 0,
           "prompt_tokens_details": {"cached_tokens": True}, "completion_tokens_details": [1]}
    with caplog.at_level(logging.WARNING):
        first = usage_from_openai(bad)
        usage_from_openai(bad)
    assert first == TokenUsage()
    lines = [r.getMessage() for r in caplog.records if "usage field" in r.getMessage()]
    assert len(lines) == 4 and any("prompt_tokens with a negative value" in m for m in lines)
    assert PriceBook().cost("openai", "gpt-4o-mini", usage_from_openai({"prompt_tokens": -10**9,
                                                                         "completion_tokens": 10})) >= 0
    assert usage_from_anthropic({"input_tokens": 5, "output_tokens": -3, "cache_creation": "x"}) == \
        TokenUsage(input_tokens=5)
    assert usage_from_gemini({"promptTokenCount": 7, "promptTokensDetails": "AUDIO"}) == TokenUsage(input_tokens=7)


def test_xai_reasoning_is_added_to_output_unless_the_total_shows_it_is_in() -> None:
    xai = PROVIDERS["xai"]
    outside = xai.usage_from_object({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 115,
                                     "completion_tokens_details": {"reasoning_tokens": 100}})
    inside = xai.usage_from_object({"prompt_tokens": 10, "completion_tokens": 105, "total_tokens": 115,
                                    "completion_tokens_details": {"reasoning_tokens": 100}})
    assert (outside.output_tokens, inside.output_tokens) == (105, 105)
    # OpenAI counts reasoning inside completion_tokens: never added there.
    openai = PROVIDERS["openai"].usage_from_object({"prompt_tokens": 10, "completion_tokens": 5,
                                                    "completion_tokens_details": {"reasoning_tokens": 100}})
    assert openai.output_tokens == 5 and openai.reasoning_tokens == 5  # capped at the output it is part of


def test_parts_are_capped_at_their_whole() -> None:
    usage = usage_from_anthropic({"input_tokens": 0, "cache_creation_input_tokens": 10, "output_tokens": 1,
                                  "cache_creation": {"ephemeral_1h_input_tokens": 50}})
    assert usage.units == {"cache_write_1h_tokens": 10}
    gemini = usage_from_gemini({"promptTokenCount": 5, "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 9}]})
    assert gemini.units == {"input_audio_tokens": 5}


def test_service_tier_from_the_answer_else_from_the_request() -> None:
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1},
                       "service_tier": "priority"}).encode()
    assert find_service_tier(body) == "priority"
    usage = usage_from_answer(PROVIDERS["openai"], body)
    assert usage is not None and usage.service_tier == "priority" and usage.priced_tier == "priority"
    plain = TokenUsage(input_tokens=1)
    assert with_request_tier(plain, {"service_tier": "flex"}).service_tier == "flex"
    assert with_request_tier(plain, {"service_tier": "auto"}).service_tier is None
    assert with_request_tier(usage, {"service_tier": "flex"}).service_tier == "priority"
    assert TokenUsage(service_tier="default").priced_tier is None


# -- unpriced, config prices, overrides ---------------------------------------------------------------


def test_an_unknown_model_is_unpriced_not_free_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    book = PriceBook()
    usage = TokenUsage(input_tokens=100, output_tokens=10)
    with caplog.at_level(logging.WARNING):
        assert book.cost("openai", "gpt-nonexistent-9", usage) is None
        assert book.cost("openai", "gpt-nonexistent-9", usage) is None
    assert sum("gpt-nonexistent-9" in r.getMessage() for r in caplog.records) == 1
    assert book.pricing_kind("openai", "gpt-nonexistent-9") == "unpriced"
    assert book.cost("openai", "gpt-nonexistent-9", TokenUsage()) == 0.0  # nothing used: nothing to price
    call = CallContext(Endpoint.CHAT, OPENAI_ERRORS, provider=PROVIDERS["openai"], model="gpt-nonexistent-9",
                       usage=usage)
    record = build_record(call, status=200, prices=book)
    assert record.cost_usd is None and record.input_tokens == 100


def test_a_declared_model_gives_prices_or_says_free() -> None:
    with pytest.raises(ValidationError, match="gives no input_per_mtok or output_per_mtok"):
        FileConfig.model_validate({"models": {"local": {"provider": "openai"}}})
    with pytest.raises(ValidationError, match="takes no prices"):
        FileConfig.model_validate({"models": {"local": {"provider": "openai", "free": True, "input_per_mtok": 1}}})
    config = FileConfig.model_validate({"models": {
        "local": {"provider": "openai", "free": True},
        "my-ft": {"provider": "openai", "input_per_mtok": 1, "output_per_mtok": 2, "cached_input_per_mtok": 0.5}}})
    book = PriceBook(config.models)
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000, cached_input_tokens=500_000)
    assert book.cost("openai", "local", usage) == 0.0 and book.pricing_kind("openai", "local") == "free"
    assert book.cost("openai", "my-ft", usage) == pytest.approx(0.5 + 0.25 + 2)
    assert book.pricing_kind("openai", "my-ft") == "config"


def test_the_override_table_comes_before_the_catalog() -> None:
    book = PriceBook()
    resolved = book.resolve("mistral", "mistral-large-latest")
    assert resolved is not None and resolved.kind == "override" and "mistral.ai" in resolved.origin
    assert book.cost("mistral", "mistral-large-latest", TokenUsage(input_tokens=1000, output_tokens=500)) == \
        pytest.approx(0.00125)
    # The catalog's other Mistral Large 2 names are untouched.
    assert book.resolve("mistral", "mistral-large-2411").kind == "catalog"
    # config.toml comes first of all.
    custom = PriceBook({"mistral-large-latest": ModelPrice(provider="mistral", input_per_mtok=9, output_per_mtok=9)})
    assert custom.resolve("mistral", "mistral-large-latest").kind == "config"


def test_a_budget_key_may_not_call_an_unpriced_model() -> None:
    book = PriceBook()
    openai = PROVIDERS["openai"]
    refusal = unpriced_refusal(_key(budget=5), book, openai, "gpt-nonexistent-9", "openai/gpt-nonexistent-9")
    assert refusal is not None and refusal.status == 403 and "openai/gpt-nonexistent-9" in refusal.message
    assert unpriced_refusal(_key(budget=None), book, openai, "gpt-nonexistent-9") is None
    assert unpriced_refusal(_key(budget=5), book, openai, "gpt-4o-mini") is None
    declared = PriceBook({"gpt-nonexistent-9": ModelPrice(provider="openai", free=True)})
    assert unpriced_refusal(_key(budget=5), declared, openai, "gpt-nonexistent-9") is None


# -- GET /v1/tokensense/requests/{id} -------------------------------------------------------------


def test_request_lookup_answers_the_owner_only_and_waits_for_the_queue() -> None:
    assert classify("GET", "/v1/tokensense/requests/abc").endpoint is Endpoint.REQUEST_RECORD
    assert request_id_from_path("/v1/tokensense/requests/0123abcd") == "0123abcd"
    assert request_id_from_path("/v1/tokensense/requests/a/b") is None
    stored = {("r1", "key1"): [{"id": 1, "key_id": "key1", "request_id": "r1", "cost_usd": 0.5, "attempt": 1}]}
    flushed: list[bool] = []
    queued = {("r2", "key1"): [{"id": 2, "key_id": "key1", "request_id": "r2", "cost_usd": None, "attempt": 1}]}

    def find(request_id: str, key_id: str) -> list[dict]:
        return stored.get((request_id, key_id), [])

    def flush() -> None:
        flushed.append(True)
        stored.update(queued)

    status, body = answer_request(_key(), "r1", find, flush)
    assert status == 200 and body["cost_usd"] == 0.5 and "key_id" not in body and "id" not in body
    assert answer_request(_key(key_id="key2"), "r1", find, flush)[0] == 404
    status, body = answer_request(_key(), "r2", find, flush)  # still in the recorder's queue
    assert status == 200 and body["cost_usd"] is None and flushed
    assert answer_request(_key(), None, find, flush)[0] == 404


# -- the catalog update ---------------------------------------------------------------------------------

_CATALOG = [{"id": "openai", "name": "OpenAI", "api_pattern": "https://api\\.openai\\.com",
             "models": [{"id": "gpt-4o-mini", "match": {"equals": "gpt-4o-mini"},
                         "prices": {"input_mtok": 1, "output_mtok": 2}}]}]


class _Catalog(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(_CATALOG if self.path == "/data.json" else {"not": "a catalog"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_prices_update_saves_the_catalog_and_fails_clearly_offline(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Catalog)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        path, providers, models = fetch_catalog(tmp_path, url=f"{base}/data.json", timeout=5)
        assert (providers, models) == (1, 1) and path.exists()
        with pytest.raises(CatalogUpdateError, match="did not answer a genai-prices catalog"):
            fetch_catalog(tmp_path, url=f"{base}/other.json", timeout=5)
    finally:
        server.shutdown()
    with pytest.raises(CatalogUpdateError, match="could not reach") as offline:
        fetch_catalog(tmp_path, url=f"{base}/data.json", timeout=2)
    assert "\n" not in str(offline.value)
    snapshot = load_saved_catalog(tmp_path)  # the failed updates left the saved catalog as it was
    assert snapshot is not None and snapshot.from_auto_update
    book = PriceBook(snapshot=snapshot)
    assert book.cost("openai", "gpt-4o-mini", TokenUsage(input_tokens=1_000_000, output_tokens=0)) == \
        pytest.approx(1.0)
    assert "updated" in book.catalog_origin
    (tmp_path / "prices" / "genai-prices.json").write_text("{broken")
    assert load_saved_catalog(tmp_path) is None  # unreadable: the bundled catalog is used


def test_translated_usage_with_malformed_counters_is_still_translated() -> None:
    """Issue 12 item 6: a wrong usage type no longer breaks the OpenAI-format translation of a Claude/Gemini answer."""
    from tokensense.providers.anthropic.chat import usage_to_openai as anthropic_usage
    from tokensense.providers.gemini.chat import usage_to_openai as gemini_usage

    translated = anthropic_usage({"input_tokens": "ten", "output_tokens": 5, "cache_read_input_tokens": -3})
    assert (translated["prompt_tokens"], translated["completion_tokens"]) == (0, 5)
    translated = gemini_usage({"promptTokenCount": 4, "candidatesTokenCount": None, "thoughtsTokenCount": [1]})
    assert (translated["prompt_tokens"], translated["completion_tokens"]) == (4, 0)

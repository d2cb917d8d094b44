"""End to end: the priced long tail that is billed per page, per second or per hour (Mistral OCR, OpenAI videos,
Gemini context caches) through the gateway, with the official SDKs as clients (httpx for OCR)."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import PROVIDER_KEYS, Gateway

pytestmark = pytest.mark.e2e

MICRO = 1e-6  # costs are checked to the micro-dollar


def forwarded(gw: Gateway, prefix: str, path: str) -> dict:
    """The last request the fake got under `prefix`: at `path`, with the provider's key, never TokenSense's."""
    req = gw.fake.last(prefix)
    assert req["path"] == f"/{prefix}{path}"
    assert gw.key not in json.dumps(req), "the TokenSense key must not reach the provider"
    return req


# --- Mistral OCR: per page (media table: mistral-ocr-latest $2 per 1,000 pages) -------------------------------


def test_ocr_priced_per_page_processed(gateway: Gateway, exec_id: str) -> None:
    headers = {"authorization": f"Bearer {gateway.key}", "x-execution-id": exec_id, "x-fake-pages": "7"}
    r = httpx.post(f"{gateway.url}/v1/ocr", headers=headers, timeout=30,
                   json={"model": "mistral-ocr-latest",
                         "document": {"type": "document_url", "document_url": "https://example.test/a.pdf"}})
    assert r.status_code == 200, r.text
    assert r.json()["usage_info"]["pages_processed"] == 7 and len(r.json()["pages"]) == 7
    req = forwarded(gateway, "mistral", "/v1/ocr")
    assert req["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['mistral']}"
    [record] = gateway.wait_records(execution_id=exec_id)
    assert (record["provider"], record["model"], record["endpoint"], record["status"]) == \
        ("mistral", "mistral-ocr-latest", "ocr", 200)
    assert json.loads(record["details"])["counters"] == {"pages": 7}
    assert record["cost_usd"] == pytest.approx(7 * 2.0 / 1000, abs=MICRO)
    assert float(r.headers["x-tokensense-cost-usd"]) == pytest.approx(record["cost_usd"], abs=MICRO)


def test_ocr_with_a_chat_model_is_a_400_that_never_leaves(gateway: Gateway) -> None:
    before = len(gateway.fake.requests())
    r = httpx.post(f"{gateway.url}/v1/ocr", headers={"authorization": f"Bearer {gateway.key}"},
                   json={"model": "mistral-large-latest", "document": {"type": "document_url", "document_url": "x"}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_model_for_endpoint"
    assert len(gateway.fake.requests()) == before

"""End to end: the priced long tail that is billed per page, per second or per hour (Mistral OCR, OpenAI videos,
Gemini context caches) through the gateway, with the official SDKs as clients (httpx for OCR)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from contextlib import closing

import httpx
import openai
import pytest
from conftest import PROVIDER_KEYS, Gateway, start_gateway, stop
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

pytestmark = pytest.mark.e2e

MICRO = 1e-6  # costs are checked to the micro-dollar


def forwarded(gw: Gateway, prefix: str, path: str) -> dict:
    """The last request the fake got under `prefix`: at `path`, with the provider's key, never TokenSense's."""
    req = gw.fake.last(prefix)
    assert req["path"] == f"/{prefix}{path}"
    assert gw.key not in json.dumps(req), "the TokenSense key must not reach the provider"
    return req


# --- Mistral OCR: per page (genai-prices: mistral-ocr-latest, now OCR 4.1, $4 per 1,000 pages) ------------------


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
    assert json.loads(record["details"])["units"] == {"input_document_pages": 7}
    assert record["cost_usd"] == pytest.approx(7 * 4.0 / 1000, abs=MICRO)
    assert float(r.headers["x-tokensense-cost-usd"]) == pytest.approx(record["cost_usd"], abs=MICRO)


def test_an_ocr_answer_is_read_wherever_it_is_metered() -> None:
    """Intercept mode and `tokensense reprice` read answers with `usage_from_answer`: OCR's pages are found too."""
    from tokensense.metering.pricing import PriceBook
    from tokensense.metering.usage_extract import usage_from_answer
    from tokensense.providers import PROVIDERS

    answer = json.dumps({"pages": [], "model": "mistral-ocr-2505",
                         "usage_info": {"pages_processed": 12, "doc_size_bytes": 1}}).encode()
    usage = usage_from_answer(PROVIDERS["mistral"], answer)
    assert usage.units == {"input_document_pages": 12}
    assert PriceBook({}).cost("mistral", "mistral-ocr-2505", usage) == pytest.approx(12 * 1.0 / 1000)


def test_reprice_of_an_ocr_call_equals_its_recorded_cost(tmp_path, fake_provider) -> None:
    record_file = tmp_path / "calls.flows"
    gw = start_gateway(tmp_path, fake_provider, serve_args=["--record", str(record_file)])
    try:
        r = httpx.post(f"{gw.url}/v1/ocr", timeout=30,
                       headers={"authorization": f"Bearer {gw.key}", "x-fake-pages": "3", "x-workflow-tag": "ocr"},
                       json={"model": "mistral-ocr-2512", "document": {"type": "document_url", "document_url": "x"}})
        assert r.status_code == 200
        [record] = gw.wait_records(workflow="ocr")
    finally:
        stop(gw.process)
    assert record["cost_usd"] == pytest.approx(3 * 2.0 / 1000, abs=MICRO)  # OCR 3: $2 per 1,000 pages
    reprice = json.loads(gw.cli("reprice", str(record_file), "--json").stdout)
    [group] = [g for g in reprice["by_workflow"] if g["workflow"] == "ocr"]
    assert group["cost_usd"] == pytest.approx(record["cost_usd"], abs=1e-9)


def test_ocr_with_a_chat_model_is_a_400_that_never_leaves(gateway: Gateway) -> None:
    before = len(gateway.fake.requests())
    r = httpx.post(f"{gateway.url}/v1/ocr", headers={"authorization": f"Bearer {gateway.key}"},
                   json={"model": "mistral-large-latest", "document": {"type": "document_url", "document_url": "x"}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_model_for_endpoint"
    assert len(gateway.fake.requests()) == before


# --- OpenAI videos: per second of the requested duration, booked once when seen completed -----------------------
# (media table: sora-2 $0.10 per second at 720x1280 and 1280x720, sora-2-pro $0.50 at 1792x1024)


def new_key(gw: Gateway, *options: str) -> str:
    return json.loads(gw.cli("keys", "create", f"lt2-{uuid.uuid4().hex[:8]}", *options, "--json").stdout)["key"]


def openai_client(gw: Gateway, key: str | None = None, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key or gw.key, max_retries=0, default_headers=headers)


def sent(gw: Gateway) -> list[dict]:
    """What clients' calls sent the fake: not the batch follower's own polls of open videos (its httpx client)."""
    return [r for r in gw.fake.requests() if not r["headers"].get("user-agent", "").startswith("python-httpx")]


def booked(gw: Gateway, video_id: str) -> list[dict]:
    return gw.records(request_id=video_id)


def test_video_polled_to_completion_is_booked_once_at_seconds_times_rate(gateway: Gateway, exec_id: str) -> None:
    client = openai_client(gateway, **{"x-execution-id": exec_id, "x-workflow-tag": "trailer"})
    video = client.videos.create_and_poll(model="sora-2", prompt="A cat on a piano", seconds="8", size="1280x720",
                                          poll_interval_ms=100, extra_headers={"x-fake-batch-seconds": "1"})
    assert video.status == "completed"
    create = forwarded(gateway, "openai", f"/v1/videos/{video.id}")  # the last request was a retrieve
    assert create["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"
    [record] = gateway.wait_records(request_id=video.id)
    assert (record["provider"], record["model"], record["endpoint"], record["status"]) == \
        ("openai", "sora-2", "videos", 200)
    assert record["seconds"] == 8 and record["key_name"] == "e2e"
    assert (record["execution_id"], record["workflow"]) == (exec_id, "trailer")  # the create's attribution
    assert record["cost_usd"] == pytest.approx(8 * 0.10, abs=MICRO)
    calls = gateway.wait_records(execution_id=exec_id)
    priced = [r for r in calls if r["cost_usd"]]
    assert priced == [record], "only the booking costs: the create and the polls are recorded at 0"
    assert {r["endpoint"] for r in calls} == {"videos", "videos.retrieve"}

    # Seen completed again, downloaded, listed: never booked again.
    assert client.videos.retrieve(video.id).status == "completed"
    assert client.videos.download_content(video.id).read().startswith(b"\x00\x00\x00\x18ftyp")
    assert video.id in [v.id for v in client.videos.list()]
    gateway.wait_records(len(calls) + 3, execution_id=exec_id)
    assert len(booked(gateway, video.id)) == 1


def test_a_video_is_visible_only_to_the_key_that_made_it(gateway: Gateway, exec_id: str) -> None:
    owner = openai_client(gateway, **{"x-execution-id": exec_id})
    video = owner.videos.create(model="sora-2", prompt="Slow", extra_headers={"x-fake-batch-seconds": "3600"})
    assert video.status == "queued"
    other = openai_client(gateway, new_key(gateway))
    before = len(sent(gateway))
    with pytest.raises(openai.NotFoundError):
        other.videos.retrieve(video.id)
    with pytest.raises(openai.NotFoundError):
        other.videos.download_content(video.id)
    with pytest.raises(openai.NotFoundError):
        other.videos.delete(video.id)
    assert len(sent(gateway)) == before, "another key's video id never reaches the provider"
    assert video.id not in [v.id for v in other.videos.list()]
    assert owner.videos.retrieve(video.id).status == "queued"
    assert owner.videos.delete(video.id).deleted is True
    assert not booked(gateway, video.id)


def test_video_booked_once_across_instances_sharing_the_database(gateway: Gateway, tmp_path, exec_id: str) -> None:
    client = openai_client(gateway, **{"x-execution-id": exec_id})
    video = client.videos.create(model="sora-2-pro", prompt="Waves", seconds="4", size="1792x1024",
                                 extra_headers={"x-fake-batch-seconds": "0.5"})
    assert video.status == "queued"
    # Instances sharing a database share its secret (docs/operations.md): the second stores the provider key too.
    (tmp_path / "home").mkdir()
    shutil.copy(gateway.home / "secret.key", tmp_path / "home" / "secret.key")
    second = start_gateway(tmp_path, gateway.fake, key_name="e2e-second",
                           extra_env={"TOKENSENSE_DATABASE_URL": f"sqlite:///{gateway.db_path}"})
    try:
        time.sleep(0.6)
        for gw in (second, gateway, second):  # each instance sees it completed; one books it
            assert openai_client(gw, gateway.key).videos.retrieve(video.id).status == "completed"
        [record] = gateway.wait_records(request_id=video.id)
        assert record["cost_usd"] == pytest.approx(4 * 0.50, abs=MICRO) and record["model"] == "sora-2-pro"
        time.sleep(0.5)
        assert len(booked(gateway, video.id)) == 1
    finally:
        stop(second.process)


def test_a_video_never_retrieved_through_the_gateway_is_booked_by_the_follower(tmp_path, fake_provider,
                                                                               exec_id: str) -> None:
    # The client learns of the end elsewhere (a webhook): the gateway's own poll (batch follower) books it, once.
    gw = start_gateway(tmp_path, fake_provider, extra_env={"TOKENSENSE_BATCH_POLL_SECONDS": "0.3"})
    try:
        client = openai_client(gw, **{"x-execution-id": exec_id, "x-workflow-tag": "webhook", "x-project": "ads"})
        video = client.videos.create(model="sora-2", prompt="A dog surfing", seconds="12", size="720x1280",
                                     extra_headers={"x-fake-batch-seconds": "0.5"})
        failed = client.videos.create(model="sora-2", prompt="Broken", seconds="8",
                                      extra_headers={"x-fake-batch-seconds": "0.5", "x-fake-video-fail": "1"})
        assert video.status == failed.status == "queued"
        [record] = gw.wait_records(request_id=video.id)
        assert (record["provider"], record["model"], record["endpoint"], record["status"]) == \
            ("openai", "sora-2", "videos", 200)
        assert record["seconds"] == 12 and record["key_name"] == "e2e"
        assert (record["execution_id"], record["workflow"], record["project"]) == (exec_id, "webhook", "ads")
        assert record["cost_usd"] == pytest.approx(12 * 0.10, abs=MICRO)
        polls = [r for r in gw.fake.requests() if r["path"] == f"/openai/v1/videos/{video.id}"]
        assert polls and all(r["headers"]["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}" for r in polls)
        assert not any(r in sent(gw) for r in polls), "the follower's polls are told apart from the clients' calls"
        assert all(gw.key not in json.dumps(r) for r in polls)

        # The failed one books nothing and is no longer polled; the booked one neither.
        def polled(video_id: str) -> int:
            return len([r for r in gw.fake.requests() if r["path"] == f"/openai/v1/videos/{video_id}"])

        def settled(video_id: str) -> bool:
            with closing(sqlite3.connect(gw.db_path)) as conn:
                row = conn.execute("SELECT booked_at FROM owned_resources WHERE id = ?", (video_id,)).fetchone()
            return bool(row and row[0])

        deadline = time.monotonic() + 10
        while not settled(failed.id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert settled(failed.id) and polled(failed.id) >= 1
        seen = polled(failed.id), polled(video.id)
        time.sleep(1.2)  # four polls' time
        assert (polled(failed.id), polled(video.id)) == seen, "an ended video is no longer polled"
        assert not booked(gw, failed.id)

        # A retrieve afterwards sees it completed: never booked again.
        assert client.videos.retrieve(video.id).status == "completed"
        assert client.videos.retrieve(failed.id).status == "failed"
        gw.wait_records(4, execution_id=exec_id)  # the two creates and the two retrieves
        time.sleep(0.5)
        assert len(booked(gw, video.id)) == 1
        priced = [r for r in gw.records(execution_id=exec_id) if r["cost_usd"]]
        assert [r["request_id"] for r in priced] == [video.id]
    finally:
        stop(gw.process)


def test_a_video_the_budget_cannot_cover_is_refused_before_the_provider(gateway: Gateway) -> None:
    poor = openai_client(gateway, new_key(gateway, "--budget-usd", "0.5"))
    before = len(sent(gateway))
    with pytest.raises(openai.APIStatusError) as refused:
        poor.videos.create(model="sora-2", prompt="Long", seconds="12")  # $1.20 reserved > $0.50
    assert refused.value.status_code in (402, 429)
    assert len(sent(gateway)) == before
    assert poor.videos.create(model="sora-2", prompt="Short", seconds="4").id  # $0.40 fits
    capped = openai_client(gateway, new_key(gateway, "--max-call-usd", "1"))
    with pytest.raises(openai.APIStatusError) as over_cap:
        capped.videos.create(model="sora-2-pro", prompt="Long", seconds="4", size="1792x1024")  # $2.00 > $1 cap
    assert over_cap.value.status_code == 402
    assert len(sent(gateway)) == before + 1
    assert capped.videos.create(model="sora-2", prompt="Short", seconds="8").id  # $0.80 within the cap


# --- Gemini context caches: storage = tokens x hours x the model's rate ($1.00 per 1M tokens per hour, Flash) -----


def genai_client(gw: Gateway, key: str | None = None, **headers: str) -> genai.Client:
    return genai.Client(api_key=key or gw.key, http_options=types.HttpOptions(base_url=gw.url, api_version="v1beta",
                                                                             headers=headers))


def test_context_cache_storage_booked_from_its_ttl_and_its_extension(gateway: Gateway, exec_id: str) -> None:
    client = genai_client(gateway, **{"x-execution-id": exec_id})
    cache = client.caches.create(model="gemini-2.5-flash", config={
        "contents": [{"role": "user", "parts": [{"text": "a long document " * 50}]}], "ttl": "300s"})
    tokens = cache.usage_metadata.total_token_count
    assert cache.name.startswith("cachedContents/") and tokens == 150
    req = forwarded(gateway, "gemini", "/v1beta/cachedContents")
    assert req["headers"]["x-goog-api-key"] == PROVIDER_KEYS["gemini"]
    [record] = gateway.wait_records(execution_id=exec_id)
    assert (record["provider"], record["model"], record["endpoint"]) == ("gemini", "gemini-2.5-flash",
                                                                         "cached_contents")
    assert record["seconds"] == 300 and json.loads(record["details"])["counters"] == {"cached_tokens": 150}
    assert record["cost_usd"] == pytest.approx(150 / 1e6 * 300 / 3600 * 1.00, abs=1e-9)

    updated = client.caches.update(name=cache.name, config={"ttl": "3600s"})  # extends it
    added = (updated.expire_time - cache.expire_time).total_seconds()
    assert added > 3000
    records = gateway.wait_records(2, execution_id=exec_id)
    assert records[1]["endpoint"] == "cached_contents.update"
    assert records[1]["seconds"] == pytest.approx(added, abs=0.01)
    assert records[1]["cost_usd"] == pytest.approx(150 / 1e6 * added / 3600 * 1.00, abs=1e-9)

    assert client.caches.get(name=cache.name).name == cache.name
    assert cache.name in [c.name for c in client.caches.list()]
    other = genai_client(gateway, new_key(gateway))
    with pytest.raises(genai_errors.ClientError) as denied:
        other.caches.get(name=cache.name)
    assert denied.value.code == 404
    assert cache.name not in [c.name for c in other.caches.list()]
    client.caches.delete(name=cache.name)
    records = gateway.wait_records(5, execution_id=exec_id)
    assert [r["cost_usd"] for r in records[2:]] == [0, 0, 0]  # get, list and delete are free


def test_model_list_names_the_video_models_as_media_priced(gateway: Gateway) -> None:
    listed = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {gateway.key}"}).json()
    pricing = {m["id"]: m.get("pricing") for m in listed["data"]}
    assert pricing["sora-2"] == "media" and pricing["sora-2-pro"] == "media"
    assert pricing["gemini-2.5-flash"] == "catalog"  # a storage rate does not make a chat model a media model
    assert pricing["mistral-ocr-latest"] == "catalog"


def test_reprice_of_context_cache_calls_equals_their_recorded_storage(tmp_path, fake_provider) -> None:
    record_file = tmp_path / "calls.flows"
    gw = start_gateway(tmp_path, fake_provider, serve_args=["--record", str(record_file)])
    try:
        client = genai_client(gw, **{"x-workflow-tag": "cache"})
        cache = client.caches.create(model="gemini-2.5-pro", config={
            "contents": [{"role": "user", "parts": [{"text": "a long document " * 400}]}], "ttl": "7200s"})
        client.caches.update(name=cache.name, config={"ttl": "9000s"})
        client.caches.get(name=cache.name)
        records = gw.wait_records(3, workflow="cache")
    finally:
        stop(gw.process)
    recorded = sum(r["cost_usd"] for r in records)
    assert records[0]["cost_usd"] == pytest.approx(1200 / 1e6 * 2 * 4.50, abs=1e-9)  # 1,200 tokens, 2 h, Pro
    reprice = json.loads(gw.cli("reprice", str(record_file), "--json").stdout)
    [group] = [g for g in reprice["by_workflow"] if g["workflow"] == "cache"]
    assert group["requests"] == 3 and group["cost_usd"] == pytest.approx(recorded, abs=1e-9)
    assert reprice["total"]["unpriced"] == 0

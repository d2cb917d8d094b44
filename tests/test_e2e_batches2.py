"""Batch jobs across processes and with the rest of the gateway: a Gemini resumable upload whose requests land on
different instances, batch lines seen by the metrics and budget alerts, retention of batch and owned rows."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FakeProvider, Gateway, start_fake_provider, start_gateway, stop
from tests.test_e2e_batches import POLL, gemini_client, spawn, wait_booked

GEMINI_LINE = {
    "contents": [{"role": "user", "parts": [{"text": "Tell me about batches, and why they cost half as much"}]}],
    "generationConfig": {"maxOutputTokens": 50},
}


def gemini_jsonl(count: int) -> bytes:
    lines = [
        {"key": f"k{i}", "request": {**GEMINI_LINE, "generationConfig": {"maxOutputTokens": 10 + i}}}
        for i in range(count)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def resumable_upload(origins: list[str], key: str, data: bytes, chunk: int, *, between=None) -> dict:  # type: ignore[no-untyped-def]
    """google-genai's resumable protocol by hand, each request on a new connection: the start on `origins[0]`,
    then the bytes in `chunk`-byte requests, the n-th on `origins[n % len(origins)]` (the session URL the
    gateway handed out, its origin swapped). `between(n)` runs before the n-th request (0: the start)."""
    if between is not None:
        between(0)
    start = httpx.post(
        f"{origins[0]}/upload/v1beta/files",
        headers={
            "x-goog-api-key": key,
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": str(len(data)),
            "x-goog-upload-header-content-type": "application/jsonl",
        },
        json={"file": {"displayName": "input.jsonl", "mimeType": "application/jsonl"}},
        timeout=30,
    )
    assert start.status_code == 200, start.text
    session = httpx.URL(start.headers["x-goog-upload-url"])
    assert key not in str(session)
    answer: httpx.Response | None = None
    for n, offset in enumerate(range(0, len(data), chunk), start=1):
        if between is not None:
            between(n)
        last = offset + chunk >= len(data)
        target = httpx.URL(origins[n % len(origins)])
        answer = httpx.post(
            session.copy_with(host=target.host, port=target.port),
            headers={
                "x-goog-upload-command": "upload, finalize" if last else "upload",
                "x-goog-upload-offset": str(offset),
            },
            content=data[offset : offset + chunk],
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    assert answer is not None
    return answer.json()["file"]


def file_lines(db: Path, file_id: str) -> dict:
    conn = sqlite3.connect(db)
    try:
        (lines,) = conn.execute("SELECT lines FROM batch_files WHERE id = ?", (file_id,)).fetchone()
        return json.loads(lines)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def own_fake() -> Iterator[FakeProvider]:
    """A fake provider of this module's own: the jobs and files made here stay out of other files' lists."""
    fake = start_fake_provider()
    yield fake
    stop(fake.process)


@pytest.fixture
def fake_provider(own_fake: FakeProvider) -> FakeProvider:
    own_fake.clear()
    return own_fake


@pytest.fixture
def gw(tmp_path: Path, fake_provider: FakeProvider) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path, fake_provider, extra_env=POLL)
    yield gateway
    stop(gateway.process)


def test_a_resumable_upload_goes_on_at_another_instance_on_the_same_database(
    gw: Gateway, tmp_path: Path, fake_provider: FakeProvider
) -> None:
    """Two instances on one database: the upload starts on one, its requests alternate between both (lines cut
    across requests); the file's sums equal a one-request upload's, and a job from it is reserved and booked."""
    second = spawn(gw, tmp_path)
    try:
        data = gemini_jsonl(6)
        first = gemini_client(gw)
        whole = first.files.upload(file=io.BytesIO(data), config={"mime_type": "application/jsonl"})
        assert whole.name is not None
        expected = file_lines(gw.db_path, whole.name.removeprefix("files/"))
        assert expected["lines"] == 6
        uploaded = resumable_upload([gw.url, second.url], gw.key, data, chunk=97)
        name = uploaded["name"]
        assert file_lines(gw.db_path, name.removeprefix("files/")) == expected
        client = gemini_client(second)
        assert client.files.get(name=name).size_bytes == len(data)
        job = client.batches.create(model="gemini-2.5-flash", src=name)
        assert job.name is not None
        booked = wait_booked(gw, job.name.removeprefix("batches/"))
        assert booked["lines_booked"] == 6 and booked["reserved_usd"] > 0
        conn = sqlite3.connect(gw.db_path)
        try:
            assert conn.execute("SELECT count(*) FROM upload_sessions").fetchone() == (0,)
        finally:
            conn.close()
        # An unknown session is not forwarded, on any instance.
        refused = httpx.post(
            f"{second.url}/upload/v1beta/files?upload_id=nope&upload_protocol=resumable",
            headers={"x-goog-upload-command": "upload, finalize"},
            content=b"{}\n",
        )
        assert refused.status_code in (401, 404)
    finally:
        stop(second.process)


def test_booked_lines_are_counted_by_the_metrics_and_fire_budget_alerts(
    tmp_path: Path, fake_provider: FakeProvider
) -> None:
    """The follower's records go through the same observers as any call's: Prometheus counts each line
    (endpoint `batch`) with its cost, and the `[alerts]` webhook fires for the workflow's budget they cross."""
    import time

    from observability_receivers import WebhookReceiver  # type: ignore[import-not-found]
    from prometheus_client.parser import text_string_to_metric_families

    from tests.conftest import free_port
    from tests.test_e2e_batches import _jsonl, openai_client

    webhook = WebhookReceiver()
    metrics_port = free_port()

    def prepare(gateway: Gateway) -> None:
        gateway.home.mkdir(parents=True, exist_ok=True)
        (gateway.home / "config.toml").write_text(  # $1 per token at the standard price: costs are easy to read
            '[models."batch-model"]\nprovider = "openai"\ninput_per_mtok = 1000000\noutput_per_mtok = 1000000\n\n'
            f'[alerts]\nwebhook_url = "{webhook.url}/hook"\nthresholds = [0.02, 1.0]\n\n'
            '[[budgets]]\nworkflow = "wf-batch"\nusd = 100\n'
        )

    gateway = start_gateway(
        tmp_path, fake_provider, extra_env=POLL, prepare=prepare, serve_args=["--metrics-port", str(metrics_port)]
    )
    try:
        lines = [
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "batch-model", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]},
            }
            for i in range(2)
        ]
        client = openai_client(gateway, **{"x-workflow-tag": "wf-batch"})
        uploaded = client.files.create(file=_jsonl(lines), purpose="batch")
        job = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        booked = wait_booked(gateway, job.id)
        assert booked["lines_booked"] == 2 and booked["booked_usd"] > 1
        records = gateway.records(endpoint="batch")
        deadline = time.monotonic() + 20
        while True:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
            requests = sum(
                s.value
                for s in samples
                if s.name == "tokensense_requests_total" and s.labels.get("endpoint") == "batch"
            )
            if requests == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert requests == 2
        cost = sum(
            s.value for s in samples if s.name == "tokensense_cost_usd_total" and s.labels.get("workflow") == "wf-batch"
        )
        assert cost == pytest.approx(sum(r["cost_usd"] for r in records), abs=1e-6)
        alert = webhook.wait_bodies(1)[0]
        assert alert["level"] == "workflow" and alert["key_name"] == "wf-batch" and alert["threshold"] == 0.02
    finally:
        stop(gateway.process)
        webhook.close()


MISTRAL_LINES = [
    {"custom_id": "0", "body": {"max_tokens": 30, "messages": [{"role": "user", "content": "Say hi to Ada"}]}},
    {"custom_id": "1", "body": {"max_tokens": 60, "messages": [{"role": "user", "content": "Count to three"}]}},
]


def test_mistral_batch_job_booked_at_half_price_with_the_create_calls_attribution(gw: Gateway) -> None:
    """Mistral's wire format under `/mistral/v1/`: the input file (purpose batch), `/v1/batch/jobs` create, get,
    list and cancel, the output file's download; each line booked once at the batch price, owned by the key."""
    from tests.test_e2e_batches import ATTRIBUTION, new_key
    from tokensense.core.usage import TokenUsage
    from tokensense.metering.pricing import PriceBook

    base = f"{gw.url}/mistral/v1"
    auth = {"authorization": f"Bearer {gw.key}"}
    data = b"".join(json.dumps(line).encode() + b"\n" for line in MISTRAL_LINES)
    uploaded = httpx.post(
        f"{base}/files", headers=auth, files={"file": ("input.jsonl", data)}, data={"purpose": "batch"}, timeout=30
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    assert uploaded.json()["num_lines"] == 2 and uploaded.json()["purpose"] == "batch"
    job = httpx.post(
        f"{base}/batch/jobs",
        headers={**auth, **ATTRIBUTION},
        timeout=30,
        json={
            "input_files": [file_id],
            "model": "mistral-small-latest",
            "endpoint": "/v1/chat/completions",
            "metadata": {"job": "nightly"},
        },
    )
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]
    assert job.json()["status"] in ("QUEUED", "RUNNING")
    booked = wait_booked(gw, job_id)
    assert booked["lines_booked"] == 2 and booked["reserved_usd"] > 0 and booked["provider"] == "mistral"
    done = httpx.get(f"{base}/batch/jobs/{job_id}", headers=auth, timeout=30).json()
    assert done["status"] == "SUCCESS" and done["output_file"]
    results = [
        json.loads(line)
        for line in httpx.get(f"{base}/files/{done['output_file']}/content", headers=auth, timeout=30).text.splitlines()
    ]
    assert [r["custom_id"] for r in results] == ["0", "1"]
    records = {json.loads(r["details"])["custom_id"]: r for r in gw.records(endpoint="batch")}
    assert set(records) == {"0", "1"}
    for result in results:
        record = records[result["custom_id"]]
        usage = result["response"]["body"]["usage"]
        assert (record["input_tokens"], record["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
        standard = PriceBook().cost(
            "mistral",
            record["model"],
            TokenUsage(input_tokens=record["input_tokens"], output_tokens=record["output_tokens"]),
        )
        assert record["cost_usd"] == pytest.approx(standard * 0.5, abs=1e-9)  # type: ignore[operator]
        assert record["workflow"] == "nightly-enrich" and record["provider"] == "mistral"
    # Another key: 404 for the job, its files, a job from the file; lists show only its own.
    other = {"authorization": f"Bearer {new_key(gw, 'other-mistral')}"}
    assert httpx.get(f"{base}/batch/jobs/{job_id}", headers=other).status_code == 404
    assert httpx.get(f"{base}/files/{done['output_file']}/content", headers=other).status_code == 404
    assert (
        httpx.post(
            f"{base}/batch/jobs",
            headers=other,
            json={"input_files": [file_id], "model": "mistral-small-latest", "endpoint": "/v1/chat/completions"},
        ).status_code
        == 404
    )
    assert httpx.get(f"{base}/batch/jobs", headers=other).json()["data"] == []
    listed = httpx.get(f"{base}/batch/jobs", headers=auth).json()
    assert [j["id"] for j in listed["data"]] == [job_id] and listed["total"] == 1
    # Cancel: a slow job, cancelled before it ran, books no line and releases what it held.
    slow = httpx.post(
        f"{base}/batch/jobs",
        headers={**auth, "x-fake-batch-seconds": "60"},
        timeout=30,
        json={"input_files": [file_id], "model": "mistral-small-latest", "endpoint": "/v1/chat/completions"},
    ).json()
    cancelled = httpx.post(f"{base}/batch/jobs/{slow['id']}/cancel", headers=auth, timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLATION_REQUESTED"
    assert wait_booked(gw, slow["id"])["lines_booked"] == 0
    assert len(gw.records(endpoint="batch")) == 2
    # `tokensense usage --by batch`: each job's lines in one group (calls outside a batch: no batch id).
    groups = {g["batch"]: g for g in json.loads(gw.cli("usage", "--by", "batch,workflow", "--json").stdout)}
    assert groups[job_id]["requests"] == 2 and groups[job_id]["workflow"] == "nightly-enrich"
    assert groups[job_id]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records.values()), abs=1e-9)
    assert slow["id"] not in groups and None in groups


def test_mistral_sdk_batch_calls_through_the_gateway(gw: Gateway) -> None:
    """The mistralai SDK as documented (files.upload purpose batch, batch.jobs.create/get/list/cancel,
    files.download), its server URL the gateway's `/mistral` prefix; inline requests too."""
    mistral_client = pytest.importorskip("mistralai.client")
    client = mistral_client.Mistral(api_key=gw.key, server_url=f"{gw.url}/mistral")
    data = b"".join(json.dumps(line).encode() + b"\n" for line in MISTRAL_LINES)
    uploaded = client.files.upload(file={"file_name": "input.jsonl", "content": data}, purpose="batch")
    assert uploaded.num_lines == 2 and uploaded.size_bytes == len(data)
    job = client.batch.jobs.create(
        input_files=[uploaded.id],
        model="mistral-small-latest",
        endpoint="/v1/chat/completions",
        metadata={"job": "sdk"},
    )
    booked = wait_booked(gw, job.id)
    assert booked["lines_booked"] == 2
    done = client.batch.jobs.get(job_id=job.id)
    assert done.status == "SUCCESS" and done.output_file and done.succeeded_requests == 2
    lines = client.files.download(file_id=done.output_file).read().splitlines()
    assert [json.loads(line)["custom_id"] for line in lines] == ["0", "1"]
    assert [j.id for j in client.batch.jobs.list().data] == [job.id]
    inline = client.batch.jobs.create(
        requests=MISTRAL_LINES, model="mistral-small-latest", endpoint="/v1/chat/completions"
    )
    assert wait_booked(gw, inline.id)["lines_booked"] == 2
    assert client.batch.jobs.get(job_id=inline.id).outputs
    slow = client.batch.jobs.create(
        input_files=[uploaded.id],
        model="mistral-small-latest",
        endpoint="/v1/chat/completions",
        http_headers={"x-fake-batch-seconds": "60"},
    )
    assert client.batch.jobs.cancel(job_id=slow.id).status == "CANCELLATION_REQUESTED"
    assert wait_booked(gw, slow.id)["lines_booked"] == 0
    assert len(gw.records(endpoint="batch")) == 4


def test_mistral_sdk_without_the_prefix_reaches_mistral_batch_jobs(gw: Gateway) -> None:
    """The mistralai SDK on the gateway's root (shared `/v1/files`: its User-Agent names Mistral)."""
    mistral_client = pytest.importorskip("mistralai.client")
    client = mistral_client.Mistral(api_key=gw.key, server_url=gw.url)
    data = b"".join(json.dumps(line).encode() + b"\n" for line in MISTRAL_LINES)
    uploaded = client.files.upload(file={"file_name": "input.jsonl", "content": data}, purpose="batch")
    job = client.batch.jobs.create(
        input_files=[uploaded.id], model="mistral-small-latest", endpoint="/v1/chat/completions"
    )
    assert wait_booked(gw, job.id)["lines_booked"] == 2
    done = client.batch.jobs.get(job_id=job.id)
    assert done.output_file is not None
    assert len(client.files.download(file_id=done.output_file).read().splitlines()) == 2
    assert {r["provider"] for r in gw.records(endpoint="batch")} == {"mistral"}

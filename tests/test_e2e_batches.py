"""Batch jobs and files through the gateway, with the official SDKs as documented: owned per key, streamed uploads,
each result line booked once at the batch price with the create call's attribution, the job's cost reserved."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors

from tests.conftest import STORED_ANTHROPIC_KEY, FakeProvider, Gateway, start_fake_provider, start_gateway, stop
from tokensense.core.usage import TokenUsage
from tokensense.metering.pricing import PriceBook

POLL: dict[str, str | None] = {"TOKENSENSE_BATCH_POLL_SECONDS": "0.3", "TOKENSENSE_MAX_UPLOAD_MB": "1"}
ATTRIBUTION = {
    "x-workflow-tag": "nightly-enrich",
    "x-step": "classify",
    "x-execution-id": "run-42",
    "x-source": "cron",
    "x-project": "data",
}


def _jsonl(lines: list[dict]) -> io.BytesIO:
    buffer = io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    buffer.name = "input.jsonl"
    return buffer


CHAT_LINES = [
    {
        "custom_id": "first",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi to Ada"}], "max_tokens": 20},
    },
    {
        "custom_id": "second",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Count to three please"}],
            "max_tokens": 40,
        },
    },
    {"custom_id": "broken", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}},
]


def openai_client(gateway: Gateway, key: str | None = None, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=key or gateway.key, max_retries=0, default_headers=headers
    )


def new_key(gateway: Gateway, name: str, *args: str) -> str:
    return json.loads(gateway.cli("keys", "create", name, "--json", *args).stdout)["key"]


def sdk_requests(fake: FakeProvider) -> list[dict]:
    """What the fake received from the SDK through the gateway (not the follower's polls)."""
    return [r for r in fake.requests() if "python-httpx" not in r["headers"].get("user-agent", "")]


def jobs(gateway: Gateway) -> list[dict]:
    conn = sqlite3.connect(gateway.db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM batch_jobs ORDER BY created_at")]
    finally:
        conn.close()


def wait_booked(gateway: Gateway, job_id: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in jobs(gateway):
            if job["id"] == job_id and job["booked_at"] is not None:
                return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} was not booked: {jobs(gateway)}\n{gateway.log()[-3000:]}")


@pytest.fixture(scope="module")
def own_fake() -> Iterator[FakeProvider]:
    """A fake provider of this module's own: the batches and files made here stay out of other files' lists."""
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


def _batch_cost(model: str, record: dict) -> float:
    usage = TokenUsage(
        input_tokens=record["input_tokens"],
        output_tokens=record["output_tokens"],
        cached_input_tokens=record["cached_input_tokens"],
    )
    return PriceBook().cost("openai", model, usage) * 0.5  # type: ignore[operator]


def test_openai_batch_is_booked_once_per_line_at_half_price_with_the_create_calls_attribution(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    client = openai_client(gw, **ATTRIBUTION)
    uploaded = client.files.create(file=_jsonl(CHAT_LINES), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.filename == "input.jsonl"
    upstream = [r for r in fake_provider.requests() if r["path"].endswith("/v1/files")][-1]
    assert "tsk_" not in json.dumps(upstream.get("headers", {}))
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes

    job = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    booked = wait_booked(gw, job.id)
    assert (booked["lines_booked"], booked["workflow"], booked["project"]) == (3, "nightly-enrich", "data")
    assert booked["reserved_usd"] > 0

    done = client.batches.retrieve(job.id)
    assert done.status == "completed" and done.output_file_id
    lines = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in lines] == ["first", "second"]
    # The results fetched through the gateway and the next polls book nothing more.
    time.sleep(1.0)
    records = gw.records(endpoint="batch")
    assert len(records) == 3
    by_line = {json.loads(r["details"])["custom_id"]: r for r in records}
    for line in lines:
        record = by_line[line["custom_id"]]
        usage = line["response"]["body"]["usage"]
        assert (record["input_tokens"], record["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert record["cost_usd"] == pytest.approx(_batch_cost("gpt-4o-mini", record), abs=1e-6)
        assert record["cost_usd"] > 0 and record["status"] == 200
        assert (record["workflow"], record["step"], record["execution_id"], record["source"], record["project"]) == (
            "nightly-enrich",
            "classify",
            "run-42",
            "cron",
            "data",
        )
        assert record["key_name"] == "e2e" and record["provider"] == "openai" and record["model"] == "gpt-4o-mini"
    failed = by_line["broken"]
    assert failed["status"] == 400 and failed["cost_usd"] == 0 and failed["error"]
    assert booked["booked_usd"] == pytest.approx(sum(r["cost_usd"] for r in records), abs=1e-9)
    create = gw.records(endpoint="batches.create")
    assert len(create) == 1 and create[0]["cost_usd"] == 0


def test_another_key_gets_404_for_the_job_and_the_file_and_lists_only_its_own(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    owner = openai_client(gw)
    uploaded = owner.files.create(file=_jsonl(CHAT_LINES[:1]), purpose="batch")
    job = owner.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers={"x-fake-batch-seconds": "3600"},
    )
    other = openai_client(gw, new_key(gw, "other"))
    fake_provider.clear()
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert sdk_requests(fake_provider) == []  # nothing forwarded
    assert [b.id for b in other.batches.list()] == []
    assert [f.id for f in other.files.list()] == []
    assert [b.id for b in owner.batches.list()] == [job.id]
    assert owner.batches.cancel(job.id).status == "cancelling"


def test_a_budget_too_small_for_the_job_is_402_before_the_provider(gw: Gateway, fake_provider: FakeProvider) -> None:
    key = new_key(gw, "tight", "--budget-usd", "0.0001")
    client = openai_client(gw, key)
    big = [
        {
            "custom_id": f"l{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        }
        for i in range(5)
    ]
    uploaded = client.files.create(file=_jsonl(big), purpose="batch")
    fake_provider.clear()
    with pytest.raises(openai.APIStatusError) as refused:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.status_code == 402
    assert not [r for r in sdk_requests(fake_provider) if r["path"].endswith("/v1/batches")]


def spawn(gateway: Gateway, tmp_path: Path) -> Gateway:
    """Another `tokensense serve` process on the same home and database (an instance more, or a restart)."""
    from tests.conftest import BIN, free_port, wait_healthy

    port = free_port()
    log_path = tmp_path / f"gateway-{port}.log"
    proc = subprocess.Popen(
        [str(BIN / "tokensense"), "serve", "--port", str(port)],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        env=gateway.env,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(f"{url}/health", proc, "the gateway")
    return Gateway(
        url=url,
        home=gateway.home,
        env=gateway.env,
        process=proc,
        key=gateway.key,
        fake=gateway.fake,
        log_path=log_path,
    )


def restart(gateway: Gateway, tmp_path: Path) -> Gateway:
    stop(gateway.process)
    return spawn(gateway, tmp_path)


def test_a_restart_mid_job_books_each_line_once(tmp_path: Path, fake_provider: FakeProvider) -> None:
    gateway = start_gateway(tmp_path, fake_provider, extra_env=POLL)
    try:
        client = openai_client(gateway, **ATTRIBUTION)
        uploaded = client.files.create(file=_jsonl(CHAT_LINES), purpose="batch")
        job = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers={"x-fake-batch-seconds": "3"},
        )
        time.sleep(0.8)
        assert [j["booked_at"] for j in jobs(gateway) if j["id"] == job.id] == [None]  # polled, still running
        gateway = restart(gateway, tmp_path)
        booked = wait_booked(gateway, job.id)
        assert booked["lines_booked"] == 3
        # The results fetched through the gateway, and a follower that books the job again (a crash between the
        # records and the job's row, another instance): each line stays one record.
        client = openai_client(gateway)
        output = client.batches.retrieve(job.id).output_file_id
        assert output and len(client.files.content(output).text.splitlines()) == 2
        conn = sqlite3.connect(gateway.db_path)
        conn.execute("UPDATE batch_jobs SET booked_at = NULL WHERE id = ?", (job.id,))
        conn.commit()
        conn.close()
        again = wait_booked(gateway, job.id)
        assert again["booked_usd"] == pytest.approx(booked["booked_usd"], abs=1e-12)
        records = gateway.records(endpoint="batch")
        assert len(records) == 3 and len({r["request_id"] for r in records}) == 3
        assert {r["workflow"] for r in records} == {"nightly-enrich"}
    finally:
        stop(gateway.process)


def anthropic_client(gateway: Gateway, key: str | None = None, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key or gateway.key, max_retries=0, default_headers=headers)


CLAUDE_REQUESTS = [
    {
        "custom_id": "a",
        "params": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "Hello there"}],
        },
    },
    {"custom_id": "b", "params": {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]}},
]


def test_anthropic_message_batch_booked_at_half_price_results_fetched_through_the_gateway(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    client = anthropic_client(gw, **ATTRIBUTION)
    job = client.messages.batches.create(requests=CLAUDE_REQUESTS)  # type: ignore[arg-type]
    booked = wait_booked(gw, job.id)
    assert booked["endpoint"] == "/v1/messages" and booked["lines_booked"] == 2
    ended = client.messages.batches.retrieve(job.id)
    assert ended.processing_status == "ended" and ended.results_url == f"{gw.url}/v1/messages/batches/{job.id}/results"
    fake_provider.clear()
    results = {r.custom_id: r.result for r in client.messages.batches.results(job.id)}
    assert results["a"].type == "succeeded" and results["b"].type == "errored"
    assert [r["path"] for r in sdk_requests(fake_provider)][-1].endswith(f"/v1/messages/batches/{job.id}/results")
    assert all(r["headers"].get("x-api-key") == "sk-ant-stored-key" for r in sdk_requests(fake_provider))
    records = {json.loads(r["details"])["custom_id"]: r for r in gw.records(endpoint="batch")}
    assert set(records) == {"a", "b"}
    message = results["a"].message  # type: ignore[union-attr]
    ok = records["a"]
    assert (ok["input_tokens"], ok["output_tokens"]) == (message.usage.input_tokens, message.usage.output_tokens)
    standard = PriceBook().cost(
        "anthropic", "claude-sonnet-4-5", TokenUsage(input_tokens=ok["input_tokens"], output_tokens=ok["output_tokens"])
    )
    assert ok["cost_usd"] == pytest.approx(standard * 0.5, abs=1e-6) and ok["cost_usd"] > 0  # type: ignore[operator]
    assert (ok["workflow"], ok["step"], ok["execution_id"]) == ("nightly-enrich", "classify", "run-42")
    assert records["b"]["cost_usd"] == 0 and records["b"]["status"] == 400 and records["b"]["error"]

    other = anthropic_client(gw, new_key(gw, "other"))
    with pytest.raises(anthropic.NotFoundError):
        other.messages.batches.retrieve(job.id)
    with pytest.raises(anthropic.NotFoundError):
        list(other.messages.batches.results(job.id))
    assert [b.id for b in other.messages.batches.list()] == []
    assert [b.id for b in client.messages.batches.list()] == [job.id]


def test_anthropic_cancelled_lines_are_not_booked(gw: Gateway) -> None:
    client = anthropic_client(gw, **{"x-fake-batch-seconds": "3600"})
    job = client.messages.batches.create(requests=CLAUDE_REQUESTS[:1])  # type: ignore[arg-type]
    assert client.messages.batches.cancel(job.id).processing_status == "canceling"
    booked = wait_booked(gw, job.id)
    assert booked["lines_booked"] == 0 and booked["booked_usd"] == 0 and booked["state"] == "ended"
    assert gw.records(endpoint="batch") == []


def gemini_client(gateway: Gateway, key: str | None = None, **headers: str) -> genai.Client:
    return genai.Client(api_key=key or gateway.key, http_options={"base_url": gateway.url, "headers": headers})


GEMINI_REQUEST = {
    "contents": [{"role": "user", "parts": [{"text": "Tell me about batches"}]}],
    "config": {"max_output_tokens": 64},
}


def test_gemini_inline_batch_booked_at_half_price(gw: Gateway) -> None:
    client = gemini_client(gw, **ATTRIBUTION)
    job = client.batches.create(
        model="gemini-2.5-flash",
        src=[GEMINI_REQUEST, {"contents": "Second question here"}],  # type: ignore[arg-type]
        config={"display_name": "nightly"},
    )
    assert job.name and job.name.startswith("batches/")
    job_id = job.name.removeprefix("batches/")
    booked = wait_booked(gw, job_id)
    assert booked["lines_booked"] == 2 and booked["models"] == '["gemini-2.5-flash"]'
    done = client.batches.get(name=job.name)
    assert done.state and done.state.name == "JOB_STATE_SUCCEEDED"
    answers = done.dest.inlined_responses  # type: ignore[union-attr]
    records = gw.records(endpoint="batch")
    assert len(records) == 2 and answers is not None
    written = [a.response.usage_metadata.candidates_token_count for a in answers]  # type: ignore[union-attr]
    assert sorted(r["output_tokens"] for r in records) == sorted(written)  # type: ignore[type-var]
    for record in records:
        standard = PriceBook().cost(
            "google",
            "gemini-2.5-flash",
            TokenUsage(input_tokens=record["input_tokens"], output_tokens=record["output_tokens"]),
        )
        assert record["cost_usd"] == pytest.approx(standard * 0.5, abs=1e-6) and record["cost_usd"] > 0  # type: ignore[operator]
        assert (record["workflow"], record["project"], record["provider"]) == ("nightly-enrich", "data", "gemini")
    other = gemini_client(gw, new_key(gw, "other"))
    with pytest.raises(genai_errors.ClientError) as missing:
        other.batches.get(name=job.name)
    assert missing.value.code == 404
    assert [j.name for j in other.batches.list()] == []
    assert [j.name for j in client.batches.list()] == [job.name]


def test_batches_command_lists_followed_jobs_and_prices_show_the_batch_rate(gw: Gateway) -> None:
    client = openai_client(gw, **ATTRIBUTION)
    uploaded = client.files.create(file=_jsonl(CHAT_LINES[:2]), purpose="batch")
    job = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    booked = wait_booked(gw, job.id)
    listed = json.loads(gw.cli("batches", "--json").stdout)
    assert [(j["id"], j["provider"], j["lines_booked"], j["workflow"]) for j in listed] == [
        (job.id, "openai", 2, "nightly-enrich")
    ]
    text = gw.cli("batches").stdout
    assert job.id in text and "booked" in text and f"${booked['booked_usd']:,.6f}" in text
    groups = json.loads(gw.cli("usage", "--by", "endpoint,workflow", "--json").stdout)
    batch = [g for g in groups if g["endpoint"] == "batch"]
    assert len(batch) == 1 and batch[0]["requests"] == 2 and batch[0]["workflow"] == "nightly-enrich"
    assert batch[0]["cost_usd"] == pytest.approx(booked["booked_usd"], abs=1e-9)
    assert json.loads(gw.cli("prices", "gpt-4o-mini", "--json").stdout)["batch"] == "catalog batch rate"


def test_an_open_job_holds_its_reservation_across_a_restart_and_releases_it_when_booked(
    tmp_path: Path, fake_provider: FakeProvider
) -> None:
    gateway = start_gateway(tmp_path, fake_provider, extra_env=POLL)
    try:
        probe = openai_client(gateway)
        uploaded = probe.files.create(file=_jsonl(CHAT_LINES[:2]), purpose="batch")
        sample = probe.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        reserved = next(j["reserved_usd"] for j in jobs(gateway) if j["id"] == sample.id)
        assert reserved > 0
        key = new_key(gateway, "budgeted", "--budget-usd", f"{reserved * 1.5:.8f}")
        client = openai_client(gateway, key)
        mine = client.files.create(file=_jsonl(CHAT_LINES[:2]), purpose="batch")
        slow = {"x-fake-batch-seconds": "3600"}
        first = client.batches.create(
            input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h", extra_headers=slow
        )
        with pytest.raises(openai.APIStatusError) as refused:
            client.batches.create(input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert refused.value.status_code == 402
        gateway = restart(gateway, tmp_path)  # the hold is in the database: a new process starts from it
        client = openai_client(gateway, key)
        with pytest.raises(openai.APIStatusError) as again:
            client.batches.create(input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert again.value.status_code == 402
        client.batches.cancel(first.id)
        assert wait_booked(gateway, first.id)["booked_usd"] == 0  # cancelled before it ran: nothing booked
        second = client.batches.create(input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h")
        booked = wait_booked(gateway, second.id)
        assert 0 < booked["booked_usd"] < booked["reserved_usd"]
    finally:
        stop(gateway.process)


def test_uploads_stream_within_the_upload_limit(gw: Gateway, fake_provider: FakeProvider) -> None:
    """TOKENSENSE_MAX_UPLOAD_MB=1: a 0.9 MB input file streams through (its lines summed on the way), 1.5 MB is 413."""
    client = openai_client(gw)
    line = {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "y" * 9000}], "max_tokens": 5},
    }
    lines = [{**line, "custom_id": f"l{i}"} for i in range(100)]
    uploaded = client.files.create(file=_jsonl(lines), purpose="batch")
    assert 850_000 < uploaded.bytes < 1_000_000
    job = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers={"x-fake-batch-seconds": "3600"},
    )
    reserved = next(j["reserved_usd"] for j in jobs(gw) if j["id"] == job.id)
    usage = TokenUsage(input_tokens=100 * (9000 // 3 + 1 + 8), output_tokens=100 * 5)
    assert reserved == pytest.approx(PriceBook().cost("openai", "gpt-4o-mini", usage) * 0.5, rel=0.01)  # type: ignore[operator]
    fake_provider.clear()
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=_jsonl(lines + lines[:70]), purpose="batch")
    assert refused.value.status_code == 413
    assert not [r for r in sdk_requests(fake_provider) if r["path"].endswith("/v1/files")]


def test_two_instances_on_one_database_book_each_line_once(tmp_path: Path, fake_provider: FakeProvider) -> None:
    """Both instances run a follower; the lease lets one poll at a time, the database keeps each line once."""
    first = start_gateway(tmp_path, fake_provider, extra_env=POLL)
    second = spawn(first, tmp_path)
    try:
        made = []
        for gateway in (first, second, first):
            client = openai_client(gateway, **ATTRIBUTION)
            uploaded = client.files.create(file=_jsonl(CHAT_LINES), purpose="batch")
            made.append(
                client.batches.create(
                    input_file_id=uploaded.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                    extra_headers={"x-fake-batch-seconds": "1"},
                )
            )
        for job in made:
            assert wait_booked(first, job.id)["lines_booked"] == 3
        time.sleep(1.0)  # more polls from both: nothing more is booked
        records = first.records(endpoint="batch")
        assert len(records) == 9 and len({r["request_id"] for r in records}) == 9
        # Each instance serves the other's jobs to their key (ownership is in the database).
        assert openai_client(second).batches.retrieve(made[0].id).status == "completed"
    finally:
        stop(second.process)
        stop(first.process)


def test_gemini_file_upload_and_file_batch_through_the_gateway(gw: Gateway, fake_provider: FakeProvider) -> None:
    """google-genai's resumable upload (its bytes come without a key, on the session URL the gateway handed out),
    a batch from that file, and its results downloaded through the gateway; owned by the key."""
    client = gemini_client(gw, **ATTRIBUTION)
    request = {
        "contents": [{"role": "user", "parts": [{"text": "Tell me about batches"}]}],
        "generationConfig": {"maxOutputTokens": 50},
    }
    lines = [{"key": "k1", "request": request}, {"key": "k2", "request": request}]
    uploaded = client.files.upload(file=_jsonl(lines), config={"mime_type": "application/jsonl"})
    assert uploaded.name and uploaded.name.startswith("files/")
    upstream = [r for r in fake_provider.requests() if "/upload/" in r["path"]]
    assert len(upstream) == 2 and upstream[1]["query"].get("upload_id") != upstream[0]["query"].get("upload_id")
    assert all("tsk_" not in json.dumps(r["headers"]) for r in upstream)
    assert client.files.get(name=uploaded.name).size_bytes == uploaded.size_bytes
    job = client.batches.create(model="gemini-2.5-flash", src=uploaded.name)
    assert job.name
    job_id = job.name.removeprefix("batches/")
    booked = wait_booked(gw, job_id)
    assert booked["lines_booked"] == 2 and booked["reserved_usd"] > 0
    done = client.batches.get(name=job.name)
    assert done.dest is not None and done.dest.file_name
    results = [json.loads(line) for line in client.files.download(file=done.dest.file_name).splitlines()]
    assert [r["key"] for r in results] == ["k1", "k2"]
    records = {json.loads(r["details"])["custom_id"]: r for r in gw.records(endpoint="batch")}
    assert set(records) == {"k1", "k2"}
    for result in results:
        record = records[result["key"]]
        assert record["output_tokens"] == result["response"]["usageMetadata"]["candidatesTokenCount"]
        standard = PriceBook().cost(
            "google",
            "gemini-2.5-flash",
            TokenUsage(input_tokens=record["input_tokens"], output_tokens=record["output_tokens"]),
        )
        assert record["cost_usd"] == pytest.approx(standard * 0.5, abs=1e-6) and record["workflow"] == "nightly-enrich"  # type: ignore[operator]
    other = gemini_client(gw, new_key(gw, "other"))
    for attempt in (
        lambda: other.files.get(name=uploaded.name),
        lambda: other.files.download(file=done.dest.file_name),  # type: ignore[union-attr]
        lambda: other.batches.create(model="gemini-2.5-flash", src=uploaded.name),
    ):
        with pytest.raises(genai_errors.ClientError) as missing:
            attempt()
        assert missing.value.code == 404
    assert [f.name for f in other.files.list()] == []
    assert uploaded.name in [f.name for f in client.files.list()]


def test_a_gemini_upload_over_the_limit_is_413_before_the_provider(gw: Gateway, fake_provider: FakeProvider) -> None:
    client = gemini_client(gw)
    big = io.BytesIO(b"x" * 1_500_000)
    big.name = "big.jsonl"
    with pytest.raises(genai_errors.ClientError) as refused:
        client.files.upload(file=big, config={"mime_type": "application/jsonl"})
    assert refused.value.code == 413
    assert not [r for r in fake_provider.requests() if r["query"].get("upload_id")]


def test_another_sdks_files_call_on_a_shared_path_is_not_sent_to_openai(
    gw: Gateway, fake_provider: FakeProvider
) -> None:
    """`POST /v1/files` from the anthropic SDK (its Files API) goes to Anthropic (its SDK's `anthropic-version`
    names it): the file never reaches OpenAI."""
    client = anthropic_client(gw)
    client.beta.files.upload(file=("notes.txt", b"private notes", "text/plain"))
    [upload] = [r for r in sdk_requests(fake_provider) if r["path"].endswith("/v1/files")]
    assert upload["path"] == "/anthropic/v1/files" and upload["headers"]["x-api-key"] == STORED_ANTHROPIC_KEY


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def test_an_upload_streams_through_the_gateway_without_being_buffered(
    tmp_path: Path, fake_provider: FakeProvider
) -> None:
    """50 MB through the gateway: its memory stays flat (the fake provider, not the gateway, holds the file)."""
    gateway = start_gateway(tmp_path, fake_provider, extra_env={**POLL, "TOKENSENSE_MAX_UPLOAD_MB": "100"})
    try:
        client = openai_client(gateway)
        client.files.create(file=_jsonl(CHAT_LINES[:1]), purpose="batch")  # warm: the route's code paths loaded
        pid = gateway.process.pid
        before = _rss_mb(pid)
        peak = [before]
        sending = threading.Event()
        sending.set()

        def watch() -> None:
            while sending.is_set():
                peak.append(_rss_mb(pid))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "y" * 2000}], "max_tokens": 20}
        line = {"method": "POST", "url": "/v1/chat/completions", "body": body}
        data = b"".join(json.dumps({**line, "custom_id": f"l{i}"}).encode() + b"\n" for i in range(24_000))
        big = io.BytesIO(data)
        big.name = "big.jsonl"
        try:
            uploaded = client.files.create(file=big, purpose="batch")
        finally:
            sending.clear()
            watcher.join()
        assert uploaded.bytes == len(data) > 48_000_000
        assert max(peak) - before < 25, f"the gateway grew from {before:.0f} MB to {max(peak):.0f} MB"
    finally:
        stop(gateway.process)

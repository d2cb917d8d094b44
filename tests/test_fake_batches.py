"""The fake provider's batch APIs (OpenAI files and batches, Anthropic Message Batches), judged by the official SDKs
pointed straight at it (no gateway)."""
# ruff: noqa: F811  (the fixtures imported from fakeprovider_fixture are used as test arguments)

from __future__ import annotations

import io
import json

import anthropic
import openai
import pytest
from fakeprovider_fixture import fake_provider, fake_provider_url, fake_requests  # noqa: F401
from google import genai
from google.genai import errors as genai_errors


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)


def anthropic_client(url: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0, default_headers=headers)


def _jsonl(lines: list[dict]) -> io.BytesIO:
    buffer = io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    buffer.name = "input.jsonl"
    return buffer


CHAT_LINES = [
    {"custom_id": "first", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi to Ada"}], "max_tokens": 20}},
    {"custom_id": "second", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Count to three please"}]}},
    {"custom_id": "broken", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}},
]


def test_openai_files_and_batch_round_trip(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    uploaded = client.files.create(file=_jsonl(CHAT_LINES), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.purpose == "batch" and uploaded.filename == "input.jsonl"
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes

    job = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                completion_window="24h", metadata={"run": "nightly"})
    assert job.id.startswith("batch_") and job.request_counts.total == 3

    done = client.batches.retrieve(job.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    lines = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in lines] == ["first", "second"]
    usage = [line["response"]["body"]["usage"] for line in lines]
    assert all(u["prompt_tokens"] > 0 and u["completion_tokens"] > 0 for u in usage)
    assert done.usage is not None
    assert done.usage.input_tokens == sum(u["prompt_tokens"] for u in usage)
    assert done.usage.output_tokens == sum(u["completion_tokens"] for u in usage)
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert errors[0]["custom_id"] == "broken" and errors[0]["response"]["status_code"] == 400

    assert [b.id for b in client.batches.list()] == [job.id]
    assert fake_requests(fake_provider)[-1]["path"] == "/v1/batches"


def test_openai_batch_waits_and_cancels(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    uploaded = client.files.create(file=_jsonl(CHAT_LINES[:1]), purpose="batch")
    job = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                                extra_headers={"x-fake-batch-seconds": "3600"})
    assert client.batches.retrieve(job.id).status == "in_progress"
    assert client.batches.cancel(job.id).status == "cancelling"
    assert client.batches.retrieve(job.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(job.id)


def test_openai_batch_refuses_a_file_of_another_purpose(fake_provider: str) -> None:
    client = openai_client(fake_provider)
    other = client.files.create(file=_jsonl(CHAT_LINES), purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
        client.batches.create(input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")
    assert client.files.delete(other.id).deleted is True


def test_anthropic_message_batch_round_trip(fake_provider: str) -> None:
    client = anthropic_client(fake_provider)
    job = client.messages.batches.create(requests=[
        {"custom_id": "a", "params": {"model": "claude-sonnet-4-5", "max_tokens": 50,
                                      "messages": [{"role": "user", "content": "Hello there"}]}},
        {"custom_id": "b", "params": {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]}},
    ])
    assert job.id.startswith("msgbatch_") and job.request_counts.processing == 2
    ended = client.messages.batches.retrieve(job.id)
    assert ended.processing_status == "ended" and ended.results_url is not None
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (1, 1)
    results = {r.custom_id: r.result for r in client.messages.batches.results(job.id)}
    assert results["a"].type == "succeeded"
    assert results["a"].message.usage.input_tokens > 0 and results["a"].message.usage.output_tokens > 0
    assert results["b"].type == "errored"
    assert [b.id for b in client.messages.batches.list()] == [job.id]
    assert client.messages.batches.delete(job.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(job.id)


def test_anthropic_message_batch_cancel(fake_provider: str) -> None:
    client = anthropic_client(fake_provider, **{"x-fake-batch-seconds": "3600"})
    job = client.messages.batches.create(requests=[
        {"custom_id": "a", "params": {"model": "claude-sonnet-4-5", "max_tokens": 10,
                                      "messages": [{"role": "user", "content": "Hi"}]}},
    ])
    assert client.messages.batches.retrieve(job.id).processing_status == "in_progress"
    assert client.messages.batches.cancel(job.id).processing_status == "canceling"
    ended = client.messages.batches.retrieve(job.id)
    assert ended.processing_status == "ended" and ended.request_counts.canceled == 1
    assert [r.result.type for r in client.messages.batches.results(job.id)] == ["canceled"]


def gemini_client(url: str) -> genai.Client:
    return genai.Client(api_key="gm-test", http_options={"base_url": url})


GEMINI_REQUEST = {"contents": [{"role": "user", "parts": [{"text": "Tell me about batches"}]}]}


def test_gemini_inline_batch(fake_provider: str) -> None:
    client = gemini_client(fake_provider)
    job = client.batches.create(model="gemini-2.5-flash", src=[GEMINI_REQUEST, {"contents": "Second question here"}],
                                config={"display_name": "nightly"})
    assert job.name.startswith("batches/") and job.state.name == "JOB_STATE_PENDING"
    done = client.batches.get(name=job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED" and done.display_name == "nightly"
    answers = done.dest.inlined_responses
    assert len(answers) == 2
    assert all(a.response.usage_metadata.prompt_token_count > 0 for a in answers)
    assert all(a.response.usage_metadata.candidates_token_count > 0 for a in answers)
    assert [j.name for j in client.batches.list()] == [job.name]
    client.batches.delete(name=job.name)
    with pytest.raises(genai_errors.ClientError):
        client.batches.get(name=job.name)


def test_gemini_file_batch_and_cancel(fake_provider: str) -> None:
    client = gemini_client(fake_provider)
    lines = [{"key": "k1", "request": GEMINI_REQUEST}, {"key": "k2", "request": GEMINI_REQUEST}]
    uploaded = client.files.upload(file=_jsonl(lines), config={"mime_type": "application/jsonl"})
    assert uploaded.name.startswith("files/") and uploaded.size_bytes > 0
    job = client.batches.create(model="gemini-2.5-flash", src=uploaded.name)
    done = client.batches.get(name=job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED" and done.dest.file_name.startswith("files/batch-")
    results = [json.loads(line) for line in client.files.download(file=done.dest.file_name).splitlines()]
    assert [r["key"] for r in results] == ["k1", "k2"]
    assert all(r["response"]["usageMetadata"]["totalTokenCount"] > 0 for r in results)

    waiting = genai.Client(api_key="gm-test", http_options={"base_url": fake_provider,
                                                            "headers": {"x-fake-batch-seconds": "3600"}})
    slow = waiting.batches.create(model="gemini-2.5-flash", src=[GEMINI_REQUEST])
    waiting.batches.cancel(name=slow.name)
    assert waiting.batches.get(name=slow.name).state.name == "JOB_STATE_CANCELLED"

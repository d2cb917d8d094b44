"""Batch jobs with the rest of the gateway, in process: the upload scanner's state between processes, booked lines
handed to the record observers once, and retention of what the gateway remembers of batch and owned objects."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine, select

from tokensense.core.usage import TokenUsage
from tokensense.gateway.batches import BatchFollower, InputScanner
from tokensense.metering.pricing import PriceBook
from tokensense.providers import get_provider
from tokensense.providers.batch_api import ResultLine
from tokensense.storage import batches as store
from tokensense.storage.models import BatchFile, BatchJob, OwnedResource, UploadSession, UsageCreate
from tokensense.storage.retention import prune_usage

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _engine():  # type: ignore[no-untyped-def]
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(engine)
    return engine


def test_an_upload_scanned_in_requests_resumed_from_saved_state_sums_like_one_pass() -> None:
    api = get_provider("gemini").batch_api  # type: ignore[union-attr]
    assert api is not None
    request = {"contents": [{"role": "user", "parts": [{"text": "Hello there"}]}], "generationConfig": {}}
    data = b"".join(
        json.dumps({"key": f"k{i}", "request": {**request, "generationConfig": {"maxOutputTokens": 5 + i}}}).encode()
        + b"\n"
        for i in range(7)
    )
    whole = InputScanner(api)
    whole(data)
    whole(b"")
    state: dict[str, Any] | None = None
    partial: bytes | None = None
    pieces = [data[i : i + 41] for i in range(0, len(data), 41)]
    for n, piece in enumerate(pieces):
        scanner = InputScanner.resumed(api, None, json.loads(json.dumps(state)) if state else None, partial)
        scanner.flush_at_end = n == len(pieces) - 1
        scanner(piece)
        scanner(b"")
        state, partial = scanner.state()
    assert scanner.result() == whole.result() and scanner.result()["lines"] == 7
    assert scanner.size == len(data)


def test_booked_lines_go_to_the_record_observers_once() -> None:
    engine = _engine()
    seen: list[list[UsageCreate]] = []
    runtime = SimpleNamespace(prices=PriceBook(), engine=engine, counters=None, on_booked=[seen.append])
    follower = BatchFollower(runtime)  # type: ignore[arg-type]
    job = BatchJob(
        id="batch_obs",
        provider="openai",
        key_id="k1",
        key_name="team",
        models=["gpt-4o-mini"],
        workflow="nightly",
        reserved_usd=0.01,
    )
    with Session(engine) as session:
        assert store.remember_job(session=session, job=job)
    with Session(engine) as session:
        (job,) = store.open_jobs(session=session)  # as the follower reads it
    lines = [
        ResultLine(f"l{i}", "gpt-4o-mini", 200, TokenUsage(input_tokens=100, output_tokens=10 + i)) for i in range(3)
    ]
    provider = get_provider("openai")
    assert provider is not None
    assert follower._book(provider, job, "completed", lines) == 1
    assert follower._book(provider, job, "completed", lines) == 0  # another poll, or another instance: not again
    assert len(seen) == 1 and [r.details["custom_id"] for r in seen[0]] == ["l0", "l1", "l2"]  # type: ignore[index]
    assert all(r.endpoint == "batch" and r.workflow == "nightly" and r.cost_usd for r in seen[0])


def test_retention_purges_finished_batch_jobs_old_files_and_owned_objects() -> None:
    engine = _engine()
    old, recent = NOW - timedelta(days=40), NOW - timedelta(days=2)
    with Session(engine) as session:
        session.add(BatchJob(id="job-old-booked", provider="openai", created_at=old, booked_at=old))
        session.add(BatchJob(id="job-old-open", provider="openai", created_at=old, input_file_id="file-read"))
        session.add(BatchJob(id="job-recent-booked", provider="openai", created_at=recent, booked_at=recent))
        session.add(BatchFile(id="file-old", provider="openai", created_at=old))
        session.add(BatchFile(id="file-read", provider="openai", created_at=old))  # an open job's input
        session.add(BatchFile(id="file-recent", provider="openai", created_at=recent))
        session.add(OwnedResource(id="video_old", kind="videos", provider="openai", created_at=old, booked_at=old))
        session.add(
            OwnedResource(id="cachedContents/new", kind="cached_contents", provider="gemini", created_at=recent)
        )
        session.add(UploadSession(token="gone", provider="gemini", key_id="k", upload_id="u", expires_at=1.0))
        session.add(UploadSession(token="live", provider="gemini", key_id="k", upload_id="u", expires_at=4e9))
        session.commit()
    result = prune_usage(engine, older_than=timedelta(days=30), now=NOW, pause=0)
    assert result.resource_rows == 3
    with Session(engine) as session:
        assert sorted(session.exec(select(BatchJob.id))) == ["job-old-open", "job-recent-booked"]
        assert sorted(session.exec(select(BatchFile.id))) == ["file-read", "file-recent"]
        assert list(session.exec(select(OwnedResource.id))) == ["cachedContents/new"]
        assert list(session.exec(select(UploadSession.token))) == ["live"]

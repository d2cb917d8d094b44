"""Retention: old records are pruned while the gateway serves, and every report stays what it was."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlmodel import Session

from tests.conftest import FakeProvider, start_gateway, stop
from tokensense.storage import analytics, repo, retention
from tokensense.storage.db import make_engine
from tokensense.storage.models import UsageCreate


def _old_records(count: int, *, now: datetime) -> list[UsageCreate]:
    """Records 95 to 125 days old, over three workflows, some unpriced, some refused."""
    return [
        UsageCreate(
            request_id=f"old-{n}", created_at=now - timedelta(days=95, minutes=n * 7, seconds=n % 60, microseconds=n),
            workflow=("etl", "chat", None)[n % 3], step=("a", "b")[n % 2], key_id="k-old", key_name="old",
            provider="openai", model="gpt-4o-mini", endpoint="/v1/chat/completions",
            status=429 if n % 11 == 0 else 200, input_tokens=n, output_tokens=n % 50,
            cost_usd=None if n % 13 == 0 else round(n * 1e-6, 10), latency_ms=100.0 + n,
        )
        for n in range(count)
    ]


def test_prune_while_serving_keeps_every_report(tmp_path: Path, fake_provider: FakeProvider) -> None:
    """`tokensense usage prune --older-than 90d` in small batches while calls keep coming: the old records are
    gone, every call is recorded, and the reports by workflow and key over all time and over whole hours are
    the same as before (the live workflow grows by exactly its calls)."""
    gw = start_gateway(tmp_path, fake_provider)
    engine = make_engine(f"sqlite:///{gw.db_path}")
    now = datetime.now(UTC)
    answered = 0
    try:
        with Session(engine) as session:
            repo.record_usages(session=session, usages=_old_records(3000, now=now))
            before = {fields: analytics.grouped_totals(session=session, fields=list(fields))
                      for fields in (("workflow",), ("key_name",), ("workflow", "step"))}
            since_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(days=100)
            before_window = analytics.grouped_totals(session=session, fields=["workflow"], since=since_hour)

        stop_calls = threading.Event()

        def calls() -> None:
            nonlocal answered
            with httpx.Client(timeout=10) as client:
                while not stop_calls.is_set():
                    response = client.post(f"{gw.url}/v1/chat/completions",
                                           headers={"authorization": f"Bearer {gw.key}", "x-workflow-tag": "live"},
                                           json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
                    assert response.status_code == 200
                    answered += 1

        caller = threading.Thread(target=calls)
        caller.start()
        try:
            time.sleep(0.5)
            pruned = json.loads(gw.cli("usage", "prune", "--older-than", "90d", "--batch", "100", "--json").stdout)
            time.sleep(0.5)
        finally:
            stop_calls.set()
            caller.join(timeout=30)
        assert pruned["records"] == 3000
        assert answered > 0
        assert len(gw.wait_records(answered, workflow="live")) == answered

        with Session(engine) as session:
            assert analytics.raw_records_before(session=session) == datetime.fromisoformat(pruned["raw_before"])
            assert repo.query_usage(session=session, since=now - timedelta(days=200)) == \
                repo.query_usage(session=session, since=now - timedelta(hours=1))  # only the live calls are left
            after = {fields: analytics.grouped_totals(session=session, fields=list(fields))
                     for fields in before}
            for fields, rows in after.items():
                old = [row for row in rows if not {"live", "e2e"} & set(row[0])]  # the live calls' groups apart
                assert [(values, totals) for values, totals, _ in old] == \
                    [(values, totals) for values, totals, _ in before[fields]]
            live = [totals for values, totals, _ in after[("workflow",)] if values == ("live",)]
            assert [t.requests for t in live] == [answered]
            window = analytics.grouped_totals(session=session, fields=["workflow"], since=since_hour)
            assert [(v, t) for v, t, _ in window if v != ("live",)] == [(v, t) for v, t, _ in before_window]
        listing = gw.cli("usage", "--since", "200d", "--json")
        assert "were pruned" in listing.stderr
        assert len(json.loads(listing.stdout)) == answered
    finally:
        stop(gw.process)
        engine.dispose()


def test_retention_worker_prunes_past_raw_days(tmp_path: Path) -> None:
    """`[retention] raw_days`: the gateway's thread deletes records past it and records the horizon."""
    engine = make_engine(f"sqlite:///{tmp_path / 'usage.db'}")
    from tokensense.storage.db import init_db

    init_db(engine)
    now = datetime.now(UTC)
    with Session(engine) as session:
        repo.record_usages(session=session, usages=_old_records(50, now=now) + [UsageCreate(request_id="new")])
    worker = retention.RetentionWorker(engine, raw_days=90, first_after=0.01, every=3600).start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with Session(engine) as session:
                if analytics.raw_records_before(session=session) and len(repo.query_usage(session=session)) == 1:
                    break
            time.sleep(0.05)
    finally:
        worker.close()
    with Session(engine) as session:
        assert [r["request_id"] for r in repo.query_usage(session=session)] == ["new"]
        assert analytics.report_totals(session=session).requests == 51
    engine.dispose()

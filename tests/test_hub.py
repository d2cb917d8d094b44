"""The supervisor's hub in one process: counters shared by several clients, records written once."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from sqlmodel import Session, select

from tokensense.gateway.hub import Hub
from tokensense.gateway.limits import MemoryCounters
from tokensense.gateway.shared_counters import HUB_SOCKET_ENV, SharedCounters, make_counters
from tokensense.metering.hub_recorder import RECORD_PREFIX, HubRecorder
from tokensense.storage.db import init_db, make_engine
from tokensense.storage.models import Usage, UsageCreate


def _record(i: int) -> UsageCreate:
    return UsageCreate(request_id=f"req-{i}", provider="openai", model="gpt-4o-mini", endpoint="chat",
                       status=200, input_tokens=2, output_tokens=3, cost_usd=0.001, key_name="k")


def test_counters_and_records_shared_by_clients(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    init_db(engine)

    async def scenario() -> None:
        hub = Hub(tmp_path / "run" / "hub.sock", engine, flush_interval=0.01)
        await hub.start()
        first, second = SharedCounters(str(hub.path)), SharedCounters(str(hub.path))
        allowed = []
        for i in range(6):
            client = (first, second)[i % 2]
            decision = await client.acquire_rate("key", f"r{i}", 4, None, 10)
            allowed.append(decision.allowed)
        assert allowed == [True] * 4 + [False] * 2
        assert decision.retry_after is not None and decision.limited_by == "requests"

        loads = []

        def load_spent() -> float:
            loads.append(1)
            return 0.75

        budget = await first.reserve_budget("key", "w1", 1.0, 0.2, load_spent, None)
        assert budget.allowed and budget.spent == 0.75 and abs(budget.reserved - 0.2) < 1e-9
        # 0.75 spent and 0.2 reserved by the other client: 0.1 more does not fit (issue 12's rule).
        assert not (await second.reserve_budget("key", "w1", 1.0, 0.1, load_spent, None)).allowed
        assert loads == [1]  # the window was loaded once, by the first client
        await first.settle_budget("key", "w1", 0.2, 0.0)
        assert (await second.reserve_budget("key", "w1", 1.0, 0.1, load_spent, None)).allowed

        recorder = HubRecorder(str(hub.path))
        for i in range(50):
            recorder.submit(_record(i))
        await asyncio.to_thread(recorder.close)
        await first.close()
        await second.close()
        await hub.close()
        assert hub.records == 50

    asyncio.run(scenario())
    with Session(engine) as session:
        assert len(session.exec(select(Usage)).all()) == 50


def test_make_counters_picks_the_hub_in_a_worker(monkeypatch) -> None:
    monkeypatch.delenv(HUB_SOCKET_ENV, raising=False)
    assert isinstance(make_counters(None), MemoryCounters)
    monkeypatch.setenv(HUB_SOCKET_ENV, "/nonexistent/hub.sock")
    assert isinstance(make_counters(None), SharedCounters)


def test_shared_counters_fail_when_the_hub_is_gone(tmp_path: Path) -> None:
    async def scenario() -> None:
        counters = SharedCounters(str(tmp_path / "missing.sock"))
        try:
            await counters.acquire_rate("key", "r", 1, None, 1)
        except OSError:
            return
        raise AssertionError("expected a connection error")

    asyncio.run(scenario())


def test_worker_count() -> None:
    import argparse

    import pytest

    from tokensense.serve.workers import worker_count

    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count("3") == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            worker_count(bad)


def test_hub_reads_records_in_either_form(tmp_path: Path) -> None:
    """HubRecorder's lines are read by pydantic directly; any other JSON shape of a record, and bad records, still work."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    init_db(engine)

    async def scenario() -> None:
        hub = Hub(tmp_path / "run" / "hub.sock", engine, flush_interval=0.01)
        fast = RECORD_PREFIX + _record(1).model_dump_json().encode() + b"}\n"
        other = json.dumps({"r": json.loads(_record(2).model_dump_json()), "op": "record"}).encode() + b"\n"
        bad = RECORD_PREFIX + b'{"request_id": 5}}\n'
        for line in (fast, other, bad):
            assert await hub.handle(line) is None
        assert hub.records == 2
        await asyncio.to_thread(hub.recorder.close)

    asyncio.run(scenario())
    with Session(engine) as session:
        assert sorted(u.request_id for u in session.exec(select(Usage)).all()) == ["req-1", "req-2"]

"""Usage records are written in batches off the event loop, and none is lost at shutdown."""

from __future__ import annotations

import signal

import httpx
import pytest
from conftest import FakeProvider, start_gateway, stop
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine, func, select

from tokensense.metering.recorder import UsageRecorder
from tokensense.storage.models import Usage, UsageCreate


def memory_engine():
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(engine)
    return engine


def count(engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(Usage)).one()


def test_close_drains_everything_submitted() -> None:
    engine = memory_engine()
    recorder = UsageRecorder(engine, interval=5.0, max_batch=7)
    for i in range(100):
        recorder.submit(UsageCreate(model="gpt-4o-mini", input_tokens=i))
    recorder.close()
    assert count(engine) == 100


def test_flush_waits_for_the_batch() -> None:
    engine = memory_engine()
    recorder = UsageRecorder(engine, interval=0.01)
    recorder.submit(UsageCreate(model="m"))
    assert recorder.flush(timeout=10)
    assert count(engine) == 1
    recorder.close()


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_gateway_flushes_records_on_signal(tmp_path, fake_provider: FakeProvider, sig: signal.Signals) -> None:
    # A long flush interval: the records can only reach the database through the shutdown flush.
    gw = start_gateway(tmp_path, fake_provider, extra_env={"TOKENSENSE_FLUSH_INTERVAL": "30"})
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(20):
                r = client.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {gw.key}",
                                                                          "x-workflow-tag": "shutdown"},
                                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
        gw.process.send_signal(sig)
        gw.process.wait(timeout=30)
    finally:
        stop(gw.process)
    assert len(gw.records(workflow="shutdown")) == 20

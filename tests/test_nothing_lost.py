"""Issue 12, "nothing lost": poison records, database outages, the spool, shutdown counts, SSE event sizes."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine, select

from tokensense.gateway.call import CallContext
from tokensense.gateway.record import build_record
from tokensense.gateway.routing import Endpoint
from tokensense.metering.attribution import attribution
from tokensense.metering.pricing import PriceBook
from tokensense.metering.recorder import UsageRecorder
from tokensense.metering.sanitize import clean_text
from tokensense.metering.spool import DEAD_LETTER_FILE, SPOOL_DIRECTORY, DeadLetters, Spool, quarantined_count
from tokensense.metering.sse import EventSplitter
from tokensense.providers import PROVIDERS
from tokensense.providers.openai import OPENAI_ERRORS
from tokensense.storage.models import Usage, UsageCreate


class SwitchableDatabase:
    """An in-memory database whose writes fail (as if unreachable) or block while told to."""

    def __init__(self) -> None:
        self.engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
        SQLModel.metadata.create_all(self.engine)
        self.down = False
        self.gate = threading.Event()
        self.gate.set()
        event.listen(self.engine, "before_cursor_execute", self._before)

    def _before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            self.gate.wait()
            if self.down:
                raise OperationalError(statement, {}, Exception("connection refused (test outage)"))

    def rows(self) -> list[Usage]:
        with Session(self.engine) as session:
            return list(session.exec(select(Usage).order_by(Usage.id)).all())


def recorder_for(db: SwitchableDatabase, home: Path, **kwargs) -> UsageRecorder:
    kwargs.setdefault("interval", 0.01)
    spool = Spool(home / SPOOL_DIRECTORY, max_bytes=kwargs.pop("max_bytes", 10**8))
    return UsageRecorder(db.engine, spool=spool, dead_letters=DeadLetters(home / DEAD_LETTER_FILE), **kwargs)


# --- poison -------------------------------------------------------------------


def test_attribution_header_with_bad_bytes_is_cleaned() -> None:
    """Issue 12: `x-workflow-tag: wf\\xff` was decoded with surrogateescape and made the record unstorable."""
    from mitmproxy.http import Headers

    headers = Headers([(b"x-workflow-tag", b"wf\xff"), (b"x-step", b"a\x00b\r\nc"), (b"x-source", b"s" * 1000)])
    fields = attribution(headers, None)
    assert fields["workflow"] == "wf\ufffd"
    assert fields["step"] == "ab c"
    assert fields["source"] == "s" * 200
    assert all(v is None or v.encode("utf-8") for v in fields.values())


def test_record_builder_cleans_model_key_name_and_error() -> None:
    call = CallContext(Endpoint.CHAT, OPENAI_ERRORS, provider=PROVIDERS["openai"], model="gpt\udcff-4o\x00",
                       error="bad\udc80 answer\n" + "x" * 1000, attribution={"workflow": "w\udcff", "step": None})
    record = build_record(call, status=502, prices=PriceBook())
    assert record.model == "gpt\ufffd-4o"
    assert record.error.startswith("bad\ufffd answer x") and len(record.error) == 300
    assert record.workflow == "w\ufffd"
    json.dumps(record.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")  # storable: valid UTF-8


def test_clean_text_keeps_clean_text_and_drops_empty() -> None:
    assert clean_text("lead-enrichment", 200) == "lead-enrichment"
    assert clean_text("  \x01 ", 200) is None
    assert clean_text("é" * 300, 200) == "é" * 200


def test_poison_record_is_quarantined_alone(tmp_path: Path) -> None:
    """Issue 12: one record the database refuses dropped its whole batch (20 of 20 good records)."""
    db = SwitchableDatabase()
    recorder = recorder_for(db, tmp_path, max_batch=500)
    good = [UsageCreate(model="gpt-4o-mini", request_id=f"good-{i}") for i in range(20)]
    poison = UsageCreate(model="bad\udcff", request_id="poison")
    for record in [*good[:10], poison, *good[10:]]:
        recorder.submit(record)
    assert recorder.flush(timeout=30)
    recorder.close()
    assert sorted(r.request_id for r in db.rows()) == sorted(r.request_id for r in good)
    lines = (tmp_path / DEAD_LETTER_FILE).read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["record"]["request_id"] == "poison" and "UnicodeEncodeError" in entry["reason"]
    assert quarantined_count(tmp_path) == 1
    assert recorder.status().quarantined == 1


def test_usage_command_says_how_many_records_are_quarantined(tmp_path: Path, monkeypatch, capsys) -> None:
    from tokensense.cli.commands import main
    from tokensense.settings import reset_settings
    from tokensense.storage.db import reset_engine

    monkeypatch.setenv("TOKENSENSE_HOME", str(tmp_path))
    reset_settings()
    reset_engine()
    try:
        DeadLetters(tmp_path / DEAD_LETTER_FILE).add(UsageCreate(model="x"), "test reason")
        DeadLetters(tmp_path / DEAD_LETTER_FILE).add("not json", "unreadable spool line")
        assert main(["usage"]) == 0
    finally:
        reset_engine()
        reset_settings()
    err = capsys.readouterr().err
    assert "2 usage records quarantined" in err and DEAD_LETTER_FILE in err


# --- outages and the spool ------------------------------------------------------


def test_outage_spools_then_replays_in_order_exactly_once(tmp_path: Path) -> None:
    db = SwitchableDatabase()
    recorder = recorder_for(db, tmp_path, max_batch=7)
    recorder.submit(UsageCreate(request_id="before"))
    assert recorder.flush(timeout=10)
    db.down = True
    ids = [f"r{i:03d}" for i in range(60)]
    for request_id in ids:
        recorder.submit(UsageCreate(request_id=request_id))
    assert recorder.flush(timeout=30), "spooled records count as stored"
    assert [r.request_id for r in db.rows()] == ["before"]
    assert recorder.status().spooled == 60 and recorder.status().outage
    assert list((tmp_path / SPOOL_DIRECTORY).glob("usage-*.jsonl"))
    db.down = False
    recorder.submit(UsageCreate(request_id="after"))
    assert recorder.flush(timeout=10)
    recorder.close(timeout=20)
    assert [r.request_id for r in db.rows()] == ["before", *ids, "after"]
    assert not list((tmp_path / SPOOL_DIRECTORY).glob("usage-*.jsonl")), "a replayed spool is deleted"


def test_spool_left_by_a_killed_process_is_replayed_once(tmp_path: Path) -> None:
    db = SwitchableDatabase()
    with Session(db.engine) as session:  # one of them reached the database before the crash
        session.add(Usage(**UsageCreate(request_id="dup").model_dump()))
        session.commit()
    dead = Spool(tmp_path / SPOOL_DIRECTORY, max_bytes=10**8)
    dead.append([UsageCreate(request_id="dup"), *[UsageCreate(request_id=f"k{i}") for i in range(5)]])
    path = next((tmp_path / SPOOL_DIRECTORY).glob("usage-*.jsonl"))
    with open(path, "ab") as f:
        f.write(b'{"request_id": "cut-sho')  # a line cut by SIGKILL mid-write
    dead._own.handle.close()
    recorder = recorder_for(db, tmp_path)
    recorder.submit(UsageCreate(request_id="new"))
    assert recorder.flush(timeout=10)
    recorder.close(timeout=20)
    ids = [r.request_id for r in db.rows()]
    assert sorted(ids) == sorted(["dup", "k0", "k1", "k2", "k3", "k4", "new"])
    assert quarantined_count(tmp_path) == 1  # the cut line, with its reason
    assert not path.exists()


def test_a_spool_held_by_a_live_process_is_left_alone(tmp_path: Path) -> None:
    live = Spool(tmp_path / SPOOL_DIRECTORY, max_bytes=10**8)
    live.append([UsageCreate(request_id="theirs")])
    other = Spool(tmp_path / SPOOL_DIRECTORY, max_bytes=10**8)
    assert other.adopt_orphans() == 0
    live.close()


def test_close_during_outage_spools_the_queue_and_logs_counts(tmp_path: Path, caplog) -> None:
    """Issue 12: SIGTERM while the database was down hung 30 s and lost every queued record without a log line."""
    db = SwitchableDatabase()
    db.down = True
    recorder = recorder_for(db, tmp_path, interval=5.0)
    for i in range(20):
        recorder.submit(UsageCreate(request_id=f"q{i}"))
    with caplog.at_level(logging.INFO, logger="tokensense.metering.recorder"):
        recorder.close(timeout=5)
    assert "0 records written, 20 spooled for the next start" in caplog.text
    # The next start writes them.
    db.down = False
    recorder = recorder_for(db, tmp_path)
    recorder.close(timeout=10)
    assert sorted(r.request_id for r in db.rows()) == sorted(f"q{i}" for i in range(20))


def test_frozen_database_close_rescues_the_batch_in_progress(tmp_path: Path) -> None:
    db = SwitchableDatabase()
    db.gate.clear()  # every insert hangs
    recorder = recorder_for(db, tmp_path)
    for i in range(5):
        recorder.submit(UsageCreate(request_id=f"f{i}"))
    recorder.close(timeout=2)
    spool = Spool(tmp_path / SPOOL_DIRECTORY, max_bytes=10**8)
    # The writer thread still holds its file lock in this process: read the files directly.
    lines = [json.loads(line) for p in (tmp_path / SPOOL_DIRECTORY).glob("*.jsonl") for line in p.read_text().splitlines()]
    assert sorted(r["request_id"] for r in lines) == [f"f{i}" for i in range(5)]
    db.gate.set()
    del spool


def test_full_queue_spools_without_blocking_and_loses_nothing(tmp_path: Path) -> None:
    db = SwitchableDatabase()
    db.gate.clear()  # the writer is stuck on the database
    recorder = recorder_for(db, tmp_path, max_queue=5)
    for i in range(200):
        recorder.submit(UsageCreate(request_id=f"o{i}"))  # returns at once: nothing here waits on the database
    assert recorder.overflowed > 0
    db.gate.set()
    assert recorder.flush(timeout=30)
    recorder.close(timeout=20)
    ids = [r.request_id for r in db.rows()]
    assert sorted(ids) == sorted(f"o{i}" for i in range(200)) and len(ids) == 200


def test_spool_bound_drops_with_one_clear_error(tmp_path: Path, caplog) -> None:
    db = SwitchableDatabase()
    db.down = True
    recorder = recorder_for(db, tmp_path, max_bytes=3000)
    with caplog.at_level(logging.ERROR):
        for i in range(100):
            recorder.submit(UsageCreate(request_id=f"b{i}"))
        assert recorder.flush(timeout=30)
    status = recorder.status()
    assert 0 < status.spooled < 100 and status.dropped == 100 - status.spooled
    assert caplog.text.count("usage spool full") == 1
    recorder.close(timeout=5)


def test_insert_is_idempotent_on_request_id_and_attempt() -> None:
    from tokensense.storage.repo import record_usages

    db = SwitchableDatabase()
    records = [UsageCreate(request_id="same", attempt=1), UsageCreate(request_id="same", attempt=2)]
    with Session(db.engine) as session:
        record_usages(session=session, usages=records)
        record_usages(session=session, usages=records)
    assert [(r.request_id, r.attempt) for r in db.rows()] == [("same", 1), ("same", 2)]


# --- SSE events without an end ------------------------------------------------------


def test_oversized_sse_event_is_passed_on_as_it_arrives() -> None:
    """Issue 12: one 8 MB event without a newline was held and rescanned on every chunk (quadratic)."""
    splitter = EventSplitter(max_event=64 * 1024)
    big = b"data: " + b"x" * (1 << 20)
    passed = []
    for i in range(0, len(big), 4096):
        passed.extend(splitter.feed(big[i : i + 4096]))
    assert sum(len(p) for p in passed) >= len(big) - 64 * 1024 - 4096, "the bytes flow before the event ends"
    passed.extend(splitter.feed(b"\n\ndata: {}\n\n"))
    assert b"".join(passed) + splitter.rest() == big + b"\n\ndata: {}\n\n"
    assert passed[-1] == b"data: {}\n\n" and splitter.oversized == 1


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_event_boundary_split_across_chunks_is_found(size: int) -> None:
    data = b"data: a\r\n\r\ndata: b\n\ndata: c\r\r"
    splitter = EventSplitter()
    events = [e for i in range(0, len(data), size) for e in splitter.feed(data[i : i + size])]
    assert events == [b"data: a\r\n\r\n", b"data: b\n\n", b"data: c\r\r"]


# --- slow clients and calls in flight ------------------------------------------------


def test_client_clock_times_only_what_waits_for_the_client() -> None:
    from tokensense.gateway.client_timeouts import ClientClock

    clock = ClientClock(timeout=10)
    for client in ("idle", "head", "body", "upstream", "answered"):
        clock.connected(client, now=0)
    clock.head_received("body", "f1", now=1)
    clock.head_received("upstream", "f2", now=1)
    clock.body_received("upstream", "f2")  # with the provider now: not the client's fault
    clock.head_received("answered", "f3", now=1)
    clock.body_received("answered", "f3")
    clock.finished("answered", "f3", now=8)  # keep-alive: idle again from 8
    assert clock.expired(now=5) == []
    assert sorted(clock.expired(now=12)) == [("body", "half-sent"), ("head", "idle"), ("idle", "idle")]
    assert clock.expired(now=17) == []
    assert clock.expired(now=19) == [("answered", "idle")]
    assert clock.expired(now=1000) == [], "a call with the provider is never timed here"
    assert (clock.closed_idle, clock.closed_half_sent) == (3, 1)


async def test_in_flight_counter_waits_for_the_last_call() -> None:
    import asyncio

    from tokensense.gateway.shutdown import InFlight

    inflight = InFlight()
    assert await inflight.wait_empty(0)
    inflight.started("a")
    inflight.started("b")
    waiter = asyncio.ensure_future(inflight.wait_empty(30))
    inflight.finished("a")
    inflight.finished("a")  # a flow may end through two hooks
    await asyncio.sleep(0)
    assert not waiter.done()
    inflight.finished("b")
    assert await waiter
    inflight.started("c")
    assert not await inflight.wait_empty(0.01)

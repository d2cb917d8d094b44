"""Issue 22 item 4: budget counters start from the settled spend at every start (first use, each fall back to local
counters, each return or restart of Redis), and the settled spend counts records not in the database yet."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from own_servers import OwnRedis
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel

from tokensense.gateway.hub import Hub
from tokensense.gateway.limits import RedisCounters, ResilientCounters, SeedUnavailable
from tokensense.metering.recorder import UnwrittenSpend, UsageRecorder
from tokensense.metering.spool import Spool
from tokensense.storage import repo
from tokensense.storage.models import UsageCreate
from tokensense.storage.repo import spent_since

NOW = datetime.now(UTC)


def record(cost: float, key_id: str = "k", when: datetime = NOW) -> UsageCreate:
    return UsageCreate(key_id=key_id, provider="openai", model="gpt-4o-mini", endpoint="chat", cost_usd=cost,
                       created_at=when)


def memory_engine():
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(engine)
    return engine


# --- what "settled" means: the database, plus the records on their way to it -----------------------------------


def test_unwritten_spend_per_key_and_window() -> None:
    unwritten = UnwrittenSpend()
    yesterday = NOW - timedelta(days=1)
    records = [record(0.1), record(0.2, when=yesterday), record(0.4, key_id="other"), record(0.0)]
    unwritten.add(records)
    today = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    assert unwritten.pending("k", None) == pytest.approx(0.3)
    assert unwritten.pending("k", today) == pytest.approx(0.1)  # a daily window: today's records only
    unwritten.committed(records[:2])
    assert unwritten.pending("k", None) == 0.0 and unwritten.keys == 1  # no float residue left behind


def test_a_batch_committed_during_a_seed_read_counts_once() -> None:
    """The seed reads the database, then the tally: a batch committed in between would be in neither (read the
    other way round: in both). The writer's commit waits for the read."""
    unwritten = UnwrittenSpend()
    batch = [record(1.0) for _ in range(3)]
    unwritten.add(batch)
    database = [0.0]

    def commit() -> None:
        with unwritten.commit_lock:
            database[0] += 1.0
            unwritten.committed(batch[:1])

    writer = threading.Thread(target=commit)

    def database_sum() -> float:
        value = database[0]
        writer.start()
        writer.join(timeout=0.2)  # blocked until the read is over
        return value

    assert unwritten.read("k", None, database_sum) == pytest.approx(3.0)
    writer.join()
    assert database[0] == 1.0 and unwritten.read("k", None, lambda: database[0]) == pytest.approx(3.0)


def test_recorder_seed_counts_queued_records_once() -> None:
    """Issue 22: the seed read only the database, which a batch reaches up to TOKENSENSE_FLUSH_INTERVAL later."""
    engine = memory_engine()
    recorder = UsageRecorder(engine, interval=30.0)  # the batch waits in the queue

    def database_sum() -> float:
        with Session(engine) as session:
            return spent_since(session=session, key_id="k", since=None)

    try:
        for cost in (0.1, 0.2, 0.3):
            recorder.submit(record(cost))
        assert database_sum() == 0.0
        assert recorder.settled_spend("k", None, database_sum) == pytest.approx(0.6)
    finally:
        recorder.close(timeout=10)
    assert database_sum() == pytest.approx(0.6)
    assert recorder.settled_spend("k", None, database_sum) == pytest.approx(0.6), "written: counted once"


def test_recorder_seed_counts_an_earlier_runs_spool(tmp_path: Path) -> None:
    """Records spooled by a run that died are spend too, before the database takes them."""
    earlier = Spool(tmp_path / "spool", max_bytes=10_000_000)
    earlier.append([record(0.25), record(0.5, key_id="other")])
    earlier.close()
    unreachable = create_engine("sqlite:////nonexistent-folder/tokensense.db")
    recorder = UsageRecorder(unreachable, interval=0.05, spool=Spool(tmp_path / "spool", max_bytes=10_000_000))
    try:
        assert recorder.settled_spend("k", None, lambda: 0.0) == pytest.approx(0.25)
    finally:
        recorder.close(timeout=2)


async def test_hub_answers_a_workers_seed_with_the_database_and_its_unwritten_records(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub.sock", memory_engine(), flush_interval=30.0)
    try:
        await hub.handle(b'{"op":"record","r":' + record(0.125).model_dump_json().encode() + b"}\n")
        with Session(hub.recorder.engine) as session:  # written as the recorder writes (records and rollups)
            repo.record_usages(session=session, usages=[record(0.5)])
        reply = json.loads(await hub.handle(json.dumps({"i": 7, "op": "settled", "a": ["k", None]}).encode()))
        assert reply["i"] == 7 and reply["ok"] == pytest.approx(0.625)  # in the database, and in its queue
    finally:
        await hub.close(timeout=5)


# --- the counters: seeded whenever they start ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis() -> Iterator[OwnRedis]:
    try:
        server = OwnRedis()
    except RuntimeError as e:
        pytest.skip(str(e))
    yield server
    server.close()


def counters_on(redis: OwnRedis, clock: Clock) -> ResilientCounters:
    return ResilientCounters(RedisCounters(redis.url, timeout=1.0), clock=clock)


def fields(redis: OwnRedis, key: str = "k") -> dict[str, float]:
    raw = redis.client().hgetall(f"tokensense:budget:{key}:total")
    return {name.decode(): float(value) for name, value in raw.items()}


async def test_local_counters_start_from_the_settled_spend_at_each_outage(redis: OwnRedis) -> None:
    """Issue 22: the local counters kept what an earlier outage had seen (nothing spent): with the budget spent
    meanwhile in Redis, the next outage served the key again."""
    clock, database = Clock(), [0.0]
    counters = counters_on(redis, clock)
    try:
        redis.kill()
        first = await counters.reserve_budget("k", "total", 1.0, 0.1, lambda: database[0], None)
        assert first.allowed and counters.status().startswith("local")
        database[0] += 0.05
        await counters.settle_budget("k", "total", 0.1, 0.05)
        redis.start()
        clock.now += 10
        for _ in range(10):  # spent in Redis, recorded in the database
            decision = await counters.reserve_budget("k", "total", 1.0, 0.1, lambda: database[0], None)
            if not decision.allowed:
                break
            database[0] += 0.2
            await counters.settle_budget("k", "total", 0.1, 0.2)  # cost more than reserved: spent past the budget
        assert fields(redis)["spent"] == pytest.approx(database[0]) and database[0] > 1.0
        redis.kill()
        clock.now += 10
        refused = await counters.reserve_budget("k", "total", 1.0, 0.01, lambda: database[0], None)
        assert not refused.allowed and refused.reason == "spent" and refused.spent == pytest.approx(database[0])
    finally:
        await counters.close()


async def test_redis_restarted_empty_or_from_an_old_snapshot_starts_from_the_settled_spend(redis: OwnRedis) -> None:
    clock, database = Clock(), [0.0]
    counters = counters_on(redis, clock)
    try:
        assert (await counters.reserve_budget("k", "total", 1.0, 0.1, lambda: database[0], None)).allowed
        await counters.settle_budget("k", "total", 0.1, 0.1)
        database[0] = 0.1
        redis.save()  # figures from before the budget was spent
        assert (await counters.reserve_budget("k", "total", 1.0, 0.9, lambda: database[0], None)).allowed
        await counters.settle_budget("k", "total", 0.9, 0.9)
        database[0] = 1.0
        for from_snapshot in (True, False):
            redis.kill()
            redis.start(from_snapshot=from_snapshot)
            assert fields(redis).get("spent", 0.0) < 1.0  # what Redis came back with
            # The first call after the restart sees the broken connection (and decides locally, from the settled
            # spend), or redis-py reconnects by itself and the new run id tells: refused either way.
            refused = await counters.reserve_budget("k", "total", 1.0, 0.01, lambda: database[0], None)
            assert not refused.allowed and refused.reason == "spent", from_snapshot
            clock.now += 10  # past the pause after a failure: on Redis again
            refused = await counters.reserve_budget("k", "total", 1.0, 0.01, lambda: database[0], None)
            assert not refused.allowed and refused.reason == "spent", from_snapshot
            assert not counters.shared_down and fields(redis)["spent"] == pytest.approx(1.0)
    finally:
        await counters.close()


async def test_reservations_in_flight_survive_a_redis_restart(redis: OwnRedis) -> None:
    """Each instance restates its own calls in flight in a restarted Redis; settling them releases exactly them
    (a shared `reserved` sum let one instance's settle release another's reservation)."""
    clock = Clock()
    first, second = counters_on(redis, clock), counters_on(redis, clock)
    try:
        assert (await first.reserve_budget("k", "total", 1.0, 0.4, lambda: 0.0, None)).allowed
        assert (await second.reserve_budget("k", "total", 1.0, 0.4, lambda: 0.0, None)).allowed
        redis.kill()
        redis.start()
        for counters in (first, second):  # a connection broken by the restart fails once (or reconnects)
            with contextlib.suppress(Exception):
                await counters.shared.ping()
        clock.now += 10
        # The first instance comes back first: its 0.4 in flight is held again, plus the new 0.1.
        assert (await first.reserve_budget("k", "total", 1.0, 0.1, lambda: 0.0, None)).allowed
        assert not first.shared_down
        # The second restates its 0.4 before deciding: 0.9 held, 0.3 more does not fit.
        refused = await second.reserve_budget("k", "total", 1.0, 0.3, lambda: 0.0, None)
        assert not refused.allowed and refused.reason == "reserved"
        assert refused.reserved == pytest.approx(0.9)
        await first.settle_budget("k", "total", 0.4, 0.35)
        await first.settle_budget("k", "total", 0.1, 0.1)
        now = fields(redis)
        assert now["spent"] == pytest.approx(0.45)
        assert sum(v for k, v in now.items() if k.startswith("r:")) == pytest.approx(0.4), "the second's, intact"
        await second.settle_budget("k", "total", 0.4, 0.4)
        assert not [k for k in fields(redis) if k.startswith("r:")]
    finally:
        await first.close()
        await second.close()


async def test_a_window_that_cannot_be_seeded_is_refused_not_served(redis: OwnRedis) -> None:
    """Redis and the database both unreachable: a budget cannot be checked, so the call is refused (503)."""
    clock = Clock()
    counters = counters_on(redis, clock)

    def database_down() -> float:
        raise ConnectionError("database unreachable")

    try:
        assert (await counters.reserve_budget("k", "total", 1.0, 0.1, lambda: 0.5, None)).allowed
        # The database down, Redis up: Redis has counted all along, so it decides.
        clock.now += 10
        assert (await counters.reserve_budget("k", "total", 1.0, 0.1, database_down, None)).allowed
        redis.kill()
        clock.now += 10
        with pytest.raises(SeedUnavailable):
            await counters.reserve_budget("k", "total", 1.0, 0.1, database_down, None)
    finally:
        await counters.close()


async def test_seeding_runs_off_the_event_loop(redis: OwnRedis) -> None:
    clock = Clock()
    counters = counters_on(redis, clock)
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def load() -> float:
        seen.append(threading.get_ident())
        return 0.0

    try:
        await counters.reserve_budget("k", "total", 1.0, 0.1, load, None)
        redis.kill()
        await counters.reserve_budget("k", "total", 1.0, 0.1, load, None)
        assert len(seen) == 2 and loop_thread not in seen
    finally:
        await counters.close()


async def test_a_keys_earlier_windows_are_forgotten(redis: OwnRedis) -> None:
    """What is kept per budget window (seeded epochs, TTLs, locks) does not grow by one entry a key a day."""
    counters = counters_on(redis, Clock())
    try:
        for day in range(1, 6):
            window = f"daily:2026-12-0{day}"
            decision = await counters.reserve_budget("k", window, 1.0, 0.1, lambda: 0.0, 3600)
            await counters.settle_budget("k", window, decision.amount, 0.05)
        assert set(counters._shared_seeded) == {("k", "daily:2026-12-05")}
        assert set(counters._ttls) == {("k", "daily:2026-12-05")}
    finally:
        await counters.close()


async def test_reservations_in_flight_are_held_across_the_switch_both_ways(redis: OwnRedis) -> None:
    """Calls in flight when the instance switches stores keep holding the budget in the store it switches to:
    Redis's into the local store at an outage, the local store's into Redis when it answers again."""
    clock, database = Clock(), [0.0]
    counters = counters_on(redis, clock)
    try:
        assert (await counters.reserve_budget("k", "total", 1.0, 0.6, lambda: database[0], None)).allowed  # A
        redis.kill()
        held = await counters.reserve_budget("k", "total", 1.0, 0.5, lambda: database[0], None)
        assert counters.status().startswith("local")
        assert not held.allowed and held.reason == "reserved", "A's 0.6 in flight holds the local budget too"
        assert (await counters.reserve_budget("k", "total", 1.0, 0.3, lambda: database[0], None)).allowed  # B
        database[0] = 0.55
        await counters.settle_budget("k", "total", 0.6, 0.55)  # A ends during the outage
        assert (await counters.reserve_budget("k", "total", 1.0, 0.2, lambda: database[0], None)).reason == \
            "reserved"  # 0.55 spent + B's 0.3

        redis.start()
        clock.now += 10
        refused = await counters.reserve_budget("k", "total", 1.0, 0.2, lambda: database[0], None)
        assert not counters.shared_down
        assert not refused.allowed and refused.spent == pytest.approx(0.55) and refused.reserved == pytest.approx(0.3)
        assert (await counters.reserve_budget("k", "total", 1.0, 0.1, lambda: database[0], None)).allowed  # C
        await counters.settle_budget("k", "total", 0.3, 0.3)  # B ends, in Redis now
        now = fields(redis)
        assert now["spent"] == pytest.approx(0.85)
        assert sum(v for k, v in now.items() if k.startswith("r:")) == pytest.approx(0.1)  # C's only
    finally:
        await counters.close()


async def test_an_instance_idle_between_two_outages_seeds_the_second_anew(redis: OwnRedis) -> None:
    """Found with `serve --workers 2`: a worker that fell back in an earlier outage and made no budget call on
    Redis since (the others served) reused that outage's local figures in the next one."""
    clock, database = Clock(), [0.0]
    counters = counters_on(redis, clock)
    try:
        redis.kill()
        assert (await counters.reserve_budget("k", "total", 1.0, 0.1, lambda: database[0], None)).allowed
        redis.start()
        database[0] = 1.0  # other instances spent the budget meanwhile
        clock.now += 10
        redis.kill()
        refused = await counters.reserve_budget("k", "total", 1.0, 0.1, lambda: database[0], None)
        assert not refused.allowed and refused.reason == "spent"
    finally:
        await counters.close()

"""Issue 26: spend booked apart from a call's own settle (a video job, a realtime response the provider started by
itself, a batch job's lines) reaches every budget of its attribution at once, not only its key's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from keyinfo import key_info
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, create_engine

from tokensense.config import BudgetsConfig
from tokensense.core.endpoints import Endpoint
from tokensense.core.usage import TokenUsage
from tokensense.gateway import sessions
from tokensense.gateway.batches import BatchFollower, job_holds
from tokensense.gateway.budgets import BudgetBook
from tokensense.gateway.call import CallContext
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.limits import MemoryCounters
from tokensense.gateway.stages.police import drain
from tokensense.gateway.stages.settle import settle_booking
from tokensense.metering.pricing import PriceBook
from tokensense.providers import get_provider
from tokensense.providers.openai import OPENAI_REALTIME
from tokensense.providers.sockets import ServerFrame
from tokensense.storage import batches as store
from tokensense.storage.budgets import period_window
from tokensense.storage.models import BatchJob
from tokensense.storage.repo import spent_since

RUN = {"project": "p", "workflow": "w", "execution_id": "run-1", "source": None, "step": None}


def _key(budget: float | None = None) -> KeyInfo:
    return key_info(budget_usd=budget)


def _book() -> BudgetBook:
    config = BudgetsConfig.model_validate(
        [
            {"workflow": "w", "usd": 10, "period": "day"},
            {"project": "p", "usd": 100},
            {"each_execution": True, "usd": 2},
        ]
    )
    return BudgetBook(None, config.limits)


class _Runtime:
    def __init__(self, book: BudgetBook) -> None:
        self.prices = PriceBook()
        self.counters = MemoryCounters()
        self.recorder = None
        self.typical = None
        self.budgets = book


async def _seed(runtime: _Runtime, key: KeyInfo) -> dict[str, tuple[str, str]]:
    """Seed every budget counter of the attribution at 0 spent (as a first call would); their (counter, window)."""
    from tokensense.gateway.stages.police import spend_holds

    holds = spend_holds(key, RUN, runtime.budgets)
    for hold in holds:
        runtime.counters.seed_budget(hold.counter, hold.window, 0.0, 0.0)
    return {hold.tag: (hold.counter, hold.window) for hold in holds}


def _spent(runtime: _Runtime, slot: tuple[str, str]) -> float:
    return runtime.counters._budgets[slot][0]


async def test_a_video_booking_is_spent_in_every_budget_of_its_attribution() -> None:
    runtime = _Runtime(_book())
    key = _key(budget=50.0)
    slots = await _seed(runtime, key)
    assert set(slots) == {"key:team", "project:p", "workflow:w", "execution:run-1"}
    provider = get_provider("openai")
    call = CallContext(Endpoint.CHAT, None, key=key, provider=provider, model="sora-2", attribution=dict(RUN))  # type: ignore[arg-type]
    record = settle_booking(
        runtime,  # type: ignore[arg-type]
        call,
        request_id="video_1",
        endpoint=Endpoint.CHAT,
        model="sora-2",  # type: ignore[arg-type]
        attribution=dict(RUN),
        usage=TokenUsage(),
        cost=0.8,
    )
    await drain()
    assert record.cost_usd == pytest.approx(0.8)
    for tag, slot in slots.items():
        assert _spent(runtime, slot) == pytest.approx(0.8), tag


async def test_a_response_the_provider_started_is_spent_in_every_budget_of_the_session() -> None:
    runtime = _Runtime(_book())
    key = _key()  # no budget of its own: only its attribution's
    slots = await _seed(runtime, key)
    provider = get_provider("openai")
    assert provider is not None
    session = sessions.Session(
        key=key,
        provider=provider,
        protocol=OPENAI_REALTIME,
        model="gpt-realtime",
        attribution=dict(RUN),
        request_id="r1",
    )
    sessions.on_server_frame(runtime, session, ServerFrame(started=True))  # type: ignore[arg-type]
    usage = TokenUsage(input_tokens=1000, output_tokens=2000)
    sessions.on_server_frame(runtime, session, ServerFrame(usage=usage, done=True, status="completed"))  # type: ignore[arg-type]
    await drain()
    assert set(slots) == {"project:p", "workflow:w", "execution:run-1"}
    for tag, slot in slots.items():
        assert _spent(runtime, slot) > 0, tag


@pytest.fixture
def engine():  # type: ignore[no-untyped-def]
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_open_jobs_hold_in_the_seed_of_every_budget_of_their_attribution(engine) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    with Session(engine) as session:
        store.remember_job(
            session=session,
            job=BatchJob(
                id="b1",
                provider="openai",
                key_id="k1",
                reserved_usd=0.5,
                budget_window="total",
                created_at=now,
                workflow="w",
                project="p",
                execution_id="run-1",
            ),
        )
        store.remember_job(
            session=session,
            job=BatchJob(id="b2", provider="openai", key_id="k2", reserved_usd=0.25, created_at=now, workflow="other"),
        )
        subjects = {
            "workflow": '{"workflow":"w"}',
            "project": '{"project":"p"}',
            "run": '{"execution_id":"run-1"}',
            "run of w": '{"execution_id":"run-1","workflow":"w"}',
        }
        for name, subject in subjects.items():
            assert spent_since(session=session, key_id=subject, since=now - timedelta(hours=1)) == pytest.approx(0.5), (
                name
            )
        assert spent_since(session=session, key_id='{"workflow":"other"}', since=None) == pytest.approx(0.25)
        assert spent_since(session=session, key_id='{"source":"s"}', since=None) == 0
        assert spent_since(session=session, key_id="k1", since=None) == pytest.approx(0.5)


async def test_the_follower_settles_every_budget_a_job_was_held_in_to_its_booked_cost() -> None:
    runtime = _Runtime(_book())
    key = _key(budget=50.0)
    slots = await _seed(runtime, key)
    made = datetime.now(UTC)
    job = BatchJob(
        id="b1",
        provider="openai",
        key_id="k1",
        key_name="team",
        reserved_usd=1.5,
        budget_window=slots["key:team"][1],
        created_at=made,
        project="p",
        workflow="w",
        execution_id="run-1",
    )
    assert {h.tag for h in job_holds(job, runtime.budgets)} == set(slots)
    for slot in slots.values():  # the create kept its reservation as spent
        await runtime.counters.settle_budget(slot[0], slot[1], 0.0, 1.5)
    follower = BatchFollower(runtime)  # type: ignore[arg-type]
    follower._task = asyncio.get_running_loop().create_task(asyncio.sleep(30))
    try:
        await asyncio.to_thread(follower._settle_budget, job, 0.4)
    finally:
        follower._task.cancel()
    for tag, slot in slots.items():
        assert _spent(runtime, slot) == pytest.approx(0.4), tag


def test_a_jobs_holds_are_in_the_windows_of_its_create() -> None:
    made = datetime(2026, 12, 1, 23, 0, tzinfo=UTC)
    job = BatchJob(id="b1", provider="openai", key_id="k1", reserved_usd=1.0, created_at=made, workflow="w")
    (hold,) = job_holds(job, _book())  # its key has no budget (no window stored): the workflow's only
    assert hold.window == period_window("day", made)[0] == "day:2026-12-01"

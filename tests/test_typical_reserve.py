"""`[budgets] reserve = "typical"` (issue 26, item 3): the percentile, the history, and the overspend bound."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from tokensense.gateway.limits import MemoryCounters, budget_decision
from tokensense.gateway.reservation import reservation_usage
from tokensense.gateway.typical_output import MIN_SAMPLES, OutputHistory, admission, percentile


def test_percentile_is_nearest_rank() -> None:
    assert percentile(range(1, 101)) == 99
    assert percentile(range(1, 21)) == 20, "of 20 outputs the 99th percentile is the largest"
    assert percentile(range(1, 501)) == 495
    assert percentile([7]) == 7
    assert percentile([3, 1, 2], 0.5) == 2
    with pytest.raises(ValueError):
        percentile([])


def test_history_waits_for_enough_outputs_then_takes_the_99th_percentile() -> None:
    history = OutputHistory()
    for i in range(MIN_SAMPLES - 1):
        history.observe("openai", "gpt-4o-mini", 100 + i)
    assert history.typical("openai", "gpt-4o-mini") is None, "the cap alone until 20 outputs were seen"
    history.observe("openai", "GPT-4o-mini", 5000)  # one long answer: of 20 it is the 99th percentile
    assert history.typical("OpenAI", "gpt-4o-mini") == 5000
    for _ in range(80):
        history.observe("openai", "gpt-4o-mini", 200)
    assert history.typical("openai", "gpt-4o-mini") == 200, "one long answer in 100 is above the 99th percentile"
    assert history.typical("anthropic", "gpt-4o-mini") is None, "per provider and model"
    history.observe("openai", "gpt-4o-mini", 0)  # no output (an error, a refusal): not an output
    assert history.samples("openai", "gpt-4o-mini") == 100


def test_history_is_a_rolling_window_per_choice() -> None:
    history = OutputHistory(window=50, min_samples=20)
    for _ in range(50):
        history.observe("p", "m", 10_000)
    for _ in range(50):
        history.observe("p", "m", 300, choices=3)  # 100 per choice
    assert history.samples("p", "m") == 50
    assert history.typical("p", "m") == 100, "the older outputs left the window"


def test_the_sorted_window_gives_the_percentile_of_the_window() -> None:
    rng = random.Random(7)
    history = OutputHistory(window=50, min_samples=20)
    seen: list[int] = []
    for _ in range(400):
        tokens = rng.choice([rng.randint(1, 500), rng.randint(1, 32_000)])
        history.observe("p", "m", tokens)
        seen.append(tokens)
        expected = percentile(seen[-50:]) if len(seen) >= 20 else None
        assert history.typical("p", "m") == expected


def test_seed_comes_before_the_outputs_seen_since() -> None:
    history = OutputHistory(window=30, min_samples=20)
    for _ in range(10):
        history.observe("p", "m", 50)  # seen while the seed was read: more recent than the records
    history.seed([("p", "m", 9000)] * 25 + [("p", "other", 0), (None, None, 5)])
    assert history.samples("p", "m") == 30
    assert history.typical("p", "m") == 9000  # 20 of the 25 seeded outputs kept, then the 10 live ones


def test_seeding_runs_in_a_thread_and_survives_a_failing_database() -> None:
    history = OutputHistory()
    release = threading.Event()

    def slow() -> list[tuple[str, str, int]]:
        release.wait(5)
        return [("p", "m", 42)] * 20

    thread = history.start_seeding(slow)
    assert history.typical("p", "m") is None and not history.seeded.is_set(), "start does not wait for it"
    release.set()
    thread.join(5)
    assert history.typical("p", "m") == 42

    def broken() -> list[tuple[str, str, int]]:
        raise OSError("database unreachable")

    failing = OutputHistory()
    failing.start_seeding(broken).join(5)
    assert failing.seeded.is_set() and failing.typical("p", "m") is None


def test_reservation_at_the_typical_output_never_exceeds_the_cap() -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 32_000, "messages": [{"role": "user", "content": "hi"}]}
    assert reservation_usage(body, max_output_tokens=None, model_max_output=64_000).output_tokens == 32_000
    assert (
        reservation_usage(body, max_output_tokens=None, model_max_output=64_000, typical_output=900).output_tokens
        == 900
    )
    assert (
        reservation_usage(
            {**body, "max_tokens": 500}, max_output_tokens=None, model_max_output=64_000, typical_output=900
        ).output_tokens
        == 500
    ), "the request's own cap when smaller"
    assert (
        reservation_usage(
            {**body, "n": 2}, max_output_tokens=None, model_max_output=None, typical_output=900
        ).output_tokens
        == 1800
    )


def test_admission_holds_the_largest_against_a_raised_budget() -> None:
    assert admission(1.0, None) == (1.0, 0.0)
    assert admission(1.0, 1.5) == (1.0, 0.0)
    admit_on, slack = admission(1.0, 0.1)
    assert (admit_on, round(slack, 9)) == (0.1, 0.9)
    # Reserving the largest (1.0) against budget + slack admits exactly when spent + reserved + typical fits.
    for spent, reserved in [(0.0, 0.0), (0.5, 0.4), (0.5, 0.41), (0.95, 0.0), (1.0, 0.0), (0.0, 2.0)]:
        raised = budget_decision(1.0 + slack, spent, reserved, 1.0).allowed
        assert raised == budget_decision(1.0, spent, reserved, admit_on).allowed, (spent, reserved)


@pytest.mark.parametrize("seed", range(20))
def test_parallel_calls_overspend_at_most_one_calls_excess(seed: int) -> None:
    """Many calls in flight, each admitted on its typical cost and settling anywhere up to its largest (the
    worst: all at their largest): the budget is exceeded by at most the largest (largest - typical) of a call."""
    rng = random.Random(seed)
    budget = rng.uniform(0.3, 3.0)

    async def run() -> tuple[float, float, int]:
        counters = MemoryCounters()
        in_flight: list[tuple[float, float]] = []
        excess, admitted = 0.0, 0
        for _ in range(400):
            if in_flight and rng.random() < 0.4:  # one call ends: anywhere up to its largest cost
                held, largest = in_flight.pop(rng.randrange(len(in_flight)))
                actual = largest if rng.random() < 0.7 else rng.uniform(0, largest)
                await counters.settle_budget("k", "w", held, actual)
                continue
            largest = rng.uniform(0.001, 0.8)
            typical = largest * rng.uniform(0.001, 1.0) if rng.random() < 0.9 else None
            admit_on, slack = admission(largest, typical)
            decision = await counters.reserve_budget("k", "w", budget + slack, largest, lambda: 0.0, None)
            if decision.allowed:
                admitted += 1
                excess = max(excess, largest - admit_on)
                in_flight.append((largest, largest))
        for held, largest in in_flight:
            await counters.settle_budget("k", "w", held, largest)
        spent, reserved = counters._budgets[("k", "w")]
        assert reserved == pytest.approx(0.0, abs=1e-9)
        return spent, excess, admitted

    spent, excess, admitted = asyncio.run(run())
    assert admitted > 1
    assert spent <= budget + excess + 1e-9


# --- shared through Redis ---------------------------------------------------------------------------


@pytest.fixture
async def redis_prefix():
    import os
    import uuid

    import redis.asyncio as redis

    from tests.conftest import service_missing

    url = os.environ.get("TOKENSENSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as e:
        await client.aclose()
        service_missing(f"Redis at {url} is not reachable ({type(e).__name__})")
    prefix = f"ts-test-{uuid.uuid4().hex[:10]}"
    yield url, prefix
    keys = [k async for k in client.scan_iter(f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.mark.redis
async def test_instances_share_their_outputs_through_redis(redis_prefix: tuple[str, str]) -> None:
    from tokensense.gateway.typical_output import SharedOutputs

    url, prefix = redis_prefix
    a = OutputHistory(shared=SharedOutputs(url, prefix=prefix, every=3600))
    b = OutputHistory(shared=SharedOutputs(url, prefix=prefix, every=3600))
    try:
        for i in range(12):
            a.observe("openai", "gpt-4o-mini", 100 + i)
            b.observe("openai", "gpt-4o-mini", 300 + i)
        assert a.typical("openai", "gpt-4o-mini") is None  # 12 outputs each: too few alone
        for history in (a, b, a):
            assert history.shared is not None
            await history.shared.sync(history)
        for history in (a, b):
            assert history.samples("openai", "gpt-4o-mini") == 24
            assert history.typical("openai", "gpt-4o-mini") == 311
        seeded = OutputHistory(shared=SharedOutputs(url, prefix=prefix, every=3600))
        seeded.seed([("openai", "gpt-4o-mini", 7)] * 100)
        assert seeded.shared is not None
        await seeded.shared.sync(seeded)
        assert seeded.samples("openai", "gpt-4o-mini") == 100, "a shorter list in Redis does not replace the seed"
    finally:
        for history in (a, b):
            assert history.shared is not None
            await history.shared.close()


async def test_redis_down_keeps_the_process_history() -> None:
    from tokensense.gateway.typical_output import SharedOutputs

    history = OutputHistory(shared=SharedOutputs("redis://127.0.0.1:1/0", timeout=0.2))
    for _ in range(MIN_SAMPLES):
        history.observe("p", "m", 50)
    assert history.shared is not None
    await history.shared.sync(history)
    assert history.typical("p", "m") == 50
    await history.shared.close()


# --- in the police stage ----------------------------------------------------------------------------


def _police_parts():
    from tokensense.core.endpoints import Endpoint
    from tokensense.gateway.call import CallContext
    from tokensense.gateway.keys import KeyInfo
    from tokensense.gateway.stages.police import Target
    from tokensense.providers import PROVIDERS
    from tokensense.providers.openai import OPENAI_ERRORS

    openai = PROVIDERS["openai"]
    key = KeyInfo(
        id="k-typical",
        name="agent",
        revoked=False,
        project=None,
        budget_usd=0.005,
        budget_period="total",
        rpm=None,
        tpm=None,
        plan=None,
        allowed_models=(),
        allowed_providers=(),
    )
    body = {"model": "gpt-4o-mini", "max_tokens": 32_000, "messages": [{"role": "user", "content": "refactor"}]}

    def call(cap: float | None = None) -> CallContext:
        made = CallContext(Endpoint.CHAT, OPENAI_ERRORS)
        made.key, made.provider, made.model, made.max_cost_usd = key, openai, "gpt-4o-mini", cap
        made.attribution = {}
        return made

    return call, Target(openai, "gpt-4o-mini", "gpt-4o-mini", body)


async def test_police_admits_on_the_typical_cost_and_holds_the_largest() -> None:
    from tokensense.gateway.stages.police import Refused, _largest_cost, police
    from tokensense.metering.pricing import PriceBook

    call, target = _police_parts()
    prices, counters = PriceBook(), MemoryCounters()
    history = OutputHistory()
    for _ in range(MIN_SAMPLES):
        history.observe("openai", "gpt-4o-mini", 40)
    largest = _largest_cost(call(), target, prices)
    assert largest > 0.005, "at its cap the call does not fit in the budget"
    with pytest.raises(Refused) as refused:  # cap mode
        await police(call(), target, prices=prices, counters=counters, spent_since=lambda *_: 0.0)
    assert refused.value.error.status == 402 and refused.value.budget is not None
    assert refused.value.budget.reason == "insufficient"
    policed = await police(
        call(), target, prices=prices, counters=counters, spent_since=lambda *_: 0.0, typical=history
    )
    assert policed.budget is not None and policed.budget.amount == pytest.approx(largest), "it holds its largest"
    with pytest.raises(Refused) as refused:  # the budget is held by the call in flight: 429, retry
        await police(call(), target, prices=prices, counters=counters, spent_since=lambda *_: 0.0, typical=history)
    assert refused.value.error.status == 429 and refused.value.budget is not None
    assert refused.value.budget.reason == "reserved", "judged against the budget itself, on the typical cost"
    # The per-call cost cap is a promise about the largest cost: the typical one does not lower it.
    with pytest.raises(Refused) as refused:
        await police(
            call(cap=largest / 2),
            target,
            prices=prices,
            counters=MemoryCounters(),
            spent_since=lambda *_: 0.0,
            typical=history,
        )
    assert refused.value.error.code == "max_cost_exceeded"

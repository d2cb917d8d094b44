"""Rate-limit decisions, budget reservations and plan defaults, on both counter stores."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime

import pytest
from keyinfo import key_info

from tests.conftest import service_missing
from tokensense.core.errors import GatewayError
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.limits import MemoryCounters, RedisCounters, decide, format_duration
from tokensense.gateway.policy import PLAN_LIMITS, budget_window, check_access, estimate_usage, limits_for
from tokensense.providers import PROVIDERS

REDIS_URL = os.environ.get("TOKENSENSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def key(**kw) -> KeyInfo:
    return key_info(**{"name": "k", **kw})


def test_plan_defaults_apply_only_where_the_key_sets_nothing() -> None:
    assert limits_for(key(plan="free")) == PLAN_LIMITS["free"]
    assert limits_for(key(plan="free", rpm=5)).rpm == 5
    assert limits_for(key(plan="enterprise")).rpm is None
    assert limits_for(key()).rpm is None


@pytest.mark.parametrize(("allowed_models", "allowed_providers", "provider", "model", "ok"), [
    (("gpt-4o*",), (), "openai", "gpt-4o-mini", True),
    (("gpt-4o*",), (), "openai", "gpt-5", False),
    ((), ("anthropic",), "openai", "gpt-4o-mini", False),
    ((), ("google",), "gemini", "gemini-2.5-flash", True),  # provider aliases count
    (("openai/*",), (), "openai", "o3-mini", True),
])
def test_access(allowed_models, allowed_providers, provider, model, ok) -> None:
    k = key(allowed_models=allowed_models, allowed_providers=allowed_providers)
    if ok:
        check_access(k, PROVIDERS[provider], model)
    else:
        with pytest.raises(GatewayError) as e:
            check_access(k, PROVIDERS[provider], model)
        assert e.value.status == 403 and (model in e.value.message or provider in e.value.message)


def test_budget_windows() -> None:
    now = datetime(2026, 11, 25, 18, 30, tzinfo=UTC)
    assert budget_window("daily", now)[0] == "daily:2026-11-25"
    assert budget_window("daily", now)[2] == 5.5 * 3600
    assert budget_window("monthly", now)[1] == datetime(2026, 11, 1, tzinfo=UTC)
    assert budget_window("monthly", datetime(2026, 12, 31, tzinfo=UTC))[2] == 24 * 3600
    assert budget_window("total", now) == ("total", None, None)


def test_estimates_use_the_output_cap() -> None:
    est = estimate_usage({"messages": [{"role": "user", "content": "x" * 300}], "max_tokens": 50})
    assert est.output_tokens == 50 and est.input_tokens >= 100


def test_decide_rpm_and_retry_after() -> None:
    entries = [(100.0, 10), (110.0, 10), (120.0, 10)]
    d = decide(entries, 130.0, rpm=3, tpm=None, tokens=1)
    assert not d.allowed and d.limited_by == "requests"
    assert d.retry_after == pytest.approx(30.0)  # the oldest leaves at 160
    assert d.headers()["retry-after"] == "30" and d.headers()["x-ratelimit-remaining-requests"] == "0"
    assert decide(entries, 130.0, rpm=4, tpm=None, tokens=1).allowed


def test_decide_tpm_frees_enough_tokens() -> None:
    entries = [(100.0, 50), (110.0, 30), (120.0, 10)]
    d = decide(entries, 130.0, rpm=None, tpm=100, tokens=40)
    assert not d.allowed and d.limited_by == "tokens"
    assert d.retry_after == pytest.approx(30.0)  # 90 + 40 > 100; after 100s+60 the 50 are gone


def test_format_duration() -> None:
    assert format_duration(0.25) == "250ms" and format_duration(6) == "6s" and format_duration(360) == "6m0s"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_rate_window_slides() -> None:
    clock = Clock()
    counters = MemoryCounters(clock)
    results = [(await counters.acquire_rate("k", f"r{i}", 2, None, 1)).allowed for i in range(3)]
    assert results == [True, True, False]
    clock.now += 61
    assert (await counters.acquire_rate("k", "r4", 2, None, 1)).allowed


async def test_memory_budget_in_flight_rule() -> None:
    counters = MemoryCounters()
    loads = []

    def load() -> float:
        loads.append(1)
        return 0.5

    admitted = []
    for _ in range(10):
        d = await counters.reserve_budget("k", "total", 1.0, 0.2, load, None)
        admitted.append(d.allowed)
    # 0.5 spent; 0.2 each while spent + reserved + 0.2 <= 1.0: two admitted (a third would make 1.1)
    assert admitted == [True, True] + [False] * 8
    assert loads == [1], "the database is read once per window"
    for _ in range(2):
        await counters.settle_budget("k", "total", 0.2, 0.1)
    assert (await counters.reserve_budget("k", "total", 1.0, 0.2, load, None)).allowed  # 0.7 spent


async def test_memory_budget_loads_once_under_concurrency() -> None:
    counters = MemoryCounters()
    calls = []

    def load() -> float:
        calls.append(1)
        return 0.0

    await asyncio.gather(*[counters.reserve_budget("k", "total", 10, 1, load, None) for _ in range(20)])
    assert calls == [1]


@pytest.fixture
async def redis_counters():
    redis = pytest.importorskip("redis")
    counters = RedisCounters(REDIS_URL, prefix=f"test-{uuid.uuid4().hex[:8]}")
    try:
        await counters.redis.ping()
    except redis.exceptions.ConnectionError as e:
        service_missing(f"no Redis at {REDIS_URL}: {e}")
    yield counters
    keys = await counters.redis.keys(f"{counters.prefix}:*")
    if keys:
        await counters.redis.delete(*keys)
    await counters.close()


@pytest.mark.redis
async def test_redis_rate_and_budget(redis_counters: RedisCounters) -> None:
    allowed = [(await redis_counters.acquire_rate("k", f"r{i}", 3, 1000, 100)).allowed for i in range(4)]
    assert allowed == [True, True, True, False]
    d = await redis_counters.acquire_rate("k", "r9", 3, 1000, 100)
    assert d.retry_after is not None and 0 < d.retry_after <= 60 and d.limited_by == "requests"
    await redis_counters.settle_tokens("k", "r0", 900)
    assert (await redis_counters.acquire_rate("k2", "x", None, 100, 10)).allowed

    results = await asyncio.gather(*[redis_counters.reserve_budget("k", "total", 1.0, 0.25, lambda: 0.0, None)
                                     for _ in range(10)])
    assert sum(r.allowed for r in results) == 4
    for _ in range(4):
        await redis_counters.settle_budget("k", "total", 0.25, 0.3)
    d = await redis_counters.reserve_budget("k", "total", 1.0, 0.25, lambda: 0.0, None)
    assert not d.allowed and d.spent == pytest.approx(1.2) and d.reserved == pytest.approx(0.0)


async def test_idle_budget_windows_are_forgotten_and_seeded_again() -> None:
    """Issue 26: each-execution budgets make one window per run; an idle one must not stay in memory forever.
    It is dropped after an hour unused with nothing reserved, and seeded again from the settled spend."""
    from tokensense.gateway import limits

    now = [1000.0]
    counters = MemoryCounters(clock=lambda: now[0])
    for i in range(limits.IDLE_SWEEP_MIN - 2):
        counters.seed_budget(f"run-{i}", "total", 0.01, 0.0)
    held = await counters.reserve_budget("held", "total", 1.0, 0.2, lambda: 0.0, None)  # in flight
    assert held.allowed and len(counters._budgets) == limits.IDLE_SWEEP_MIN - 1
    now[0] += limits.IDLE_FORGET + 1
    counters.seed_budget("new", "total", 0.0, 0.0)  # the sweep runs: idle windows go, the one held stays
    assert set(counters._budgets) == {("held", "total"), ("new", "total")}
    again = await counters.reserve_budget("run-1", "total", 0.05, 0.045, lambda: 0.01, None)
    assert not again.allowed and again.spent == 0.01  # seeded from the settled spend, not from zero
    # A key's earlier window goes when its new one is seeded, without looking at every other window.
    counters.seed_budget("new", "day:2026-12-07", 0.0, 0.0)
    assert ("new", "total") not in counters._budgets


@pytest.mark.redis
async def test_resilient_counters_forget_idle_windows_and_seed_them_again() -> None:
    """Issue 26: with Redis, what this instance keeps per budget window (one per run with each-execution budgets)
    is forgotten after an hour unused; the next call seeds the window again (max of Redis and the settled spend)."""
    import os
    import uuid

    redis = pytest.importorskip("redis")
    from tokensense.gateway import limits
    from tokensense.gateway.limits import RedisCounters, ResilientCounters

    url = os.environ.get("TOKENSENSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    shared = RedisCounters(url, prefix=f"test-{uuid.uuid4().hex[:8]}", timeout=2.0)
    try:
        await shared.redis.ping()
    except redis.exceptions.ConnectionError as e:
        from tests.conftest import service_missing

        service_missing(f"no Redis at {url}: {e}")
    now = [1000.0]
    counters = ResilientCounters(shared, clock=lambda: now[0])
    try:
        first = await counters.reserve_budget("run-a", "total", 1.0, 0.1, lambda: 0.5, None)
        assert first.allowed and first.spent == 0.5
        await counters.settle_budget("run-a", "total", 0.1, 0.05)
        counters._sweep_at = 2  # look for idle windows at the next new one
        now[0] += limits.IDLE_FORGET + 1
        assert (await counters.reserve_budget("run-b", "total", 1.0, 0.1, lambda: 0.0, None)).allowed
        assert ("run-a", "total") not in counters._shared_seeded and "run-a" not in counters._windows
        again = await counters.reserve_budget("run-a", "total", 1.0, 0.1, lambda: 0.2, None)
        assert again.allowed and again.spent == pytest.approx(0.55)  # Redis kept more than the settled spend
    finally:
        keys = await shared.redis.keys(f"{shared.prefix}:*")
        if keys:
            await shared.redis.delete(*keys)
        await counters.close()

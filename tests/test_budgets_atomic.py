"""Issue 26: with Redis, every budget of a call is reserved by one atomic Lua script (all or none, one round trip),
keeping the outage policy (`limits_on_outage`): local counters, or refusal."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from keyinfo import key_info

from tests.conftest import free_port, service_missing
from tokensense.core.endpoints import Endpoint
from tokensense.gateway.budgets import BudgetBook
from tokensense.gateway.call import CallContext
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.limits import BudgetAsk, RedisCounters, ResilientCounters
from tokensense.gateway.stages.police import Refused, Target, police
from tokensense.metering.pricing import PriceBook
from tokensense.providers import PROVIDERS
from tokensense.providers.openai import OPENAI_ERRORS
from tokensense.storage.budgets import BudgetLimit

REDIS_URL = os.environ.get("TOKENSENSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
pytestmark = pytest.mark.redis


@pytest.fixture
async def shared() -> AsyncIterator[RedisCounters]:
    redis = pytest.importorskip("redis")
    store = RedisCounters(REDIS_URL, prefix=f"test-{uuid.uuid4().hex[:8]}", timeout=2.0)
    try:
        await store.redis.ping()
    except redis.exceptions.ConnectionError as e:
        service_missing(f"no Redis at {REDIS_URL}: {e}")
    yield store
    keys = await store.redis.keys(f"{store.prefix}:*")
    if keys:
        await store.redis.delete(*keys)
    await store.close()


def _ask(counter: str, budget: float, spent: float = 0.0) -> BudgetAsk:
    return BudgetAsk(counter, "total", budget, lambda: spent, None)


async def _held(store: RedisCounters, counter: str) -> float:
    fields: dict[str, str] = await store.redis.hgetall(f"{store.prefix}:budget:{counter}:total")  # type: ignore[misc,assignment]
    return sum((float(v) for k, v in fields.items() if k.startswith("r:")), 0.0)


async def test_one_script_reserves_in_all_or_in_none(shared: RedisCounters) -> None:
    counters = ResilientCounters(shared)
    first = await counters.reserve_all([_ask("a", 1.0), _ask("b", 1.0), _ask("c", 0.5, spent=0.2)], 0.25)
    assert all(d.allowed for d in first) and [await _held(shared, c) for c in "abc"] == [0.25, 0.25, 0.25]
    refused = await counters.reserve_all([_ask("a", 1.0), _ask("b", 1.0), _ask("c", 0.5, spent=0.2)], 0.25)
    assert [d.allowed for d in refused] == [True, True, False] and refused[2].reason == "reserved"
    assert [await _held(shared, c) for c in "abc"] == [0.25, 0.25, 0.25]  # none of it reserved in a or b
    for counter in "abc":
        await counters.settle_budget(counter, "total", 0.25, 0.1)
    assert [await _held(shared, c) for c in "abc"] == [0.0, 0.0, 0.0]


async def test_parallel_calls_over_shared_budgets_are_all_or_none(shared: RedisCounters) -> None:
    """Calls over overlapping pairs of budgets: whatever the interleaving, what is held in each budget is what
    the admitted calls reserved in it (no reservation left by a call another budget refused)."""
    stores = [ResilientCounters(shared), ResilientCounters(RedisCounters(REDIS_URL, prefix=shared.prefix))]
    pairs = [("a", "b"), ("b", "c"), ("a", "c")] * 20
    results = await asyncio.gather(
        *[stores[i % 2].reserve_all([_ask(x, 1.0), _ask(y, 1.0)], 0.1) for i, (x, y) in enumerate(pairs)]
    )
    admitted = [pair for pair, decisions in zip(pairs, results, strict=True) if all(d.allowed for d in decisions)]
    for counter in "abc":
        expected = sum(0.1 for pair in admitted if counter in pair)
        assert await _held(shared, counter) == pytest.approx(expected) and expected <= 1.0 + 1e-9
    assert 10 <= len(admitted) <= 15  # 3 budgets of $1, $0.10 in two of them per call
    await stores[1].close()


def _key() -> KeyInfo:
    return key_info(id=uuid.uuid4().hex[:16], name="ci", budget_usd=10.0)


async def test_police_asks_redis_once_for_every_budget_of_a_call(shared: RedisCounters) -> None:
    counters = ResilientCounters(shared)
    book = BudgetBook()
    book.configured = [BudgetLimit("workflow", "w", 10.0, "day"), BudgetLimit("project", "p", 0.000001, "total")]
    book._install([])
    calls: list[int] = []
    single = shared.try_reserve
    many = shared.try_reserve_all

    async def one(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a budget was reserved alone")

    async def all_of(asks, amount):  # type: ignore[no-untyped-def]
        calls.append(len(asks))
        return await many(asks, amount)

    shared.try_reserve = one  # type: ignore[method-assign]
    shared.try_reserve_all = all_of  # type: ignore[method-assign]
    call = CallContext(Endpoint.CHAT, OPENAI_ERRORS)
    call.key = _key()
    call.attribution = {"project": "p", "workflow": "w"}
    target = Target(
        PROVIDERS["openai"],
        "gpt-4o-mini",
        "gpt-4o-mini",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50},
    )
    with pytest.raises(Refused) as refused:
        await police(call, target, prices=PriceBook(), counters=counters, spent_since=lambda s, t: 0.0, budgets=book)
    assert "project" in refused.value.error.message and refused.value.error.status == 402
    assert calls == [3]  # the key's, the workflow's and the project's: one script
    assert await _held(shared, call.key.id) == 0.0  # the key's and the workflow's hold nothing
    shared.try_reserve = single  # type: ignore[method-assign]


async def test_redis_down_falls_back_per_policy_all_or_none() -> None:
    from tokensense.gateway.limits import CountersUnavailable

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    local = ResilientCounters(RedisCounters(url, prefix="down", timeout=0.2), on_outage="local")
    admitted = await local.reserve_all([_ask("a", 1.0), _ask("b", 1.0)], 0.6)
    assert all(d.allowed for d in admitted) and local.shared_down
    refused = await local.reserve_all([_ask("c", 1.0), _ask("a", 1.0)], 0.6)  # a cannot hold it: c gives it back
    assert refused[0].allowed and not refused[1].allowed
    assert local.local.held("a", "total") == pytest.approx(0.6) and local.local.held("c", "total") == 0.0
    await local.close()
    closed = ResilientCounters(RedisCounters(url, prefix="down", timeout=0.2), on_outage="closed")
    with pytest.raises(CountersUnavailable):
        await closed.reserve_all([_ask("a", 1.0), _ask("b", 1.0)], 0.1)
    await closed.close()

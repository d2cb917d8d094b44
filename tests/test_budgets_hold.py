"""Issue 12, budgets that hold: reservations at the output cap, admission on settled + reserved, Redis outages."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import uuid

import pytest
from conftest import free_port

from tests.conftest import service_missing
from tokensense.gateway.limits import (
    BudgetDecision,
    CountersUnavailable,
    MemoryCounters,
    RedisCounters,
    ResilientCounters,
    budget_decision,
)
from tokensense.gateway.reservation import budget_refusal, model_max_output, reservation_usage
from tokensense.gateway.shared_counters import make_counters
from tokensense.providers.anthropic.chat import DEFAULT_MAX_TOKENS, chat_request_to_provider

REDIS_URL = os.environ.get("TOKENSENSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MESSAGES = [{"role": "user", "content": "Say hello in three words."}]


# --- the reservation --------------------------------------------------------------


def test_reservation_uses_the_cap_the_translation_sends() -> None:
    """Issue 12: the estimate assumed 1,024 output tokens while the Claude translation sends 4,096."""
    sent = chat_request_to_provider({"model": "claude-sonnet-4-5", "messages": MESSAGES})
    usage = reservation_usage(sent, max_output_tokens=None, model_max_output=model_max_output("claude-sonnet-4-5"))
    assert usage.output_tokens == DEFAULT_MAX_TOKENS == sent["max_tokens"]
    assert usage.input_tokens >= len("Say hello in three words.") // 4


def test_reservation_without_a_cap_is_the_models_largest_output() -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    assert reservation_usage(body, max_output_tokens=None, model_max_output=model_max_output("gpt-4o-mini")).output_tokens == 16_384
    assert reservation_usage({**body, "max_tokens": 100}, max_output_tokens=None, model_max_output=16_384).output_tokens == 100
    assert reservation_usage({**body, "max_tokens": 100, "n": 3}, max_output_tokens=None, model_max_output=None).output_tokens == 300
    assert reservation_usage(body, max_output_tokens=50, model_max_output=None).output_tokens == 50
    gemini = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 77}}
    assert reservation_usage(gemini, max_output_tokens=None, model_max_output=65_536).output_tokens == 77
    assert reservation_usage({"model": "text-embedding-3-small", "input": "x"}, max_output_tokens=None,
                             model_max_output=None, generates=False).output_tokens == 0


def test_model_max_output_table() -> None:
    assert model_max_output("gpt-4o-2024-08-06") == 16_384
    assert model_max_output("openai/gpt-4.1-mini") == 32_768
    assert model_max_output("claude-opus-4-5-20251101") == 64_000
    assert model_max_output("claude-opus-4-1") == 32_000
    assert model_max_output("some-new-model") == 32_768


# --- admission ------------------------------------------------------------------------


def test_budget_decision_reasons() -> None:
    assert budget_decision(1.0, 0.5, 0.2, 0.3).allowed
    assert budget_decision(1.0, 0.5, 0.3, 0.3).reason == "reserved"  # free once the calls in flight settle
    assert budget_decision(1.0, 1.0, 0.0, 0.1).reason == "spent"
    assert budget_decision(1.0, 0.9, 0.0, 0.2).reason == "insufficient"
    assert budget_decision(0.0, 0.0, 0.0, 0.0).reason == "spent", "a zero budget admits nothing, not even a free call"


def test_refusal_says_spent_and_reserved_separately() -> None:
    """Issue 12: a budget held by reservations answered 402 "has spent its budget ($0.000000 spent)"."""
    error, headers = budget_refusal("team", 1.0, "total", BudgetDecision(False, 0.0, 0.98, 0.05, "reserved"))
    assert error.status == 429 and headers["retry-after"]
    assert "$0.000000 spent" in error.message and "$0.980000 reserved" in error.message
    error, headers = budget_refusal("team", 1.0, "daily", BudgetDecision(False, 1.01, 0.0, 0.05, "spent"))
    assert error.status == 402 and not headers and "$1.010000 spent" in error.message and "for today" in error.message
    error, _ = budget_refusal("team", 1.0, "total", BudgetDecision(False, 0.99, 0.0, 0.05, "insufficient"))
    assert error.status == 402 and "max_tokens" in error.message


async def test_parallel_reservations_never_exceed_the_budget() -> None:
    counters = MemoryCounters()
    results = await asyncio.gather(*[counters.reserve_budget("k", "total", 1.0, 0.03, lambda: 0.0, None)
                                     for _ in range(50)])
    admitted = [r for r in results if r.allowed]
    assert len(admitted) == 33 and max(r.reserved for r in admitted) <= 1.0
    assert {r.reason for r in results if not r.allowed} == {"reserved"}


@pytest.mark.redis
async def test_two_instances_on_redis_never_exceed_the_budget() -> None:
    redis = pytest.importorskip("redis")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    first, second = RedisCounters(REDIS_URL, prefix=prefix), RedisCounters(REDIS_URL, prefix=prefix)
    try:
        await first.redis.ping()
    except redis.exceptions.ConnectionError as e:
        service_missing(f"no Redis at {REDIS_URL}: {e}")
    try:
        stores = [first if i % 2 else second for i in range(50)]
        results = await asyncio.gather(*[store.reserve_budget("k", "total", 1.0, 0.03, lambda: 0.0, None)
                                         for store in stores])
        assert sum(r.allowed for r in results) == 33
        assert {r.reason for r in results if not r.allowed} == {"reserved"}
        for store, result in zip(stores, results, strict=True):  # a call settles where it reserved
            if result.allowed:
                await store.settle_budget("k", "total", 0.03, 0.031)
        refused = await second.reserve_budget("k", "total", 1.0, 0.03, lambda: 0.0, None)
        assert refused.reason == "spent" and refused.reserved == pytest.approx(0.0)
    finally:
        keys = await first.redis.keys(f"{prefix}:*")
        if keys:
            await first.redis.delete(*keys)
        await first.close()
        await second.close()


# --- Redis outages ----------------------------------------------------------------------


@pytest.fixture
def own_redis():
    """A redis-server of this test's own on a free port (killed or frozen by the test, never the machine's)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis as redis_sync

    client = redis_sync.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis_sync.exceptions.ConnectionError:
            import time

            time.sleep(0.05)
    yield proc, f"redis://127.0.0.1:{port}/0"
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


class Settings:
    redis_timeout = 0.15
    limits_on_outage = "local"


async def test_killed_redis_falls_back_to_local_counters_with_one_warning(own_redis, caplog) -> None:
    """Issue 12: with Redis killed, limits were silently off (one log line per call)."""
    proc, url = own_redis
    counters = make_counters(url, settings=Settings())
    assert isinstance(counters, ResilientCounters)
    assert (await counters.acquire_rate("k", "r0", 2, None, 1)).allowed  # counted in Redis
    proc.kill()
    proc.wait()
    with caplog.at_level(logging.WARNING, logger="tokensense.gateway.limits"):
        decisions = [await counters.acquire_rate("k", f"r{i}", 2, None, 1) for i in range(1, 20)]
        budget = [await counters.reserve_budget("k", "total", 0.1, 0.04, lambda: 0.0, None) for _ in range(3)]
    assert [d.allowed for d in decisions[:3]] == [True, True, False], "limits still hold, per instance"
    assert [b.allowed for b in budget] == [True, True, False]
    assert caplog.text.count("counters unavailable") == 1
    assert counters.status().startswith("local")
    await counters.close()


async def test_closed_policy_refuses_when_redis_is_down(own_redis) -> None:
    proc, url = own_redis
    settings = Settings()
    settings.limits_on_outage = "closed"
    counters = make_counters(url, settings=settings)
    proc.kill()
    proc.wait()
    with pytest.raises(CountersUnavailable):
        await counters.acquire_rate("k", "r", 2, None, 1)
    with pytest.raises(CountersUnavailable):
        await counters.reserve_budget("k", "total", 1.0, 0.1, lambda: 0.0, None)
    await counters.close()


async def test_frozen_redis_falls_back_instead_of_waiting(own_redis) -> None:
    """Issue 12: with Redis frozen each rate-limited call waited 5 s, then was served unchecked."""
    proc, url = own_redis
    counters = make_counters(url, settings=Settings())
    assert isinstance(counters, ResilientCounters)
    assert (await counters.acquire_rate("k", "r0", 1, None, 1)).allowed
    proc.send_signal(signal.SIGSTOP)
    try:
        # The guard only stops a hang; the delay itself is measured by scripts/nothing_lost_bench.py.
        decision = await asyncio.wait_for(counters.acquire_rate("k", "r1", 1, None, 1), timeout=30)
        assert decision.allowed  # local counters: this instance had not counted r0
        assert not (await asyncio.wait_for(counters.acquire_rate("k", "r2", 1, None, 1), timeout=30)).allowed
        assert counters.shared_down
        pool_kwargs = counters.shared.redis.connection_pool.connection_kwargs
        assert pool_kwargs["socket_timeout"] == 0.15 and pool_kwargs["socket_connect_timeout"] == 0.15
    finally:
        proc.send_signal(signal.SIGCONT)
    await counters.close()

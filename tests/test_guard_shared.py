"""The loop guard's counts shared through Redis (issue 26, item 4): every instance counts the same run."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.conftest import service_missing
from tokensense.gateway.guards import LoopAlert, LoopGuard, SharedLoopCounts

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("TOKENSENSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "list the files"}]}


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own on the machine's Redis, deleted afterwards."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as e:
        await client.aclose()
        service_missing(f"Redis at {REDIS_URL} is not reachable ({type(e).__name__})")
    name = f"ts-test-{uuid.uuid4().hex[:10]}"
    yield name
    keys = [k async for k in client.scan_iter(f"{name}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def instances(prefix: str, alerts: list[LoopAlert], **limits: int | float | None) -> list[LoopGuard]:
    return [
        LoopGuard(**limits, on_alert=alerts.append, shared=SharedLoopCounts(REDIS_URL, prefix=prefix))  # type: ignore[arg-type]
        for _ in range(2)
    ]


async def test_the_fourth_identical_call_is_refused_whichever_instance_serves_it(prefix: str) -> None:
    alerts: list[LoopAlert] = []
    a, b = instances(prefix, alerts, repeat_limit=3, repeat_window_s=60)
    try:
        answers = [await guard.admit("k1", "agent", "run-1", BODY) for guard in (a, b, a)]
        assert answers == [None, None, None], "each instance alone saw fewer than 3"
        refused = await b.admit("k1", "agent", "run-1", BODY)
        assert refused is not None and refused.status == 429 and refused.code == "loop_detected"
        assert "3 times" in refused.message
        assert (await a.admit("k1", "agent", "run-1", BODY)) is not None
        assert len(alerts) == 1 and alerts[0].reason == "repeat", "one alert across the instances"
        assert (await a.admit("k1", "agent", "run-2", BODY)) is None, "another run goes through"
        assert (await b.admit("k2", "other", "run-1", BODY)) is None, "another key's run of the same name too"
        assert (await b.admit("k1", "agent", "run-1", {**BODY, "n": 2})) is None, "another body too"
        assert (await a.admit("k1", "agent", None, BODY)) is None, "no execution id: not guarded"
    finally:
        for guard in (a, b):
            await guard.aclose()


async def test_max_calls_per_execution_counts_every_instance(prefix: str) -> None:
    alerts: list[LoopAlert] = []
    a, b = instances(prefix, alerts, repeat_limit=None, max_calls_per_execution=4)
    try:
        for i in range(4):
            assert (await (a, b)[i % 2].admit("k1", "agent", "run", {"i": i})) is None
        for guard in (a, b):
            refused = await guard.admit("k1", "agent", "run", {"i": 99})
            assert refused is not None and "4 calls" in refused.message
        assert [alert.reason for alert in alerts] == ["max_calls"]
    finally:
        for guard in (a, b):
            await guard.aclose()


async def test_redis_down_counts_in_this_process() -> None:
    """Like limits_on_outage = local: the guard never refuses a call because Redis is down."""
    shared = SharedLoopCounts("redis://127.0.0.1:1/0", timeout=0.2, retry_after=60)
    guard = LoopGuard(repeat_limit=2, shared=shared)
    try:
        assert (await guard.admit("k", "agent", "run", BODY)) is None
        assert shared.down(), "after a failure Redis is left alone for retry_after"
        assert (await guard.admit("k", "agent", "run", BODY)) is None
        refused = await guard.admit("k", "agent", "run", BODY)
        assert refused is not None and refused.code == "loop_detected", "the process's own counts still hold"
    finally:
        await guard.aclose()

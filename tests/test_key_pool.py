"""Provider-key pools: round-robin, 429 cool-down, take-out on 401/403, circuit breaker with a half-open probe."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from tests.conftest import service_missing
from tokensense.gateway.key_pool import (
    CLEAN,
    KeyHealth,
    KeyPools,
    KeyState,
    Outcome,
    PoolPolicy,
    RedisHealth,
    after,
    choose,
    forget_shared_state,
    key_state,
    outcome_for,
    read_shared_states,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
POLICY = PoolPolicy(cooldown=60, max_cooldown=600, breaker_failures=5, breaker_cooldown=30, probe_timeout=120)


@dataclass(frozen=True)
class Key:
    name: str
    disabled: bool = False
    changed_at: datetime | None = None


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_outcomes_of_statuses() -> None:
    assert [outcome_for(s) for s in (200, 400, 404, 422)] == [Outcome.OK] * 4
    assert outcome_for(429) is Outcome.RATE_LIMITED
    assert outcome_for(401) is outcome_for(403) is Outcome.REFUSED
    assert [outcome_for(s) for s in (None, 500, 502, 503, 504, 529)] == [Outcome.FAILED] * 6


def test_rate_limited_key_cools_down_for_its_retry_after_or_the_default() -> None:
    health = after(CLEAN, Outcome.RATE_LIMITED, 100.0, POLICY, retry_after=7)
    assert key_state(health, 106.9) is KeyState.COOLING
    assert key_state(health, 107.0) is KeyState.READY
    default = after(CLEAN, Outcome.RATE_LIMITED, 100.0, POLICY)
    assert key_state(default, 159.0) is KeyState.COOLING and key_state(default, 160.0) is KeyState.READY
    capped = after(CLEAN, Outcome.RATE_LIMITED, 100.0, POLICY, retry_after=86400)
    assert capped.cooling_until == 700.0
    # A shorter Retry-After later does not shorten a cool-down already running.
    assert after(health, Outcome.RATE_LIMITED, 101.0, POLICY, retry_after=1).cooling_until == 107.0


def test_refused_key_is_out_until_restored() -> None:
    health = after(CLEAN, Outcome.REFUSED, 100.0, POLICY, reason="401 invalid key")
    assert key_state(health, 1e12) is KeyState.OUT
    assert after(health, Outcome.REFUSED, 200.0, POLICY, reason="other").out_reason == "401 invalid key"


def test_a_streak_of_failures_opens_the_circuit_then_one_probe_decides() -> None:
    health = CLEAN
    for i in range(4):
        health = after(health, Outcome.FAILED, 100.0 + i, POLICY)
        assert key_state(health, 100.0 + i) is KeyState.READY
    # A success in between ends the streak.
    assert after(health, Outcome.OK, 104.0, POLICY).failures == 0
    health = after(health, Outcome.FAILED, 104.0, POLICY)
    assert key_state(health, 104.0) is KeyState.OPEN and health.open_until == 134.0
    assert key_state(health, 133.9) is KeyState.OPEN
    assert key_state(health, 134.0) is KeyState.HALF_OPEN
    # The probe fails: open again for a full cool-down.
    reopened = after(health, Outcome.FAILED, 140.0, POLICY)
    assert key_state(reopened, 169.9) is KeyState.OPEN and key_state(reopened, 170.0) is KeyState.HALF_OPEN
    # The probe succeeds (or is rate limited: the provider answers): closed.
    assert key_state(after(reopened, Outcome.OK, 171.0, POLICY), 171.0) is KeyState.READY
    limited = after(reopened, Outcome.RATE_LIMITED, 171.0, POLICY, retry_after=2)
    assert key_state(limited, 171.0) is KeyState.COOLING and key_state(limited, 173.0) is KeyState.READY


def test_choose_goes_round_robin_over_usable_keys_only() -> None:
    pool = [Key("default"), Key("backup"), Key("spare"), Key("bad", disabled=True)]
    healths = {"spare": KeyHealth(cooling_until=200.0)}
    picked = [choose(pool, healths, counter, 100.0).key.name for counter in range(4)]
    assert picked == ["default", "backup", "default", "backup"]
    # A key this call already tried is avoided while another is usable.
    assert choose(pool, healths, 0, 100.0, exclude={"default"}).key.name == "backup"
    assert choose(pool, healths, 0, 100.0, exclude={"default", "backup"}).key.name == "default"


def test_choose_without_a_usable_key_says_when_one_will_be_if_a_fallback_can_serve() -> None:
    pool = [Key("a"), Key("b"), Key("c", disabled=True)]
    healths = {"a": KeyHealth(cooling_until=130.0), "b": KeyHealth(open_until=110.0, failures=5)}
    pick = choose(pool, healths, 0, 100.0, others_can_serve=True)
    assert pick.key is None and pick.retry_after == 10.0
    assert pick.states == {"a": KeyState.COOLING, "b": KeyState.OPEN, "c": KeyState.OUT}
    assert choose([Key("x", disabled=True)], {}, 0, 100.0).retry_after is None
    # Half-open with a probe in flight: not usable until the probe timed out.
    probing = {"a": KeyHealth(open_until=90.0, probe_until=150.0)}
    assert choose([Key("a")], probing, 0, 100.0, others_can_serve=True).retry_after == 50.0


def test_choose_gives_the_last_resting_key_when_nothing_else_can_serve() -> None:
    """Issue 22: a lone key was rested and the gateway answered 429 for the provider for half a minute."""
    pool = [Key("a"), Key("b"), Key("c", disabled=True)]
    healths = {"a": KeyHealth(cooling_until=130.0), "b": KeyHealth(open_until=110.0, failures=5)}
    pick = choose(pool, healths, 0, 100.0)  # no fallback: the key usable soonest is tried anyway
    assert (pick.key.name, pick.state, pick.resting, pick.probe) == ("b", KeyState.OPEN, True, False)
    assert choose(pool, healths, 0, 100.0, exclude={"b"}).key.name == "a"  # one this call has not tried first
    probing = {"a": KeyHealth(open_until=90.0, probe_until=150.0)}
    lone = choose([Key("a")], probing, 0, 100.0)
    assert (lone.key.name, lone.state, lone.probe) == ("a", KeyState.HALF_OPEN, False)  # not a second probe
    # A key taken out (or disabled) is never given: only an operator puts it back.
    out = {"a": KeyHealth(out_reason="401: invalid key", out_at=90.0)}
    assert choose([Key("a"), Key("c", disabled=True)], out, 0, 100.0).key is None


# --- the pools, in memory and in Redis ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(params=["memory", "redis"])
async def make_pools(request: pytest.FixtureRequest) -> AsyncIterator:
    """A factory of KeyPools sharing one store: two "instances" when the store is Redis."""
    prefix = f"tstest{uuid.uuid4().hex[:8]}"
    made: list[KeyPools] = []
    if request.param == "redis" and not _redis_up():
        service_missing("Redis at 127.0.0.1:6379 is not reachable")

    def make(clock: Clock, **kwargs) -> KeyPools:
        shared = RedisHealth(REDIS_URL, prefix=prefix) if request.param == "redis" else None
        pools = KeyPools(POLICY, clock=clock, shared=shared, **kwargs)
        made.append(pools)
        return pools

    make.redis = request.param == "redis"  # type: ignore[attr-defined]
    make.prefix = prefix  # type: ignore[attr-defined]
    yield make
    if request.param == "redis":
        import redis.asyncio as redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    for pools in made:
        await pools.close()


async def test_pool_key_cools_down_after_429_and_comes_back(make_pools) -> None:
    clock = Clock()
    pools = make_pools(clock)
    pool = [Key("default"), Key("backup")]
    first = await pools.pick("openai", pool)
    second = await pools.pick("openai", pool)
    assert {first.key.name, second.key.name} == {"default", "backup"}

    assert await pools.report("openai", "backup", Outcome.RATE_LIMITED, retry_after=3) is KeyState.COOLING
    assert [(await pools.pick("openai", pool)).key.name for _ in range(3)] == ["default"] * 3
    clock.now += 3
    assert {(await pools.pick("openai", pool)).key.name for _ in range(2)} == {"default", "backup"}


async def test_every_key_cooling_gives_no_key_and_the_wait_only_when_a_fallback_can_serve(make_pools) -> None:
    clock = Clock()
    pools = make_pools(clock)
    pool = [Key("default")]
    await pools.report("anthropic", "default", Outcome.RATE_LIMITED, retry_after=12)
    pick = await pools.pick("anthropic", pool, others_can_serve=True)
    assert pick.key is None and pick.retry_after == pytest.approx(12)
    alone = await pools.pick("anthropic", pool)
    assert (alone.key.name, alone.state, alone.resting) == ("default", KeyState.COOLING, True)


async def test_circuit_breaker_probe_is_given_to_one_request_only(make_pools) -> None:
    clock = Clock()
    pools = make_pools(clock)
    other = make_pools(clock)  # a second instance (sharing the state when it is Redis)
    pool = [Key("default")]
    for _ in range(5):
        await pools.report("gemini", "default", Outcome.FAILED)
    assert (await pools.pick("gemini", pool, others_can_serve=True)).key is None
    resting = await pools.pick("gemini", pool)  # alone, the open key is still tried, not as the probe
    assert (resting.key.name, resting.state, resting.probe) == ("default", KeyState.OPEN, False)
    clock.now += POLICY.breaker_cooldown
    probe = await pools.pick("gemini", pool, others_can_serve=True)
    assert probe.key.name == "default" and probe.probe
    assert (await pools.pick("gemini", pool, others_can_serve=True)).key is None, \
        "a second request while the probe is in flight"
    if make_pools.redis:
        assert (await other.pick("gemini", pool, others_can_serve=True)).key is None, \
            "the other instance sees the probe too"
    assert not (await pools.pick("gemini", pool)).probe  # alone, tried beside the probe
    assert await pools.report("gemini", "default", Outcome.OK) is KeyState.READY
    assert (await pools.pick("gemini", pool)).state is KeyState.READY
    if make_pools.redis:
        assert (await other.pick("gemini", pool)).state is KeyState.READY


async def test_instances_share_cool_downs_and_failure_streaks_through_redis(make_pools) -> None:
    if not make_pools.redis:
        pytest.skip("sharing needs Redis")
    clock = Clock()
    a, b = make_pools(clock), make_pools(clock)
    pool = [Key("default"), Key("backup")]
    await a.report("openai", "default", Outcome.RATE_LIMITED, retry_after=30)
    assert {(await b.pick("openai", pool)).key.name for _ in range(3)} == {"backup"}
    for pools in (a, b, a, b, a):  # five failures in a row, from two instances
        await pools.report("openai", "backup", Outcome.FAILED)
    assert (await b.pick("openai", pool, others_can_serve=True)).key is None
    states = read_shared_states(REDIS_URL, "openai", ["default", "backup", "never"], prefix=make_pools.prefix,
                                now=clock.now)
    assert {n: s for n, (s, _) in states.items()} == {"default": KeyState.COOLING, "backup": KeyState.OPEN,
                                                       "never": KeyState.READY}
    forget_shared_state(REDIS_URL, "openai", "backup", prefix=make_pools.prefix)
    assert (await a.pick("openai", pool, exclude=()) ).key.name == "backup"


async def test_refused_key_is_taken_out_once_and_written_through(make_pools) -> None:
    clock = Clock()
    taken: list[tuple[str, str, str]] = []
    pools = make_pools(clock, on_take_out=lambda *args: taken.append(args))
    pool = [Key("default"), Key("backup")]
    await pools.report("openai", "backup", Outcome.REFUSED, reason="401: invalid api key")
    await pools.report("openai", "backup", Outcome.REFUSED, reason="401 again")
    assert taken == [("openai", "backup", "401: invalid api key")]
    assert {(await pools.pick("openai", pool)).key.name for _ in range(3)} == {"default"}
    # The database has it now (the key store reloads it as disabled): still out.
    written = [Key("default"), Key("backup", disabled=True, changed_at=datetime.now(UTC))]
    assert {(await pools.pick("openai", written)).key.name for _ in range(3)} == {"default"}
    # The operator restored it: the row changed after the take-out, and is no longer disabled.
    clock.now += 10
    restored = [Key("default"), Key("backup", changed_at=datetime.fromtimestamp(clock.now, UTC))]
    assert {(await pools.pick("openai", restored)).key.name for _ in range(2)} == {"default", "backup"}


async def test_redis_failure_falls_back_to_local_state() -> None:
    clock = Clock()
    dead = f"redis://127.0.0.1:{_free_port()}/0"
    pools = KeyPools(POLICY, clock=clock, redis_url=dead)
    pool = [Key("default"), Key("backup")]
    try:
        await pools.report("openai", "default", Outcome.RATE_LIMITED, retry_after=5)
        assert {(await pools.pick("openai", pool)).key.name for _ in range(3)} == {"backup"}
        clock.now += 5
        assert {(await pools.pick("openai", pool)).key.name for _ in range(2)} == {"default", "backup"}
    finally:
        await pools.close()

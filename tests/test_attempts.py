"""The attempt loop: retries with their waits, key pools, fallbacks across providers, policies per fallback."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tokensense.config import RoutingConfig
from tokensense.gateway.attempts import AttemptOutcome, run_attempts
from tokensense.gateway.key_pool import KeyPools, KeyState, PoolPolicy, outcome_for
from tokensense.gateway.retry import Candidate, UpstreamTimeouts

OPENAI = Candidate("gpt-4o-mini", "gpt-4o-mini", "openai")
CLAUDE = Candidate("claude-haiku-4-5", "claude-haiku-4-5", "anthropic", fallback=1)
GEMINI = Candidate("gemini-2.5-flash", "gemini-2.5-flash", "gemini", fallback=2)


@dataclass(frozen=True)
class Key:
    name: str
    disabled: bool = False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """Scripted answers per provider (and key): each attempt takes the next one; then 200."""

    def __init__(self, script: dict[str, list[AttemptOutcome]], clock: Clock) -> None:
        self.script = script
        self.clock = clock
        self.sent: list[tuple[str, str]] = []
        self.discarded: list[AttemptOutcome] = []
        self.waits: list[float] = []

    async def send(self, candidate: Candidate, key: Key, timeouts: UpstreamTimeouts) -> AttemptOutcome:
        self.sent.append((candidate.served_by, key.name))
        for name in (f"{candidate.provider}:{key.name}", candidate.provider):
            if self.script.get(name):
                return self.script[name].pop(0)
        return AttemptOutcome(200, {}, answer=f"answer from {candidate.served_by}")

    async def discard(self, outcome: AttemptOutcome) -> None:
        self.discarded.append(outcome)

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.now += seconds


def _fail(status: int | None, retry_after: str | None = None) -> AttemptOutcome:
    return AttemptOutcome(status, {"retry-after": retry_after} if retry_after else {},
                          "connection refused" if status is None else f"error {status}", answer=f"body {status}")


async def _run(plan, upstream: Upstream, clock: Clock, *, routing: RoutingConfig, pools_by=None, police=None):
    pools = KeyPools(PoolPolicy(breaker_failures=3, breaker_cooldown=30), clock=clock)
    return await run_attempts(
        plan, pools=pools, routing=routing, credentials=lambda p: (pools_by or {}).get(p, [Key("default")]),
        send=upstream.send, timeouts=lambda c: UpstreamTimeouts(10, None), police=police, discard=upstream.discard,
        sleep=upstream.sleep, rng=random.Random(3), request_id="r1"), pools


async def test_retry_waits_for_retry_after_then_succeeds() -> None:
    clock = Clock()
    upstream = Upstream({"openai": [_fail(429, "2")]}, clock)
    result, _ = await _run([OPENAI], upstream, clock, routing=RoutingConfig(retries=1))
    assert result.outcome.status == 200
    assert [(a.status, a.waited) for a in result.attempts] == [(429, 0.0), (200, 2.0)]
    assert upstream.waits == [2.0]
    assert result.headers() == {"x-tokensense-attempts": "2", "x-tokensense-served-by": "openai/gpt-4o-mini"}
    assert [d.status for d in upstream.discarded] == [429]


async def test_backoff_between_retries_of_server_errors_then_give_up_with_the_last_answer() -> None:
    clock = Clock()
    upstream = Upstream({"openai": [_fail(503), _fail(None), _fail(529)]}, clock)
    result, _ = await _run([OPENAI], upstream, clock, routing=RoutingConfig(retries=2, backoff=1, max_backoff=8))
    assert [a.status for a in result.attempts] == [503, None, 529]
    assert 0.5 <= upstream.waits[0] <= 1 and 1 <= upstream.waits[1] <= 2
    assert result.outcome.status == 529 and result.outcome.answer == "body 529"  # the client gets the last answer
    assert [d.status for d in upstream.discarded] == [503, None]


async def test_fallbacks_cross_providers_after_retries_and_skip_what_the_policy_forbids() -> None:
    clock = Clock()
    upstream = Upstream({"openai": [_fail(503), _fail(503)]}, clock)
    policed: list[str] = []

    async def police(candidate: Candidate) -> str | None:
        policed.append(candidate.served_by)
        return "model not allowed for this key" if candidate.provider == "anthropic" else None

    result, _ = await _run([OPENAI, CLAUDE, GEMINI], upstream, clock, routing=RoutingConfig(retries=1), police=police)
    assert upstream.sent == [("openai/gpt-4o-mini", "default")] * 2 + [("gemini/gemini-2.5-flash", "default")]
    assert policed == ["anthropic/claude-haiku-4-5", "gemini/gemini-2.5-flash"]  # each fallback is policed
    assert [(s.requested, s.reason) for s in result.skipped] == [("claude-haiku-4-5", "model not allowed for this key")]
    assert result.served_by == GEMINI and result.headers()["x-tokensense-served-by"] == "gemini/gemini-2.5-flash"
    assert [a.number for a in result.attempts] == [1, 2, 3]


async def test_long_retry_after_moves_on_to_the_fallback_without_waiting() -> None:
    clock = Clock()
    upstream = Upstream({"openai": [_fail(429, "120")]}, clock)
    result, _ = await _run([OPENAI, CLAUDE], upstream, clock, routing=RoutingConfig(retries=3, max_retry_wait=10))
    assert upstream.waits == [] and result.served_by == CLAUDE


async def test_client_errors_are_not_retried() -> None:
    clock = Clock()
    upstream = Upstream({"openai": [_fail(400)]}, clock)
    result, _ = await _run([OPENAI, CLAUDE], upstream, clock, routing=RoutingConfig(retries=3))
    assert [a.status for a in result.attempts] == [400] and result.outcome.status == 400


async def test_pool_key_rate_limited_is_skipped_at_once_and_comes_back_after_its_cool_down() -> None:
    clock = Clock()
    pool = {"openai": [Key("default"), Key("backup")]}
    upstream = Upstream({"openai:default": [_fail(429, "20")]}, clock)
    result, pools = await _run([OPENAI], upstream, clock, routing=RoutingConfig(retries=1), pools_by=pool)
    assert upstream.sent == [("openai/gpt-4o-mini", "default"), ("openai/gpt-4o-mini", "backup")]
    assert upstream.waits == [] and result.attempts[0].key_state is KeyState.COOLING
    # While it cools down, every call uses the backup key.
    for _ in range(3):
        upstream.sent.clear()
        result = await run_attempts([OPENAI], pools=pools, routing=RoutingConfig(), credentials=pool.get,
                                    send=upstream.send, timeouts=lambda c: UpstreamTimeouts(None, None))
        assert upstream.sent == [("openai/gpt-4o-mini", "backup")]
    clock.now += 20
    used = set()
    for _ in range(2):
        upstream.sent.clear()
        await run_attempts([OPENAI], pools=pools, routing=RoutingConfig(), credentials=pool.get,
                           send=upstream.send, timeouts=lambda c: UpstreamTimeouts(None, None))
        used.add(upstream.sent[0][1])
    assert used == {"default", "backup"}


async def test_refused_key_is_taken_out_and_the_other_key_tried_without_using_a_retry() -> None:
    clock = Clock()
    pool = {"openai": [Key("default"), Key("backup")]}
    upstream = Upstream({"openai:default": [_fail(401)]}, clock)
    result, pools = await _run([OPENAI], upstream, clock, routing=RoutingConfig(retries=0), pools_by=pool)
    assert [(a.key_name, a.status, a.key_state) for a in result.attempts] == [
        ("default", 401, KeyState.OUT), ("backup", 200, KeyState.READY)]
    assert not pools.has_usable("openai", pool["openai"], exclude={"backup"})


async def test_a_lone_resting_key_is_still_tried_and_the_provider_answers() -> None:
    """Issue 22: with one key, after a few failures the gateway answered its own 429 ("every openai key is
    resting") for half a minute instead of trying the key."""
    clock = Clock()
    upstream = Upstream({"openai": [_fail(429, "30")]}, clock)
    result, pools = await _run([OPENAI], upstream, clock, routing=RoutingConfig(retries=0))
    assert result.outcome.status == 429 and result.outcome.answer == "body 429"  # the provider's own answer
    upstream.sent.clear()
    again = await run_attempts([OPENAI], pools=pools, routing=RoutingConfig(), credentials=lambda p: [Key("default")],
                               send=upstream.send, timeouts=lambda c: UpstreamTimeouts(None, None))
    assert upstream.sent == [("openai/gpt-4o-mini", "default")] and not again.outcome.synthetic
    assert again.outcome.status == 200 and [a.status for a in again.attempts] == [200]
    # With a fallback, the resting key is passed over: the call goes there instead.
    fallback = await run_attempts([OPENAI, CLAUDE], pools=pools, routing=RoutingConfig(),
                                  credentials=lambda p: [Key("default")], send=upstream.send,
                                  timeouts=lambda c: UpstreamTimeouts(None, None))
    assert fallback.served_by == CLAUDE and fallback.headers()["x-tokensense-attempts"] == "1"


async def test_a_lone_key_failing_opens_its_circuit_but_keeps_being_tried() -> None:
    clock = Clock()
    upstream = Upstream({"openai": [_fail(529) for _ in range(5)]}, clock)
    pools = KeyPools(PoolPolicy(breaker_failures=3, breaker_cooldown=30), clock=clock)
    statuses = []
    for _ in range(6):
        result = await run_attempts([OPENAI], pools=pools, routing=RoutingConfig(retries=0),
                                    credentials=lambda p: [Key("default")], send=upstream.send,
                                    timeouts=lambda c: UpstreamTimeouts(None, None))
        statuses.append((result.outcome.status, result.outcome.synthetic, result.attempts[0].key_state))
    assert statuses == [(529, False, KeyState.READY), (529, False, KeyState.READY), (529, False, KeyState.OPEN),
                        (529, False, KeyState.OPEN), (529, False, KeyState.OPEN), (200, False, KeyState.READY)]


async def test_a_passed_over_candidate_is_tried_when_its_fallbacks_cannot_serve() -> None:
    clock = Clock()
    upstream = Upstream({}, clock)
    pools = KeyPools(PoolPolicy(breaker_failures=1), clock=clock)
    await pools.report("openai", "default", outcome_for(503))  # open: passed over while a fallback may serve

    async def police(candidate: Candidate) -> str | None:
        return "over budget"

    result = await run_attempts([OPENAI, CLAUDE], pools=pools, routing=RoutingConfig(),
                                credentials=lambda p: [Key("default")], send=upstream.send, police=police,
                                timeouts=lambda c: UpstreamTimeouts(None, None))
    assert upstream.sent == [("openai/gpt-4o-mini", "default")] and result.served_by == OPENAI
    assert result.outcome.status == 200 and [s.requested for s in result.skipped] == ["claude-haiku-4-5"]


async def test_every_key_taken_out_is_the_gateways_503_without_an_attempt() -> None:
    clock = Clock()
    upstream = Upstream({"openai": [_fail(401)]}, clock)
    result, pools = await _run([OPENAI], upstream, clock, routing=RoutingConfig(retries=0))
    assert result.outcome.status == 401 and not result.outcome.synthetic
    again = await run_attempts([OPENAI], pools=pools, routing=RoutingConfig(), credentials=lambda p: [Key("default")],
                               send=upstream.send, timeouts=lambda c: UpstreamTimeouts(None, None))
    assert again.attempts == [] and again.outcome.synthetic and again.outcome.status == 503
    assert "no openai key can be used (default out)" in (again.outcome.error or "")


async def test_an_answer_too_slow_after_its_headers_is_not_a_failure_of_the_key() -> None:
    """Issue 22: a stream with slow chunks after its headers counted against its key."""
    clock = Clock()
    slow = AttemptOutcome(None, {}, "the answer did not complete within 5 seconds", header_status=200)
    upstream = Upstream({"openai": [slow]}, clock)
    pools = KeyPools(PoolPolicy(breaker_failures=1), clock=clock)
    pool = {"openai": [Key("default"), Key("backup")]}
    result = await run_attempts([OPENAI], pools=pools, routing=RoutingConfig(retries=1), credentials=pool.get,
                                send=upstream.send, sleep=upstream.sleep,
                                timeouts=lambda c: UpstreamTimeouts(None, 5))
    assert [(a.status, a.key_state) for a in result.attempts] == [(None, KeyState.READY), (200, KeyState.READY)]
    assert pools.has_usable("openai", pool["openai"], exclude={result.attempts[1].key_name})


def test_dashboard_log_shows_which_attempt_a_record_is() -> None:
    from tokensense.storage.models import Usage
    from tui.widgets.request_log import model_text

    assert model_text(Usage(model="gpt-4o-mini", attempt=1)).plain == "gpt-4o-mini"
    retried = model_text(Usage(model="claude-haiku-4-5", attempt=3))
    assert retried.plain == "#3 claude-haiku-4-5" and retried.spans[0].style == "bold yellow"


async def test_a_first_attempt_made_elsewhere_is_continued_from_its_outcome() -> None:
    from tokensense.gateway.attempts import MadeAttempt

    clock = Clock()
    pool = {"openai": [Key("default"), Key("backup")]}
    upstream = Upstream({}, clock)
    pools = KeyPools(clock=clock)
    # The gateway's native attempt used `default` and got a 429 (already reported): the loop goes on with `backup`.
    state = await pools.report("openai", "default", outcome_for(429), retry_after=20)
    made = MadeAttempt(Key("default"), _fail(429, "20"), state)
    result = await run_attempts([OPENAI, CLAUDE], pools=pools, routing=RoutingConfig(retries=1), credentials=pool.get,
                                send=upstream.send, timeouts=lambda c: UpstreamTimeouts(None, None),
                                discard=upstream.discard, sleep=upstream.sleep, first=made)
    assert upstream.sent == [("openai/gpt-4o-mini", "backup")] and upstream.waits == []
    assert [(a.number, a.key_name, a.status) for a in result.attempts] == [(1, "default", 429), (2, "backup", 200)]
    assert result.attempts[0].key_state is KeyState.COOLING and result.served_by == OPENAI
    # A first attempt that is not retried is the answer: nothing is sent.
    upstream.sent.clear()
    done = await run_attempts([OPENAI], pools=pools, routing=RoutingConfig(), credentials=pool.get,
                              send=upstream.send, timeouts=lambda c: UpstreamTimeouts(None, None),
                              first=MadeAttempt(Key("backup"), _fail(400), KeyState.READY))
    assert upstream.sent == [] and done.outcome.status == 400 and len(done.attempts) == 1

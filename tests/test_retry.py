"""Retry policy, fallback plans and upstream timeouts: pure functions of the config and an attempt's result."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tokensense.config import ConfigError, FileConfig, RoutingConfig, load_config
from tokensense.core.errors import GatewayError
from tokensense.gateway.retry import (
    Action,
    Candidate,
    backoff_wait,
    fallback_models,
    is_retryable,
    next_step,
    parse_fallbacks_header,
    parse_retry_after,
    plan_candidates,
    pool_policy,
    timeouts_for,
)
from tokensense.settings import Settings

CONFIG = """
[routing]
retries = 2
max_retry_wait = 10

[routing.timeouts]
openai = { first_byte = 20, total = 300 }
"gpt-4o-mini" = { first_byte = 5 }
"gpt-4o*" = { total = 60 }
anthropic = { total = 120 }

[fallbacks]
"gpt-4o-mini" = ["claude-haiku-4-5", "gemini-2.5-flash", "gpt-4o-mini"]
"""


def _config(tmp_path: Path, text: str) -> FileConfig:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(Settings(home=tmp_path, config_file=path))


def test_config_reads_routing_timeouts_and_fallbacks(tmp_path: Path) -> None:
    config = _config(tmp_path, CONFIG)
    assert (config.routing.retries, config.routing.max_retry_wait) == (2, 10)
    # A model does not fall back to itself.
    assert config.fallbacks == {"gpt-4o-mini": ["claude-haiku-4-5", "gemini-2.5-flash"]}
    defaults = FileConfig()
    assert (defaults.routing.retries, defaults.fallbacks) == (1, {})
    policy = pool_policy(config.routing)
    assert (policy.cooldown, policy.breaker_failures, policy.breaker_cooldown) == (60, 5, 30)


@pytest.mark.parametrize("text, message", [
    ("[routing]\nretries = -1", "retries"),
    ("[routing]\nretry = 2", "retry"),
    ("[routing.timeouts]\nopenai = { first_byte = 0 }", "first_byte"),
    ("[routing.timeouts]\nopenai = { connect = 3 }", "connect"),
    ('[fallbacks]\n"gpt-4o" = ["", "x"]', "cannot be empty"),
    ('[fallbacks]\n"gpt-4o" = "claude"', "fallbacks"),
])
def test_bad_routing_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, text)


def test_retryable_statuses() -> None:
    assert all(is_retryable(s) for s in (None, 429, 500, 502, 503, 504, 529))
    assert not any(is_retryable(s) for s in (200, 400, 401, 403, 404, 413, 422, 501))


def test_fallbacks_header() -> None:
    assert parse_fallbacks_header(None) == []
    assert parse_fallbacks_header(" claude-haiku-4-5, gemini/gemini-2.5-flash ,,claude-haiku-4-5") == [
        "claude-haiku-4-5", "gemini/gemini-2.5-flash"]
    with pytest.raises(GatewayError) as bad:
        parse_fallbacks_header("gpt-4o; drop table")
    assert bad.value.status == 400
    with pytest.raises(GatewayError, match="at most 5"):
        parse_fallbacks_header(",".join(f"m{i}" for i in range(6)))


def test_header_fallbacks_replace_the_configured_ones(tmp_path: Path) -> None:
    config = _config(tmp_path, CONFIG)
    assert fallback_models(config, "gpt-4o-mini", "gpt-4o-mini", None) == ["claude-haiku-4-5", "gemini-2.5-flash"]
    assert fallback_models(config, "openai/gpt-4o-mini", "gpt-4o-mini", []) == ["claude-haiku-4-5", "gemini-2.5-flash"]
    assert fallback_models(config, "gpt-4o-mini", "gpt-4o-mini", ["mistral-small"]) == ["mistral-small"]
    assert fallback_models(config, "gpt-4o", "gpt-4o", None) == []


def test_plan_skips_what_cannot_serve_and_keeps_order() -> None:
    def resolve(name: str) -> Candidate | str:
        return {
            "claude-haiku-4-5": Candidate(name, "claude-haiku-4-5", "anthropic"),
            "gemini-2.5-flash": Candidate(name, "gemini-2.5-flash", "gemini"),
            "openai/gpt-4o-mini": Candidate(name, "gpt-4o-mini", "openai"),
        }.get(name, f"{name} is not allowed for this key")

    first = Candidate("gpt-4o-mini", "gpt-4o-mini", "openai")
    plan, skipped = plan_candidates(first, ["grok-3", "claude-haiku-4-5", "openai/gpt-4o-mini", "gemini-2.5-flash"],
                                    resolve)
    assert [(c.served_by, c.fallback) for c in plan] == [
        ("openai/gpt-4o-mini", 0), ("anthropic/claude-haiku-4-5", 1), ("gemini/gemini-2.5-flash", 2)]
    assert [(s.requested, s.reason) for s in skipped] == [("grok-3", "grok-3 is not allowed for this key")]


def test_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "1.5", "retry-after-ms": "250"}) == 0.25
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after({"retry-after": "Wed, 01 Jan 2025 12:00:07 GMT"}, now=now) == 7.0
    assert parse_retry_after({"retry-after": "Wed, 01 Jan 2025 11:00:00 GMT"}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-4"}) is None
    assert parse_retry_after({}) is None


def test_backoff_doubles_with_jitter_up_to_its_ceiling() -> None:
    routing = RoutingConfig(backoff=0.5, max_backoff=4)
    rng = random.Random(7)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 4.0)]:
        waits = [backoff_wait(retry, routing, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert max(waits) - min(waits) > ceiling / 4, "jitter spreads the waits"


def test_next_step_retries_then_falls_back_then_gives_up() -> None:
    routing = RoutingConfig(retries=2, max_retry_wait=10, backoff=1, max_backoff=8)
    rng = random.Random(1)
    step = next_step(status=503, retry_after=None, retries_used=0, routing=routing, has_fallback=True,
                     other_key=False, rng=rng)
    assert step.action is Action.RETRY and 0.5 <= step.wait <= 1
    step = next_step(status=None, retry_after=None, retries_used=1, routing=routing, has_fallback=True,
                     other_key=False, rng=rng)
    assert step.action is Action.RETRY and 1 <= step.wait <= 2
    step = next_step(status=529, retry_after=None, retries_used=2, routing=routing, has_fallback=True, other_key=False)
    assert step.action is Action.FALLBACK and "retries used up" in step.reason
    step = next_step(status=529, retry_after=None, retries_used=2, routing=routing, has_fallback=False, other_key=False)
    assert step.action is Action.GIVE_UP


def test_next_step_honours_retry_after_up_to_max_retry_wait() -> None:
    routing = RoutingConfig(retries=1, max_retry_wait=10)
    step = next_step(status=429, retry_after=3, retries_used=0, routing=routing, has_fallback=True, other_key=False)
    assert (step.action, step.wait) == (Action.RETRY, 3)
    step = next_step(status=429, retry_after=30, retries_used=0, routing=routing, has_fallback=True, other_key=False)
    assert step.action is Action.FALLBACK and "over max_retry_wait" in step.reason
    # Another key of the pool is usable: retry on it at once.
    step = next_step(status=429, retry_after=30, retries_used=0, routing=routing, has_fallback=True, other_key=True)
    assert (step.action, step.wait) == (Action.RETRY, 0)


def test_next_step_for_refused_keys_client_errors_and_started_answers() -> None:
    routing = RoutingConfig(retries=0)
    step = next_step(status=401, retry_after=None, retries_used=0, routing=routing, has_fallback=True, other_key=True)
    assert (step.action, step.uses_retry) == (Action.RETRY, False)
    step = next_step(status=403, retry_after=None, retries_used=0, routing=routing, has_fallback=True, other_key=False)
    assert step.action is Action.FALLBACK
    for status in (400, 404, 422):
        step = next_step(status=status, retry_after=None, retries_used=0, routing=RoutingConfig(retries=3),
                         has_fallback=True, other_key=True)
        assert step.action is Action.GIVE_UP
    step = next_step(status=503, retry_after=None, retries_used=0, routing=RoutingConfig(retries=3),
                     has_fallback=True, other_key=True, first_byte_sent=True)
    assert step.action is Action.GIVE_UP


def test_timeouts_model_over_pattern_over_provider_over_default(tmp_path: Path) -> None:
    routing = _config(tmp_path, CONFIG).routing
    t = timeouts_for(routing, "openai", "gpt-4o-mini", default_first_byte=600)
    assert (t.first_byte, t.total) == (5, 60)  # first byte from the model, total from the pattern
    t = timeouts_for(routing, "openai", "gpt-4.1", default_first_byte=600)
    assert (t.first_byte, t.total) == (20, 300)
    t = timeouts_for(routing, "anthropic", "claude-haiku-4-5", default_first_byte=600)
    assert (t.first_byte, t.total) == (120, 120)  # the first byte cannot come after the end
    t = timeouts_for(routing, "gemini", "gemini-2.5-flash", default_first_byte=600)
    assert (t.first_byte, t.total) == (600, None)
    assert timeouts_for(routing, "gemini", "gemini-2.5-flash", default_first_byte=0).first_byte is None

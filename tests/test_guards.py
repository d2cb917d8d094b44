"""The runaway guards on their own (issue 26): the cost cap and the loop guard in the one police function."""

from __future__ import annotations

import pytest
from keyinfo import key_info
from mitmproxy.http import Headers

from tokensense.config import FileConfig, GuardsConfig
from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.gateway.call import CallContext
from tokensense.gateway.guards import LoopAlert, LoopGuard, body_hash, call_cap, take_max_cost_header
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.limits import MemoryCounters
from tokensense.gateway.stages.police import Refused, Target, _largest_cost, police
from tokensense.metering.pricing import PriceBook
from tokensense.observability.alerts import alert_payload
from tokensense.providers import PROVIDERS
from tokensense.providers.openai import OPENAI_ERRORS

PRICES = PriceBook()
OPENAI = PROVIDERS["openai"]


_key = key_info


def _call(key: KeyInfo, *, cap: float | None = None, execution: str | None = None) -> CallContext:
    call = CallContext(Endpoint.CHAT, OPENAI_ERRORS)
    call.key = key
    call.max_cost_usd = cap
    call.attribution = {"execution_id": execution}
    return call


def _never_spent(key_id: str, since: object) -> float:
    return 0.0


async def _police(call: CallContext, target: Target, **kw: object):
    return await police(call, target, prices=PRICES, counters=MemoryCounters(), spent_since=_never_spent,
                        **kw)  # type: ignore[arg-type]


def _target(model: str = "gpt-4o", max_tokens: int = 1000, content: str = "hi") -> Target:
    return Target(OPENAI, model, model, {"model": model, "max_tokens": max_tokens,
                                         "messages": [{"role": "user", "content": content}]})


# -- the cost cap -----------------------------------------------------------------------------------


async def test_the_cap_is_checked_against_the_budget_reservation() -> None:
    target = _target("gpt-4o", 1000)
    largest = _largest_cost(_call(_key()), target, PRICES)
    assert 0.009 < largest < 0.011  # 1,000 output tokens of gpt-4o at $10/M, and the prompt
    with pytest.raises(Refused) as e:
        await _police(_call(_key(), cap=0.005), target)
    assert e.value.error.status == 402 and e.value.error.code == "max_cost_exceeded"
    assert f"${largest:.6f}" in e.value.reason and "$0.005" in e.value.reason
    assert (await _police(_call(_key(), cap=0.02), target)).passed
    # The same amount is what a budget reserves.
    held = await _police(_call(_key(budget_usd=10.0), cap=0.02), target)
    assert held.budget is not None and held.budget.amount == pytest.approx(largest)


async def test_the_key_cap_and_the_smaller_of_both_apply() -> None:
    target = _target("gpt-4o", 1000)
    with pytest.raises(Refused):
        await _police(_call(_key(max_call_usd=0.005)), target)
    with pytest.raises(Refused):
        await _police(_call(_key(max_call_usd=0.005), cap=1.0), target)
    with pytest.raises(Refused):
        await _police(_call(_key(max_call_usd=1.0), cap=0.005), target)
    assert (await _police(_call(_key(max_call_usd=1.0), cap=0.5), target)).passed
    assert call_cap(None, None) is None and call_cap(0.2, None) == 0.2 and call_cap(0.2, 0.1) == 0.1


async def test_a_fallback_over_the_cap_is_refused_and_an_unpriced_model_cannot_be_bounded() -> None:
    with pytest.raises(Refused) as e:  # a fallback (count_request False) is policed the same
        await _police(_call(_key(), cap=0.005), _target("gpt-4o", 1000), count_request=False)
    assert e.value.error.code == "max_cost_exceeded"
    unpriced = Target(OPENAI, "gpt-nonexistent-9", "openai/gpt-nonexistent-9",
                      {"model": "gpt-nonexistent-9", "max_tokens": 1, "messages": []})
    with pytest.raises(Refused) as e:
        await _police(_call(_key(), cap=100.0), unpriced)
    assert e.value.error.status == 402 and "cannot be bounded" in e.value.reason
    assert "openai/gpt-nonexistent-9" in e.value.reason
    assert (await _police(_call(_key()), unpriced)).passed  # no cap: served as before


def test_the_header_is_taken_off_and_checked() -> None:
    headers = Headers(**{"x-tokensense-max-cost-usd": "0.05", "x-other": "1"})
    assert take_max_cost_header(headers) == 0.05 and "x-tokensense-max-cost-usd" not in headers
    assert take_max_cost_header(Headers(other="1")) is None
    for bad in ("", "abc", "0", "-0.1", "nan", "inf", "1e400"):
        with pytest.raises(GatewayError) as e:
            take_max_cost_header(Headers(**{"x-tokensense-max-cost-usd": bad}))
        assert e.value.status == 400 and e.value.code == "invalid_max_cost"


# -- the loop guard ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_loop_guard_refuses_the_fourth_identical_body_of_an_execution_and_alerts_once() -> None:
    clock, alerts = Clock(), []
    guard = LoopGuard(repeat_limit=3, repeat_window_s=60, on_alert=alerts.append, clock=clock)
    target = _target("gpt-4o-mini", 10)
    for _ in range(3):
        assert (await _police(_call(_key(), execution="run-1"), target, guard=guard)).passed
    for _ in range(3):
        with pytest.raises(Refused) as e:
            await _police(_call(_key(), execution="run-1"), target, guard=guard)
        assert e.value.error.status == 429 and e.value.error.code == "loop_detected"
    assert len(alerts) == 1 and isinstance(alerts[0], LoopAlert) and alerts[0].reason == "repeat"
    assert alert_payload(alerts[0])["event"] == "tokensense.guard.loop_detected"
    assert "run-1" in alert_payload(alerts[0], "slack")["text"]
    # Another execution, another body, no execution id, a fallback (count_request False): not refused.
    assert (await _police(_call(_key(), execution="run-2"), target, guard=guard)).passed
    assert (await _police(_call(_key(), execution="run-1"), _target("gpt-4o-mini", 10, "other"), guard=guard)).passed
    for _ in range(5):
        assert (await _police(_call(_key()), target, guard=guard)).passed
        assert (await _police(_call(_key(), execution="run-1"), target, guard=guard, count_request=False)).passed
    # Once the window has passed the body may be sent again; a new window alerts again.
    clock.now += 61
    assert (await _police(_call(_key(), execution="run-1"), target, guard=guard)).passed


def test_the_body_hash_ignores_key_order() -> None:
    assert body_hash({"a": 1, "b": {"c": 2, "d": [1, 2]}}) == body_hash({"b": {"d": [1, 2], "c": 2}, "a": 1})
    assert body_hash({"a": 1}) != body_hash({"a": 2})


async def test_max_calls_per_execution() -> None:
    alerts: list[LoopAlert] = []
    guard = LoopGuard(repeat_limit=None, max_calls_per_execution=2, on_alert=alerts.append, clock=Clock())
    for i in range(2):
        assert (await _police(_call(_key(), execution="run"), _target(content=str(i)), guard=guard)).passed
    for i in range(2):
        with pytest.raises(Refused) as e:
            await _police(_call(_key(), execution="run"), _target(content=f"x{i}"), guard=guard)
        assert e.value.error.code == "loop_detected" and "2 calls" in e.value.reason
    assert [a.reason for a in alerts] == ["max_calls"]
    # The count is per key: another key's execution of the same name is its own.
    assert (await _police(_call(_key(id="k2"), execution="run"), _target(), guard=guard)).passed


def test_guards_config() -> None:
    assert FileConfig().guards == GuardsConfig(repeat_limit=None, repeat_window_s=60.0, max_calls_per_execution=None)
    config = FileConfig.model_validate({"guards": {"repeat_limit": 3, "max_calls_per_execution": 50}})
    assert config.guards.repeat_limit == 3 and config.guards.repeat_window_s == 60.0
    with pytest.raises(ValueError):
        FileConfig.model_validate({"guards": {"repeat_limit": 0}})
    with pytest.raises(ValueError):
        FileConfig.model_validate({"guards": {"repeat_limits": 3}})

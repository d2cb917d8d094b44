"""Police stage: the one function that decides whether an attempt may go upstream (access, price, rate, budget).

Every path that sends anything to a provider calls `police`: the first attempt
(addons/policy.py), each fallback of a call (gateway/reliability.py), Responses
and media calls (their parse hands the same values on) and intercepted calls of
a key. It runs on parsed values only, before anything is sent, and either
returns a `Policed` (what the call holds in the counters, settled with its
record) or raises `Refused` (the answer to give; nothing goes upstream).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from tokensense.core.errors import GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.gateway.call import CallContext
from tokensense.gateway.guards import LoopGuard, call_cap, max_cost_refusal
from tokensense.gateway.limits import BudgetDecision, CounterStore, RateDecision, budget_decision
from tokensense.gateway.passthrough import capped_path_refusal, endpoint_refusal, unpriced_path_refusal
from tokensense.gateway.policy import budget_window, check_access, estimate_cost, estimate_usage, limits_for
from tokensense.gateway.price_policy import unpriced_refusal
from tokensense.gateway.reservation import budget_refusal, call_reservation
from tokensense.gateway.routing import MEDIA_ENDPOINTS
from tokensense.gateway.typical_output import OutputHistory, admission
from tokensense.metering.pricing import PriceBook
from tokensense.providers import ProviderAdapter

log = logging.getLogger(__name__)

LIMITS_UNAVAILABLE = "TokenSense cannot check this key's limits right now; retry shortly."


@dataclass(frozen=True, slots=True)
class Target:
    """What one attempt would run: the provider and model (as priced), the name the client used, the body sent."""

    provider: ProviderAdapter
    model: str
    requested: str | None = None
    body: dict[str, Any] | None = None  # the JSON body as it goes upstream (None: not JSON, e.g. a form upload)
    # The attempt's largest usage when the body cannot say it (a realtime response: its prompt is the
    # session's, its output may be audio); None: read from the body.
    reservation: TokenUsage | None = None


@dataclass(frozen=True, slots=True)
class BudgetHold:
    """Budget reserved in the counters for an attempt in flight: `amount` in `window`, settled by its record."""

    window: str
    amount: float


@dataclass(frozen=True, slots=True)
class Policed:
    """The police stage's value: the target it passed and what the attempt holds in the counters."""

    target: Target
    passed: bool = True  # False: refused, but it still holds a rate entry to settle (see `Refused.held`)
    rate: RateDecision | None = None  # the rate decision (for the x-ratelimit-* headers); None: no rate limit
    holds_rate: bool = False  # a rate-window entry of this request id is to be settled with its tokens
    budget: BudgetHold | None = None


class Refused(Exception):
    """The police stage refused an attempt: the error to answer, its extra headers, and what it holds."""

    def __init__(self, error: GatewayError, *, headers: dict[str, str] | None = None, held: Policed | None = None,
                 budget: BudgetDecision | None = None, amount: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.headers = headers or {}
        self.held = held  # counters the refused call holds anyway (its rate entry), settled with its record
        self.budget = budget  # the budget decision, when the budget refused it
        self.amount = amount  # the reservation the budget refused

    @property
    def reason(self) -> str:
        """A short why, for the log of a skipped fallback."""
        return self.error.message


async def police(call: CallContext, target: Target, *, prices: PriceBook, counters: CounterStore | None,
                 spent_since: Callable[[str, datetime | None], float], count_request: bool = True,
                 guard: LoopGuard | None = None, typical: OutputHistory | None = None) -> Policed:
    """Check `target` for `call`'s key and reserve what it may cost; `Refused` if it may not go.

    `count_request`: the attempt counts against the key's requests and tokens per
    minute and the loop guard's counts of its execution (the call's first attempt;
    a retry or fallback of the same call does not).
    Each attempt reserves its own budget: its largest cost at its own model's price,
    which is also what its cost cap (header or key) is checked against.
    `typical`: the outputs seen per model with `[budgets] reserve = "typical"` (None: "cap"); the attempt
    still holds its largest cost, but is admitted on its typical cost (gateway/typical_output.py).
    """
    key = call.key
    if key is None:
        raise Refused(GatewayError(401, "No TokenSense key.", code="missing_api_key"))
    check = _checked(call, target, prices)
    if check is not None:
        raise Refused(check)
    body = target.body
    media = call.route_endpoint in MEDIA_ENDPOINTS or (call.media_priced and call.reserve_usd is None)
    cap = None if call.free or media else call_cap(call.max_cost_usd, key.max_call_usd)
    largest: float | None = None
    if cap is not None and call.reserve_usd is not None:  # a job priced by the media table: its expected cost
        largest = call.reserve_usd
        if largest > cap:
            raise Refused(max_cost_refusal(largest, cap, target.requested or target.model), amount=largest)
    elif cap is not None:
        largest = _largest_cost(call, target, prices)
        if prices.resolve(target.provider.prices_id, target.model) is None:
            raise Refused(max_cost_refusal(None, cap, target.requested or target.model), amount=largest)
        if largest > cap:
            raise Refused(max_cost_refusal(largest, cap, target.requested or target.model), amount=largest)
    if count_request and guard is not None and guard.active:
        loop = await guard.admit(key.id, key.name, call.attribution.get("execution_id"), body)
        if loop is not None:
            raise Refused(loop)
    limits = limits_for(key)
    counts_rate = count_request and (limits.rpm is not None or limits.tpm is not None)
    counts_budget = key.budget_usd is not None and not call.free  # a free call (count_tokens) spends nothing
    policed = Policed(target)
    if not counts_rate and not counts_budget:
        return policed
    if counters is None:
        raise Refused(GatewayError(503, LIMITS_UNAVAILABLE, code="limits_unavailable"))
    estimate = estimate_usage(body) if isinstance(body, dict) else TokenUsage()
    if counts_rate:
        tokens = estimate.input_tokens + estimate.output_tokens
        try:
            decision = await counters.acquire_rate(key.id, call.request_id, limits.rpm, limits.tpm, tokens)
        except Exception as e:  # counters unavailable: refuse rather than serve unchecked
            log.warning("rate-limit counters unavailable, refusing: %s", type(e).__name__)
            raise Refused(GatewayError(503, LIMITS_UNAVAILABLE, code="limits_unavailable")) from None
        if not decision.allowed:
            limit = f"{decision.rpm} requests" if decision.limited_by == "requests" else f"{decision.tpm} tokens"
            raise Refused(GatewayError(
                429, f"The key `{key.name}` reached its limit of {limit} per minute; "
                f"retry after {decision.retry_after:.1f}s.", code="rate_limit_exceeded"),
                headers=decision.headers(), held=replace(policed, passed=False, rate=decision))
        policed = replace(policed, rate=decision, holds_rate=True)
    if counts_budget:
        assert key.budget_usd is not None
        window, start, resets_in = budget_window(key.budget_period)
        amount = largest if largest is not None else _largest_cost(call, target, prices)
        admit_on, slack = admission(amount, _typical_cost(call, target, prices, typical))
        held = replace(policed, passed=False)
        try:
            budget = await counters.reserve_budget(key.id, window, key.budget_usd + slack, amount,
                                                   lambda: spent_since(key.id, start), (resets_in or 0) + 3600)
        except Exception as e:
            log.warning("budget counters unavailable, refusing: %s", type(e).__name__)
            raise Refused(GatewayError(503, LIMITS_UNAVAILABLE, code="limits_unavailable"), held=held) from None
        if not budget.allowed:  # 429 while held by calls in flight, 402 once spent
            if slack:  # why, against the budget itself
                budget = budget_decision(key.budget_usd, budget.spent, budget.reserved, admit_on)
            error, headers = budget_refusal(key.name, key.budget_usd, key.budget_period, budget)
            raise Refused(error, headers=headers, held=held, budget=budget, amount=amount)
        policed = replace(policed, budget=BudgetHold(window, amount))
    return policed


def _largest_cost(call: CallContext, target: Target, prices: PriceBook) -> float:
    """The largest cost the attempt can have (its budget reservation): its output cap as sent upstream,
    else the model's maximum, at the target model's price."""
    if call.reserve_usd is not None:  # a job priced by the media table: what it will book if it completes
        return call.reserve_usd
    body = target.body
    priced = call if call.model == target.model else replace(call, provider=target.provider, model=target.model)
    if target.reservation is not None:
        reservation = target.reservation
    else:
        reservation = call_reservation(priced, body) if isinstance(body, dict) else TokenUsage()
    return estimate_cost(prices, target.provider, target.model, reservation)


def _typical_cost(call: CallContext, target: Target, prices: PriceBook,
                  typical: OutputHistory | None) -> float | None:
    """The attempt's cost at its model's typical output (`reserve = "typical"`); None: only its largest applies
    (cap mode, a model with too few outputs seen, a body that is not JSON, media priced per unit)."""
    body = target.body
    if typical is None or not isinstance(body, dict) or call.route_endpoint in MEDIA_ENDPOINTS:
        return None
    tokens = typical.typical(target.provider.name, target.model)
    if tokens is None:
        return None
    priced = call if call.model == target.model else replace(call, provider=target.provider, model=target.model)
    return estimate_cost(prices, target.provider, target.model, call_reservation(priced, body, tokens))


def _checked(call: CallContext, target: Target, prices: PriceBook) -> GatewayError | None:
    """The refusal that needs no counter: access (403) and, for a key with a budget, an unpriced model (403)."""
    assert call.key is not None
    route = call.route
    if route is not None and route.prefix is not None and target.provider.name != route.prefix:
        return GatewayError(400, f"The model `{target.requested or target.model}` is served by "
                            f"{target.provider.display_name}, not by the provider of the prefix /{route.prefix}/: "
                            "call it without the prefix or under its own.", code="provider_mismatch", param="model")
    if (refused := endpoint_refusal(call.key, call.route_endpoint)) is not None:
        return refused
    if route is not None and route.passthrough is not None:  # a path no route serves, passed through
        try:
            check_access(call.key, target.provider, target.model, target.requested, model_named=bool(target.model))
        except GatewayError as e:
            return e
        if call.free:
            return None
        cap = call_cap(call.max_cost_usd, call.key.max_call_usd)
        if cap is not None and (route.passthrough.kind == "unpriced" or not target.model):
            return capped_path_refusal(cap, call.method, route.passthrough)
        return unpriced_path_refusal(call.key, call.method, route.passthrough)
    try:
        check_access(call.key, target.provider, target.model, target.requested)
    except GatewayError as e:
        return e
    if call.route_endpoint in MEDIA_ENDPOINTS or call.media_priced or call.free:  # media: priced by the media table
        return None
    return unpriced_refusal(call.key, prices, target.provider, target.model, target.requested)


# --- settling what the police stage reserved ------------------------------------------------------

_TASKS: set[asyncio.Task] = set()


def spawn(coro: Any) -> None:
    """Run a counter update in the background (the client's answer does not wait for it)."""
    task = asyncio.get_running_loop().create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(_done)


def _done(task: asyncio.Task) -> None:
    _TASKS.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("settling counters failed: %s", type(task.exception()).__name__)


async def drain() -> None:
    """Wait (up to 5 s) for the counter updates in flight (shutdown)."""
    if _TASKS:
        await asyncio.wait(list(_TASKS), timeout=5)


def settle_counters(counters: CounterStore | None, call: CallContext, policed: Policed | None, *,
                    tokens: int, cost: float | None) -> None:
    """Settle what `policed` holds with what the attempt used: its tokens in the rate window, its cost in the budget."""
    key = call.key
    if counters is None or key is None or policed is None:
        return
    if policed.holds_rate:
        spawn(counters.settle_tokens(key.id, call.request_id, tokens))
    if policed.budget is not None:
        spawn(counters.settle_budget(key.id, policed.budget.window, policed.budget.amount, cost or 0.0))


def release(counters: CounterStore | None, call: CallContext, policed: Policed) -> None:
    """Give back a budget reservation whose attempt's cost is booked elsewhere (a fallback that was not the answer)."""
    key = call.key
    if counters is not None and key is not None and policed.budget is not None:
        spawn(counters.settle_budget(key.id, policed.budget.window, policed.budget.amount, 0.0))

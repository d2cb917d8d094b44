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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any

from tokensense.core.errors import GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.gateway.budgets import AppliedBudget, BudgetBook, budgets_for
from tokensense.gateway.call import CallContext
from tokensense.gateway.guards import LoopGuard, call_cap, max_cost_refusal
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.limits import (
    BudgetAsk,
    BudgetDecision,
    CounterStore,
    MemoryCounters,
    RateDecision,
    budget_decision,
)
from tokensense.gateway.passthrough import capped_path_refusal, endpoint_refusal, unpriced_path_refusal
from tokensense.gateway.policy import budget_window, check_access, estimate_cost, estimate_usage, limits_for
from tokensense.gateway.price_policy import unpriced_refusal
from tokensense.gateway.reservation import call_reservation
from tokensense.gateway.routing import MEDIA_ENDPOINTS
from tokensense.gateway.typical_output import OutputHistory, admission
from tokensense.metering.pricing import PriceBook
from tokensense.providers import ProviderAdapter
from tokensense.storage.budgets import period_window

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
    """Budget reserved in the counters for an attempt in flight: `amount` in `window` of the counter `counter`
    (a key's id, or a budget on attribution's), settled by its record. `tag` names the budget (`level:name`)."""

    window: str
    amount: float
    counter: str = ""
    tag: str = ""


@dataclass(frozen=True, slots=True)
class Policed:
    """The police stage's value: the target it passed and what the attempt holds in the counters."""

    target: Target
    passed: bool = True  # False: refused, but it still holds a rate entry to settle (see `Refused.held`)
    rate: RateDecision | None = None  # the rate decision (for the x-ratelimit-* headers); None: no rate limit
    holds_rate: bool = False  # a rate-window entry of this request id is to be settled with its tokens
    budgets: tuple[BudgetHold, ...] = ()  # every budget the attempt is counted against (key's first)

    @property
    def budget(self) -> BudgetHold | None:
        """The first budget held (the key's, when it has one)."""
        return self.budgets[0] if self.budgets else None

    @property
    def budget_tags(self) -> list[str]:
        """The budgets the attempt is counted against, as `level:name` (its record's details.budgets)."""
        return [hold.tag for hold in self.budgets]


class Refused(Exception):
    """The police stage refused an attempt: the error to answer, its extra headers, and what it holds."""

    def __init__(self, error: GatewayError, *, headers: dict[str, str] | None = None, held: Policed | None = None,
                 budget: BudgetDecision | None = None, amount: float | None = None,
                 limit: AppliedBudget | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.headers = headers or {}
        self.held = held  # counters the refused call holds anyway (its rate entry), settled with its record
        self.budget = budget  # the budget decision, when the budget refused it
        self.amount = amount  # the reservation the budget refused
        self.limit = limit  # the budget that refused it

    @property
    def reason(self) -> str:
        """A short why, for the log of a skipped fallback."""
        return self.error.message


async def police(call: CallContext, target: Target, *, prices: PriceBook, counters: CounterStore | None,
                 spent_since: Callable[[str, datetime | None], float], count_request: bool = True,
                 guard: LoopGuard | None = None, typical: OutputHistory | None = None,
                 budgets: BudgetBook | None = None) -> Policed:
    """Check `target` for `call`'s key and reserve what it may cost; `Refused` if it may not go.

    `count_request`: the attempt counts against the key's requests and tokens per
    minute and the loop guard's counts of its execution (the call's first attempt;
    a retry or fallback of the same call does not).
    Each attempt reserves its own budget: its largest cost at its own model's price,
    which is also what its cost cap (header or key) is checked against, in every
    budget that applies (the key's, and those of `budgets` on its project, workflow,
    source and execution), or in none: the first that cannot hold it refuses the call.
    `typical`: the outputs seen per model with `[budgets] reserve = "typical"` (None: "cap"); the attempt
    still holds its largest cost, but is admitted on its typical cost (gateway/typical_output.py).
    """
    key = call.key
    if key is None:
        raise Refused(GatewayError(401, "No TokenSense key.", code="missing_api_key"))
    applied = [] if call.free else budgets_for(key, call.attribution, budgets)  # a free call spends nothing
    others = [budget.label for budget in applied if budget.level != "key"]
    check = _checked(call, target, prices, others[0] if others else None)
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
    counts_budget = bool(applied)
    policed = Policed(target)
    if not counts_rate and not counts_budget:
        return policed
    if counters is None:
        raise Refused(GatewayError(503, LIMITS_UNAVAILABLE, code="limits_unavailable"))
    estimate = estimate_usage(body) if isinstance(body, dict) else TokenUsage()
    if counts_rate:
        tokens = estimate.input_tokens + estimate.output_tokens
        policed = await _acquire_rate(counters, call, key, tokens, policed)
    if counts_budget:
        amount = largest if largest is not None else _largest_cost(call, target, prices)
        admit_on, slack = admission(amount, _typical_cost(call, target, prices, typical))
        policed = replace(policed, budgets=await _reserve(counters, applied, amount, admit_on, slack, spent_since,
                                                          replace(policed, passed=False)))
    return policed


async def _acquire_rate(counters: CounterStore, call: CallContext, key: KeyInfo, tokens: int,
                        policed: Policed) -> Policed:
    """Count the attempt (`tokens` of it) in the key's requests and tokens per minute: `policed` holding its
    rate entry, or `Refused` (429 past a limit, 503 when the counters cannot be reached)."""
    limits = limits_for(key)
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
    return replace(policed, rate=decision, holds_rate=True)


async def police_unnamed(call: CallContext, provider: ProviderAdapter, *, counters: CounterStore | None,
                         spent_since: Callable[[str, datetime | None], float],
                         budgets: BudgetBook | None = None) -> Policed:
    """Police an attempt whose model is not known yet (a realtime handshake whose protocol names the model in a
    later frame): the key's access to `provider` and to the endpoint, the rate (one request), and whether a budget
    that applies is spent or held whole by calls in flight. It reserves nothing (what needs the model is asked
    when the model is known); `Refused` as `police`."""
    key = call.key
    if key is None:
        raise Refused(GatewayError(401, "No TokenSense key.", code="missing_api_key"))
    if (refused := endpoint_refusal(key, call.route_endpoint)) is not None:
        raise Refused(refused)
    try:
        check_access(key, provider, "", model_named=False)
    except GatewayError as e:
        raise Refused(e) from None
    policed = Policed(Target(provider, ""))
    limits = limits_for(key)
    counts_rate = limits.rpm is not None or limits.tpm is not None
    applied = budgets_for(key, call.attribution, budgets)
    if not counts_rate and not applied:
        return policed
    if counters is None:
        raise Refused(GatewayError(503, LIMITS_UNAVAILABLE, code="limits_unavailable"))
    if counts_rate:
        policed = await _acquire_rate(counters, call, key, 0, policed)
    if applied:
        policed = replace(policed, budgets=await _reserve(counters, applied, 0.0, 0.0, 0.0, spent_since,
                                                          replace(policed, passed=False)))
    return policed


async def _reserve(counters: CounterStore, applied: list[AppliedBudget], amount: float, admit_on: float,
                   slack: float, spent_since: Callable[[str, datetime | None], float],
                   held: Policed) -> tuple[BudgetHold, ...]:
    """Reserve `amount` in every budget of `applied`, or in none (`Refused`, naming the first budget that refused).
    Admitted on `admit_on` (`[budgets] reserve = "typical"`: each budget is asked with `slack` more room).

    The budgets are asked at once (with Redis: one round trip's wait, not one per budget); when one refuses, the
    reservations the others made are given back.
    """
    windows = [_window(b) for b in applied]
    reserve_all = getattr(counters, "reserve_all", None)
    if len(applied) > 1 and reserve_all is not None:  # Redis: one atomic script for all of them
        return await _reserve_all(reserve_all, applied, windows, amount, admit_on, slack, spent_since, held)
    asks = [counters.reserve_budget(budget.counter, window, budget.usd + slack, amount,
                                    partial(spent_since, budget.subject, start), (resets_in or 0) + 3600)
            for budget, (window, start, resets_in) in zip(applied, windows, strict=True)]
    answers: list[BudgetDecision | BaseException]
    if len(asks) > 1 and not isinstance(counters, MemoryCounters):
        answers = await asyncio.gather(*asks, return_exceptions=True)
    else:  # in-process decisions do not wait (but to seed a window): one after the other costs less
        answers = []
        for ask in asks:
            try:
                answers.append(await ask)
            except Exception as e:
                answers.append(e)
    holds = [BudgetHold(window, amount, budget.counter, budget.tag)
             for budget, (window, _, _), answer in zip(applied, windows, answers, strict=True)
             if isinstance(answer, BudgetDecision) and answer.allowed]
    if len(holds) == len(applied):
        return tuple(holds)
    await _give_back(counters, holds)
    for answer in answers:
        if isinstance(answer, BaseException):
            log.warning("budget counters unavailable, refusing: %s", type(answer).__name__)
            raise Refused(GatewayError(503, LIMITS_UNAVAILABLE, code="limits_unavailable"), held=held) from None
    for budget, answer in zip(applied, answers, strict=True):
        assert isinstance(answer, BudgetDecision)
        if not answer.allowed:  # 429 while held by calls in flight, 402 once spent
            if slack:  # why, against the budget itself
                answer = budget_decision(budget.usd, answer.spent, answer.reserved, admit_on)
            error, headers = budget.refusal(answer)
            raise Refused(error, headers=headers, held=held, budget=answer, amount=amount, limit=budget)
    raise AssertionError("a budget refused without a decision")


def _window(budget: AppliedBudget, at: datetime | None = None) -> tuple[str, datetime | None, float | None]:
    """The window of `budget` at `at` (None: now): a key's as keys name theirs, the others' by their period."""
    return budget_window(budget.period, at) if budget.level == "key" else period_window(budget.period, at)


async def _reserve_all(reserve_all: Callable[..., Any], applied: list[AppliedBudget],
                       windows: list[tuple[str, datetime | None, float | None]], amount: float, admit_on: float,
                       slack: float, spent_since: Callable[[str, datetime | None], float],
                       held: Policed) -> tuple[BudgetHold, ...]:
    """`_reserve` with a store that reserves in every budget or in none at once (`ResilientCounters.reserve_all`:
    with Redis, one atomic script, one round trip)."""
    asks = [BudgetAsk(budget.counter, window, budget.usd + slack, partial(spent_since, budget.subject, start),
                      (resets_in or 0) + 3600)
            for budget, (window, start, resets_in) in zip(applied, windows, strict=True)]
    try:
        answers: list[BudgetDecision] = await reserve_all(asks, amount)
    except Exception as e:
        log.warning("budget counters unavailable, refusing: %s", type(e).__name__)
        raise Refused(GatewayError(503, LIMITS_UNAVAILABLE, code="limits_unavailable"), held=held) from None
    if len(answers) == len(applied) and all(answer.allowed for answer in answers):
        return tuple(BudgetHold(window, amount, budget.counter, budget.tag)
                     for budget, (window, _, _) in zip(applied, windows, strict=True))
    for budget, answer in zip(applied, answers, strict=False):
        if not answer.allowed:  # 429 while held by calls in flight, 402 once spent
            if slack:
                answer = budget_decision(budget.usd, answer.spent, answer.reserved, admit_on)
            error, headers = budget.refusal(answer)
            raise Refused(error, headers=headers, held=held, budget=answer, amount=amount, limit=budget)
    raise AssertionError("a budget refused without a decision")


async def _give_back(counters: CounterStore, holds: list[BudgetHold]) -> None:
    """Release the reservations of a call another budget refused."""
    for hold in holds:
        try:
            await counters.settle_budget(hold.counter, hold.window, hold.amount, 0.0)
        except Exception as e:  # a counter that cannot be reached: its reservation expires with the window
            log.warning("could not release a budget reservation: %s", type(e).__name__)


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


def _checked(call: CallContext, target: Target, prices: PriceBook, budget: str | None) -> GatewayError | None:
    """The refusal that needs no counter: access (403) and, for a key with a budget or a call counted against
    `budget` (a budget on its attribution), an unpriced model or path (403)."""
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
        return unpriced_path_refusal(call.key, call.method, route.passthrough, budget=budget)
    try:
        check_access(call.key, target.provider, target.model, target.requested)
    except GatewayError as e:
        return e
    if call.route_endpoint in MEDIA_ENDPOINTS or call.media_priced or call.free:  # media: priced by the media table
        return None
    return unpriced_refusal(call.key, prices, target.provider, target.model, target.requested, budget=budget)


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
    for hold in policed.budgets:
        spawn(counters.settle_budget(hold.counter, hold.window, hold.amount, cost or 0.0))


def release(counters: CounterStore | None, call: CallContext, policed: Policed) -> None:
    """Give back a budget reservation whose attempt's cost is booked elsewhere (a fallback that was not the answer)."""
    if counters is not None and call.key is not None:
        for hold in policed.budgets:
            spawn(counters.settle_budget(hold.counter, hold.window, hold.amount, 0.0))


def spend_holds(key: KeyInfo | None, attribution: Mapping[str, str | None], book: BudgetBook | None, *,
                at: datetime | None = None) -> tuple[BudgetHold, ...]:
    """Every budget a record of `key` (None: its attribution's only) with `attribution` counts in, each in its
    window at `at` (None: now), holding nothing: where spend booked apart from a call's own settle goes (a video
    job, a response the provider started by itself, a batch job's lines), so that every budget sees it at once."""
    applied = budgets_for(key, attribution, book) if key is not None else (book.applicable(attribution) if book else [])
    return tuple(BudgetHold(_window(budget, at)[0], 0.0, budget.counter, budget.tag) for budget in applied)


async def add_spend(counters: CounterStore, holds: Iterable[BudgetHold], cost: float) -> None:
    """Add `cost` as spent to the budgets `holds` (each of its counter and window), awaited (a thread's booking)."""
    for hold in holds:
        await counters.settle_budget(hold.counter, hold.window, 0.0, cost)


def book_spend(counters: CounterStore | None, holds: Policed | Iterable[BudgetHold] | None, cost: float | None) -> None:
    """Add `cost` to every budget of `holds` (a call's, `Policed`: of an attempt whose reservation was released
    already, a failed attempt a retry or fallback followed, billed all the same; else `spend_holds`)."""
    if counters is None or holds is None or not cost:
        return
    budgets = holds.budgets if isinstance(holds, Policed) else tuple(holds)
    for hold in budgets:
        spawn(counters.settle_budget(hold.counter, hold.window, 0.0, cost))

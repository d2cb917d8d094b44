"""The budgets that apply to a call: its key's, and those on its project, workflow, source and execution.

`BudgetBook` keeps the budgets on attribution in memory (config.toml's `[[budgets]]`
and the `budgets` table, reloaded by a thread of its own when the table changes, so
`tokensense budgets set` reaches a running gateway within `refresh_interval` seconds).
`applicable` answers, without I/O, the list of `AppliedBudget`s the police stage
reserves in (tokensense/gateway/stages/police.py): one counter each, keyed by the
budget's subject and period, seeded from the subject's settled spend.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session

from tokensense.core.errors import GatewayError
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.limits import BudgetDecision
from tokensense.gateway.reservation import BUDGET_RETRY_AFTER_SECONDS, budget_refusal
from tokensense.storage.budgets import (
    BudgetLimit,
    budgets_fingerprint,
    configured_limits,
    counter_id,
    limit_subject,
    stored_limits,
)

log = logging.getLogger(__name__)

_PERIOD_WORDS = {"day": "per day", "daily": "per day", "week": "per week", "month": "per month", "monthly": "per month"}


@dataclass(frozen=True, slots=True)
class AppliedBudget:
    """One budget a call is counted against: what to call it, its limit, and its counter."""

    level: str  # key | project | workflow | source | execution
    name: str | None  # the key's, project's, workflow's or source's name; an execution's id
    usd: float
    period: str
    counter: str  # the counter's id (a key's id; a budget's subject and period)
    subject: str  # what its spend is read from (`tokensense.storage.budgets.spend_subject`)
    label: str  # how refusals name it

    @property
    def tag(self) -> str:
        """`level:name`, as the call's record lists it (details.budgets)."""
        return f"{self.level}:{self.name}"

    def refusal(self, decision: BudgetDecision) -> tuple[GatewayError, dict[str, str]]:
        """The answer when this budget does not admit the call: 429 while held by calls in flight, else 402."""
        if self.level == "key":
            return budget_refusal(self.name or "", self.usd, self.period, decision)
        what = f"The budget of {self.label} (${self.usd:g} {_PERIOD_WORDS.get(self.period, 'in total')})"
        money = f"${decision.spent:.6f} spent, ${decision.reserved:.6f} reserved by calls in flight"
        if decision.reason == "reserved":
            return GatewayError(
                429, f"{what} is held by calls in flight ({money}); retry in a moment.", code="budget_reserved"
            ), {"retry-after": str(BUDGET_RETRY_AFTER_SECONDS)}
        if decision.reason == "insufficient":
            return GatewayError(
                402,
                f"{what} has ${max(self.usd - decision.spent, 0):.6f} left ({money}), less than this call "
                f"can cost (${decision.amount:.6f} at its output cap); lower max_tokens.",
                code="budget_exceeded",
            ), {}
        return GatewayError(402, f"{what} is spent ({money}).", code="budget_exceeded"), {}


def key_budget(key: KeyInfo) -> AppliedBudget | None:
    if key.budget_usd is None:
        return None
    return AppliedBudget("key", key.name, key.budget_usd, key.budget_period, key.id, key.id, f"the key `{key.name}`")


class BudgetBook:
    """The budgets on attribution in force: config.toml's and the database's, reloaded when they change."""

    def __init__(
        self, engine: Engine | None = None, configured: Iterable[object] = (), *, refresh_interval: float = 1.0
    ) -> None:
        self.engine = engine
        self.configured = configured_limits(configured)
        self.refresh_interval = refresh_interval
        self._by_name: dict[tuple[str, str | None], list[BudgetLimit]] = {}
        self.limits: list[BudgetLimit] = []
        self._fingerprint: tuple | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._install([])

    def _install(self, stored: list[BudgetLimit]) -> None:
        limits = [*self.configured, *stored]
        by_name: dict[tuple[str, str | None], list[BudgetLimit]] = {}
        for limit in limits:
            by_name.setdefault((limit.level, limit.name), []).append(limit)
        self.limits = limits
        self._by_name = by_name  # replaced in one step: the event loop reads it without a lock

    @property
    def active(self) -> bool:
        return bool(self._by_name)

    def refresh(self, *, force: bool = False) -> None:
        """Reload the stored budgets if the table changed (blocking: a thread's work)."""
        if self.engine is None:
            return
        with Session(self.engine) as session:
            fingerprint = budgets_fingerprint(session)
            if not force and fingerprint == self._fingerprint:
                return
            stored = stored_limits(session)
        self._install(stored)
        self._fingerprint = fingerprint

    def start(self) -> BudgetBook:
        try:
            self.refresh(force=True)
        except Exception as e:  # the table may be missing in a database not upgraded yet: retried below
            log.warning("cannot read the budgets: %s", type(e).__name__)
        self._thread = threading.Thread(target=self._run, name="tokensense-budgets", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                self.refresh()
            except Exception as e:  # the database may be briefly unavailable: the budgets in memory hold
                log.warning("budget refresh failed: %s", type(e).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def applicable(self, attribution: Mapping[str, str | None]) -> list[AppliedBudget]:
        """The budgets on attribution a call with `attribution` is counted against (no I/O).

        Budgets of the same subject and period (config.toml's and the CLI's) are one counter:
        the smaller limit holds.
        """
        by_name = self._by_name
        if not by_name:
            return []
        found: list[tuple[BudgetLimit, str | None]] = []
        for level in ("project", "workflow", "source"):
            value = attribution.get(level)
            if value:
                found += [(limit, None) for limit in by_name.get((level, value), ())]
        execution = attribution.get("execution_id")
        if execution:
            found += [(limit, execution) for limit in by_name.get(("execution", None), ())]
            workflow = attribution.get("workflow")
            if workflow:
                found += [(limit, execution) for limit in by_name.get(("execution", workflow), ())]
        applied: dict[str, AppliedBudget] = {}
        for limit, run in found:
            counter = counter_id(limit, run)
            earlier = applied.get(counter)
            if earlier is not None and earlier.usd <= limit.usd:
                continue
            label = limit.label if run is None else f"execution `{run}` ({limit.label})"
            applied[counter] = AppliedBudget(
                limit.level,
                run if run is not None else limit.name,
                limit.usd,
                limit.period,
                counter,
                limit_subject(limit, run),
                label,
            )
        return list(applied.values())


def budgets_for(key: KeyInfo, attribution: Mapping[str, str | None], book: BudgetBook | None) -> list[AppliedBudget]:
    """Every budget a call of `key` with `attribution` is counted against: the key's first."""
    out = []
    own = key_budget(key)
    if own is not None:
        out.append(own)
    if book is not None:
        out += book.applicable(attribution)
    return out

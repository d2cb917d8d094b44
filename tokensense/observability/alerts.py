"""Budget alerts: a webhook POST when a key's settled spend crosses a fraction of its budget, once per period.

`BudgetWatcher.check` runs in the observability thread after the recorder has
written a batch: for each key in it that has a budget it reads the key's spend
for its current period from the database (so records of every instance count),
updates the budget gauges, and for each threshold now reached claims it in the
`AlertLedger` (a JSON file under TOKENSENSE_HOME, or Redis when
TOKENSENSE_REDIS_URL is set, so a restart or a second instance does not send it
again) and hands the alert to the `WebhookSender` thread, which POSTs it with
retries and backoff. Nothing here runs on the proxy's event loop.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session

from tokensense.config import AlertsConfig
from tokensense.gateway.guards import LoopAlert
from tokensense.gateway.policy import budget_window
from tokensense.storage.models import ApiKey, UsageCreate
from tokensense.storage.repo import spent_since

log = logging.getLogger(__name__)

EVENT = "tokensense.budget.threshold_crossed"
LOOP_EVENT = "tokensense.guard.loop_detected"
LEDGER_FILE = "alerts-sent.json"
_PERIOD_WORDS = {"daily": "today (UTC)", "monthly": "this month (UTC)", "total": "in total", "day": "today (UTC)",
                 "week": "this week (UTC)", "month": "this month (UTC)"}
# How long a claim is kept, per period (a `total` budget never resets).
_KEEP = {"daily": timedelta(days=3), "monthly": timedelta(days=40), "day": timedelta(days=3),
         "week": timedelta(days=10), "month": timedelta(days=40), "hour": timedelta(hours=2)}
RUN_ALERTS_EVERY = timedelta(hours=1)
"""Each-execution budgets alert at most once per budget and threshold in this time (a summary of the runs)."""


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    key_id: str
    key_name: str
    period: str  # total | monthly | daily
    window: str  # the period's id, e.g. `daily:2026-05-01`
    spent_usd: float
    budget_usd: float
    threshold: float  # fraction of the budget
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    test: bool = False
    level: str = "key"  # key | project | workflow | source | execution (`key_name` is then its name)
    # Each-execution budgets (`key_name`: the latest run that crossed): how many runs crossed the threshold
    # since the budget's last alert of this threshold, and the workflow whose runs it limits ("" for every run).
    runs: int | None = None
    workflow: str | None = None


def loop_alert_payload(alert: LoopAlert, fmt: str = "json") -> dict[str, Any]:
    """The webhook's JSON body for an execution the loop guard stopped ([guards] of config.toml)."""
    why = (f"sent the same request more than {alert.limit} times in {alert.window_s or 0:g}s"
           if alert.reason == "repeat" else f"made more than {alert.limit} calls")
    if fmt == "slack":
        prefix = "[test] " if alert.test else ""
        return {"text": f"{prefix}:rotating_light: TokenSense loop guard: execution `{alert.execution_id}` of key "
                        f"`{alert.key_name}` {why}; its calls are refused (429 loop_detected)."}
    return {"event": LOOP_EVENT, **asdict(alert), "at": alert.at.isoformat()}


def alert_payload(alert: BudgetAlert | LoopAlert, fmt: str = "json") -> dict[str, Any]:
    """The webhook's JSON body: TokenSense's own fields, or a Slack incoming-webhook message."""
    if isinstance(alert, LoopAlert):
        return loop_alert_payload(alert, fmt)
    fraction = alert.spent_usd / alert.budget_usd if alert.budget_usd else 0.0
    if fmt == "slack":
        prefix = "[test] " if alert.test else ""
        if alert.runs is not None:
            which = f"of workflow `{alert.workflow}`" if alert.workflow else "of every run"
            return {"text": (
                f"{prefix}:warning: TokenSense budget alert: {alert.runs} run(s) crossed {alert.threshold:.0%} of "
                f"the ${alert.budget_usd:,.2f} each-execution budget {which} since its last alert (latest "
                f"`{alert.key_name}`: ${alert.spent_usd:,.4f})."
            )}
        return {"text": (
            f"{prefix}:warning: TokenSense budget alert: {alert.level} `{alert.key_name}` has spent "
            f"${alert.spent_usd:,.4f} of its ${alert.budget_usd:,.2f} budget {_PERIOD_WORDS.get(alert.period, '')} "
            f"({fraction:.0%}; threshold {alert.threshold:.0%})."
        )}
    return {
        "event": EVENT,
        **asdict(alert),
        "spent_usd": round(alert.spent_usd, 8),
        "remaining_usd": round(max(alert.budget_usd - alert.spent_usd, 0.0), 8),
        "fraction": round(fraction, 6),
        "at": alert.at.isoformat(),
    }


def post_alert(url: str, payload: dict[str, Any], *, attempts: int = 5, backoff: float = 1.0,
               timeout: float = 10.0, client: httpx.Client | None = None,
               wait: Callable[[float], object] = time.sleep) -> bool:
    """POST `payload` to `url` until a 2xx, retrying network errors, 429 and 5xx with exponential backoff (blocking)."""
    own = client is None
    client = client or httpx.Client(timeout=timeout)
    try:
        for attempt in range(1, attempts + 1):
            try:
                response = client.post(url, json=payload)
            except httpx.HTTPError as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if response.is_success:
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    log.error("budget alert webhook refused the alert (%s); not retrying", problem)
                    return False
            if attempt < attempts:
                delay = min(backoff * 2 ** (attempt - 1), 60.0)
                log.warning("budget alert webhook failed (%s), attempt %d of %d; retrying in %.1fs",
                            problem, attempt, attempts, delay)
                wait(delay)
            else:
                log.error("budget alert webhook failed (%s) after %d attempts; alert not delivered",
                          problem, attempts)
        return False
    finally:
        if own:
            client.close()


class AlertLedger(Protocol):
    def claim(self, key_id: str, window: str, threshold: float, period: str) -> bool:
        """True the first time an alert (key, window, threshold) is claimed, False ever after."""
        ...


def _claim_id(key_id: str, window: str, threshold: float) -> str:
    return f"{key_id}|{window}|{threshold:g}"


class FileAlertLedger:
    """Alerts already sent, in a small JSON file, so a restart does not repeat them.

    Each claim re-reads the file under an exclusive lock (`fcntl.flock` on a
    `.lock` file beside it), so the workers of `serve --workers N` sharing one
    home claim each alert once between them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("cannot read %s (%s); budget alerts already sent may be sent again", self.path, e)
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def claim(self, key_id: str, window: str, threshold: float, period: str) -> bool:
        import fcntl

        claim = _claim_id(key_id, window, threshold)
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                lock_file = open(self.path.with_name(self.path.name + ".lock"), "a")
            except OSError as e:
                log.warning("cannot lock %s (%s); sending the budget alert anyway", self.path, e)
                return True
            with lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                sent = self._read()
                if claim in sent:
                    return False
                now = datetime.now(UTC)
                sent[claim] = {"at": now.isoformat(), "period": period}
                _prune(sent, now)
                self._save(sent)
                return True

    def _save(self, sent: dict[str, dict[str, str]]) -> None:
        try:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(sent, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot write %s (%s); a restart may send these budget alerts again", self.path, e)


def _prune(sent: dict[str, dict[str, str]], now: datetime) -> None:
    """Forget claims of periods long over (a `total` budget's are kept)."""
    for claim, entry in list(sent.items()):
        keep = _KEEP.get(entry.get("period", ""))
        try:
            at = datetime.fromisoformat(entry.get("at", ""))
        except ValueError:
            continue
        if keep is not None and now - at > keep:
            del sent[claim]


class RedisAlertLedger:
    """Alerts already sent, as Redis keys set with NX: shared by every instance; the file ledger if Redis fails."""

    def __init__(self, url: str, fallback: AlertLedger, prefix: str = "tokensense") -> None:
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.fallback = fallback
        self.prefix = prefix

    def claim(self, key_id: str, window: str, threshold: float, period: str) -> bool:
        keep = _KEEP.get(period)
        name = f"{self.prefix}:alert:{_claim_id(key_id, window, threshold)}"
        try:
            return bool(self.redis.set(name, datetime.now(UTC).isoformat(), nx=True,
                                       ex=int(keep.total_seconds()) if keep else None))
        except Exception as e:  # Redis unavailable: this instance's own ledger still prevents repeats here
            log.warning("budget alert ledger in Redis unavailable (%s); using %s", type(e).__name__,
                        getattr(self.fallback, "path", "the local ledger"))
            return self.fallback.claim(key_id, window, threshold, period)


def make_ledger(home: Path, redis_url: str | None) -> AlertLedger:
    local = FileAlertLedger(home / LEDGER_FILE)
    return RedisAlertLedger(redis_url, local) if redis_url else local


_STOP = object()


class WebhookSender:
    """Delivers alerts from a thread of its own, one after the other, each with retries (`post_alert`)."""

    def __init__(self, config: AlertsConfig, *, attempts: int = 5, backoff: float = 1.0) -> None:
        assert config.webhook_url
        self.config = config
        self.attempts = attempts
        self.backoff = backoff
        self.delivered = 0
        self.failed = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="tokensense-alerts", daemon=True)
        self._thread.start()

    def send(self, alert: BudgetAlert | LoopAlert) -> None:
        self._queue.put(alert)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while (alert := self._queue.get()) is not _STOP:
                ok = post_alert(self.config.webhook_url or "", alert_payload(alert, self.config.format),
                                attempts=self.attempts, backoff=self.backoff, client=client)
                if ok:
                    self.delivered += 1
                    log.info("%s alert for key %s delivered", "loop guard" if isinstance(alert, LoopAlert) else
                             "budget", alert.key_name)
                else:
                    self.failed += 1


@dataclass(frozen=True, slots=True)
class KeyBudget:
    key_id: str
    key_name: str
    period: str
    window: str
    budget_usd: float
    spent_usd: float


class BudgetWatcher:
    """Reads the settled spend of keys with a budget; updates the budget gauges and raises alerts."""

    def __init__(self, engine: Engine, *, config: AlertsConfig | None, ledger: AlertLedger | None,
                 send: Callable[[BudgetAlert], None] | None,
                 on_budget: Callable[[KeyBudget], None] | None = None) -> None:
        self.engine = engine
        self.config = config
        self.ledger = ledger
        self.send = send
        self.on_budget = on_budget

    def budget(self, key_id: str, now: datetime | None = None) -> KeyBudget | None:
        """The key's budget and what it spent in its current period (blocking: a database read)."""
        with Session(self.engine) as session:
            key = session.get(ApiKey, key_id)
            if key is None or key.budget_usd is None:
                return None
            window, start, _ = budget_window(key.budget_period, now)
            spent = spent_since(session=session, key_id=key_id, since=start)
        return KeyBudget(key_id=key.id, key_name=key.name, period=key.budget_period, window=window,
                         budget_usd=key.budget_usd, spent_usd=spent)

    def check(self, key_ids: Iterable[str]) -> list[BudgetAlert]:
        """Look at these keys now (after their records were written); return the alerts raised."""
        raised: list[BudgetAlert] = []
        for key_id in sorted(set(key_ids)):
            try:
                state = self.budget(key_id)
            except Exception as e:
                log.warning("cannot read the budget of key %s: %s", key_id, type(e).__name__)
                continue
            if state is None:
                continue
            if self.on_budget is not None:
                self.on_budget(state)
            raised += self._alerts(state)
        return raised

    def _alerts(self, state: KeyBudget) -> list[BudgetAlert]:
        if self.config is None or self.ledger is None or self.send is None or state.budget_usd <= 0:
            return []
        raised = []
        for threshold in self.config.thresholds:
            if state.spent_usd + 1e-12 < threshold * state.budget_usd:
                break
            if not self.ledger.claim(state.key_id, state.window, threshold, state.period):
                continue
            alert = BudgetAlert(key_id=state.key_id, key_name=state.key_name, period=state.period,
                                window=state.window, spent_usd=state.spent_usd, budget_usd=state.budget_usd,
                                threshold=threshold)
            log.warning("budget alert: key %s (%s) spent $%.6f of its $%g %s budget (threshold %g%%)",
                        state.key_name, state.key_id, state.spent_usd, state.budget_usd, state.period,
                        threshold * 100)
            self.send(alert)
            raised.append(alert)
        return raised


class AttributionBudgetWatcher:
    """Alerts for budgets on attribution (project, workflow, source, execution) as their records are written:
    the same thresholds, ledger and webhook as keys' budgets (`BudgetWatcher`)."""

    def __init__(self, engine: Engine, *, config: AlertsConfig, ledger: AlertLedger,
                 send: Callable[[BudgetAlert], None], applicable: Callable[[Mapping[str, Any]], list[Any]],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self.config = config
        self.ledger = ledger
        self.send = send
        self.applicable = applicable  # `BudgetBook.applicable`: the budgets a call with this attribution counts in
        self.clock = clock
        # Each-execution budgets: the runs that crossed a threshold and were not in an alert yet, per
        # (budget, threshold) (this instance's; an alert reports them, at most one per hour: `RUN_ALERTS_EVERY`).
        self._runs: dict[tuple[str, float], list[str]] = {}

    def check(self, records: Iterable[UsageCreate]) -> list[BudgetAlert]:
        """Look at the budgets these records count in (after they were written); return the alerts raised."""
        budgets: dict[str, Any] = {}
        seen: set[tuple[str | None, ...]] = set()
        for record in records:
            if not record.cost_usd:
                continue
            attribution = (record.project, record.workflow, record.source, record.execution_id)
            if attribution in seen:
                continue
            seen.add(attribution)
            for budget in self.applicable(dict(zip(("project", "workflow", "source", "execution_id"), attribution,
                                                   strict=True))):
                budgets.setdefault(budget.counter, budget)
        raised: list[BudgetAlert] = []
        for budget in budgets.values():
            try:
                raised += self._alerts(budget)
            except Exception as e:
                log.warning("cannot read the spend of the %s budget %s: %s", budget.level, budget.name,
                            type(e).__name__)
        return raised

    def _alerts(self, budget: Any) -> list[BudgetAlert]:
        from tokensense.storage.budgets import period_window

        window, start, _ = period_window(budget.period)
        with Session(self.engine) as session:
            spent = spent_since(session=session, key_id=budget.subject, since=start)
        raised = []
        for threshold in self.config.thresholds:
            if spent + 1e-12 < threshold * budget.usd:
                break
            # A run's own claim (counted once in the summaries) is kept days, not forever: runs are many.
            keep = "day" if budget.level == "execution" and budget.period == "total" else budget.period
            if not self.ledger.claim(budget.counter, window, threshold, keep):
                continue
            if budget.level == "execution":  # one alert per run would be noise: a summary, at most hourly
                alert = self._run_alert(budget, window, spent, threshold)
                if alert is not None:
                    self.send(alert)
                    raised.append(alert)
                continue
            alert = BudgetAlert(key_id=budget.counter, key_name=budget.name or "", period=budget.period, window=window,
                                spent_usd=spent, budget_usd=budget.usd, threshold=threshold, level=budget.level)
            log.warning("budget alert: %s spent $%.6f of its $%g %s budget (threshold %g%%)",
                        budget.label, spent, budget.usd, budget.period, threshold * 100)
            self.send(alert)
            raised.append(alert)
        return raised


    def _run_alert(self, budget: Any, window: str, spent: float, threshold: float) -> BudgetAlert | None:
        """A run of an each-execution budget crossed `threshold`: the alert summarising the runs that did since the
        budget's last alert of this threshold, if none was sent in the last hour (every instance's, in the ledger);
        else None, and the run is reported with the next one."""
        from tokensense.storage.budgets import subject_filters

        workflow = subject_filters(budget.subject).get("workflow", "")
        identity = f"execution:{workflow or '*'}@{budget.period}"
        pending = self._runs.setdefault((identity, threshold), [])
        pending.append(budget.name or "")
        now = self.clock()
        slot = int(now.timestamp() // RUN_ALERTS_EVERY.total_seconds())
        if not self.ledger.claim(identity, f"hour:{slot}", threshold, "hour"):
            log.info("budget alert held back: run %s crossed %g%% of the each-execution budget %s (%d runs "
                     "since its last alert)", budget.name, threshold * 100, identity, len(pending))
            return None
        runs = len(pending)
        pending.clear()
        log.warning("budget alert: %d run(s) crossed %g%% of the $%g each-execution budget %s (latest %s: $%.6f)",
                    runs, threshold * 100, budget.usd, identity, budget.name, spent)
        return BudgetAlert(key_id=identity, key_name=budget.name or "", period=budget.period, window=window,
                           spent_usd=spent, budget_usd=budget.usd, threshold=threshold, level="execution",
                           runs=runs, workflow=workflow, at=now)


def sample_alert(threshold: float = 0.8) -> BudgetAlert:
    """What `tokensense alerts test` sends: a made-up key at `threshold` of a $100 monthly budget."""
    window, _, _ = budget_window("monthly")
    return BudgetAlert(key_id="0000000000000000", key_name="example-key", period="monthly", window=window,
                       spent_usd=round(100.0 * threshold, 2), budget_usd=100.0, threshold=threshold, test=True)

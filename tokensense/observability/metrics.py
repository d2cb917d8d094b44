"""Prometheus metrics of the gateway: one registry, fed from usage records, served on a port of its own.

Every metric is named `tokensense_<what>_<unit>` (counters end in `_total`, added
by prometheus_client). Labels a client chooses (workflow, project, model) are
bounded: the first `max_label_values` distinct values of each pass as they are,
later ones are counted under `other`, so no client can grow the series count
without limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tokensense.storage.models import UsageCreate

log = logging.getLogger(__name__)

OTHER = "other"
# LLM calls last from milliseconds (embeddings, errors) to minutes (long generations).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# (label value of `kind`, UsageCreate field)
TOKEN_KINDS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cached", "cached_input_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("reasoning", "reasoning_tokens"),
)
MEDIA_UNITS = (("images", "images"), ("characters", "characters"), ("seconds", "seconds"))


class LabelBound:
    """The first `limit` distinct values of a label pass as they are; any later new value becomes `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 0)
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            return ""
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen or len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


def upstream_error_kind(*, status: int, provider_answered: bool, flow_failed: bool, timed_out: bool) -> str | None:
    """What went wrong upstream for a call, or None: `timeout`, `connection`, `interrupted`, `rate_limited`, `server_error`.

    `provider_answered`: the provider's response headers arrived; `flow_failed`:
    mitmproxy reported an error for the flow (the connection failed or broke).
    TokenSense's own refusals (401, 402, 403, 429 from its limits) are not upstream errors.
    """
    if timed_out:
        return "timeout"
    if flow_failed:
        if status == 499:  # the client went away
            return None
        return "interrupted" if provider_answered else "connection"
    if provider_answered:
        if status == 429:
            return "rate_limited"
        if status >= 500:
            return "server_error"
    return None


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """What the usage recorder reports (names looked up with defaults: older recorders lack some)."""

    queue_depth: float
    spooled: float
    dropped: float
    written: float


def _number(obj: object, *names: str) -> float:
    for name in names:
        value = getattr(obj, name, None)
        if callable(value):
            value = value()
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


def recorder_stats(recorder: object | None) -> RecorderStats:
    """Read `queue_depth` (else `_pending`), `spooled`, `dropped` and `written` from the recorder, 0 if absent."""
    if recorder is None:
        return RecorderStats(0.0, 0.0, 0.0, 0.0)
    return RecorderStats(
        queue_depth=_number(recorder, "queue_depth", "_pending"),
        spooled=_number(recorder, "spooled"),
        dropped=_number(recorder, "dropped"),
        written=_number(recorder, "written"),
    )


class RecorderCollector(Collector):
    """The usage recorder's queue and spool, read at scrape time (in the metrics server's thread)."""

    def __init__(self, get_recorder: Callable[[], object | None]) -> None:
        self.get_recorder = get_recorder

    def collect(self) -> Iterator[Metric]:
        stats = recorder_stats(self.get_recorder())
        yield GaugeMetricFamily("tokensense_recorder_queued_records",
                                "Usage records waiting to be written to the database.", value=stats.queue_depth)
        yield GaugeMetricFamily("tokensense_recorder_spooled_records",
                                "Usage records kept in the spool while the database is unavailable.", value=stats.spooled)
        yield CounterMetricFamily("tokensense_recorder_dropped_records",
                                  "Usage records that could not be written and were dropped.", value=stats.dropped)
        yield CounterMetricFamily("tokensense_recorder_written_records",
                                  "Usage records written to the database.", value=stats.written)


@dataclass(frozen=True, slots=True)
class BudgetGauge:
    """One budget as the budget gauges show it. An each-execution budget is one series, not one per run: its
    `name` is its workflow ("" for every run), its spent the costliest recent run's (as `budgets list` shows)."""

    level: str  # key | project | workflow | source | execution
    name: str
    period: str
    limit_usd: float
    spent_usd: float
    reserved_usd: float | None  # None: not known in this process (a worker of `serve --workers N` without Redis)


BUDGET_LEVEL_LABELS = ("level", "name", "period")


class BudgetCollector(Collector):
    """`tokensense_budget_level_{limit,spent,reserved}_usd`: every budget (keys' and those on attribution), read at
    scrape time in the metrics server's thread, at most once per `ttl` seconds (the rows cost a few queries)."""

    def __init__(self, read: Callable[[], list[BudgetGauge]], *, ttl: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.ttl = ttl
        self.clock = clock
        self._rows: list[BudgetGauge] = []
        self._at: float | None = None
        self._lock = threading.Lock()

    def rows(self) -> list[BudgetGauge]:
        with self._lock:
            now = self.clock()
            if self._at is None or now - self._at >= self.ttl:
                try:
                    self._rows = self.read()
                except Exception as e:  # the database briefly unavailable: the last rows stand
                    log.warning("cannot read the budgets for the metrics: %s", type(e).__name__)
                self._at = now
            return self._rows

    def collect(self) -> Iterator[Metric]:
        labels = list(BUDGET_LEVEL_LABELS)
        limit = GaugeMetricFamily("tokensense_budget_level_limit_usd",
                                  "Each budget's limit (key, project, workflow, source, execution) for its period, "
                                  "in US dollars; an each-execution budget's is per run.", labels=labels)
        spent = GaugeMetricFamily("tokensense_budget_level_spent_usd",
                                  "What each budget spent in its current period (settled records); an "
                                  "each-execution budget: its costliest run of the last hour.", labels=labels)
        reserved = GaugeMetricFamily("tokensense_budget_level_reserved_usd",
                                     "What calls in flight reserve in each budget now.", labels=labels)
        for row in self.rows():
            values = [row.level, row.name, row.period]
            limit.add_metric(values, row.limit_usd)
            spent.add_metric(values, row.spent_usd)
            if row.reserved_usd is not None:
                reserved.add_metric(values, row.reserved_usd)
        yield limit
        yield spent
        yield reserved


def budget_gauges(engine: Any, *, configured: Any = (), redis_url: str | None = None,
                  held: Callable[[str, str], float] | None = None) -> list[BudgetGauge]:
    """Every budget with its spend and reservations now (blocking: reads the database, and Redis when set;
    `held`: this process's own counters without Redis)."""
    from sqlmodel import Session

    from tokensense.storage.budgets import budget_rows

    with Session(engine) as session:
        rows = budget_rows(session, configured=configured, redis_url=redis_url, keys=True, held=held)
    return [BudgetGauge(row.limit.level, row.limit.name or "", row.limit.period, row.limit.usd, row.spent_usd,
                        row.reserved_usd) for row in rows]


@dataclass(frozen=True, slots=True)
class _CallSeries:
    requests: Any
    tokens: tuple[Any, ...]
    cost: Any
    duration: Any
    ttft: Any


class GatewayMetrics:
    """The gateway's metrics in their own registry; `observe` adds one finished call."""

    def __init__(self, *, max_label_values: int = 100, get_recorder: Callable[[], object | None] | None = None,
                 process_metrics: bool = True, get_sessions: Callable[[], int] | None = None) -> None:
        disable_created_metrics()  # no `_created` twin of every counter series
        self.registry = CollectorRegistry()
        r = self.registry
        self.workflow_label = LabelBound(max_label_values)
        self.project_label = LabelBound(max_label_values)
        self.model_label = LabelBound(max_label_values)
        self.requests = Counter(
            "tokensense_requests", "Calls through the gateway, by provider, model, endpoint and HTTP status.",
            ["provider", "model", "endpoint", "status"], registry=r)
        self.tokens = Counter(
            "tokensense_tokens", "Tokens by kind: input (cached included), output (reasoning included), "
            "cached (read from the prompt cache), cache_write, reasoning.",
            ["provider", "model", "kind"], registry=r)
        self.media = Counter(
            "tokensense_media_units", "Media units of image, speech and transcription calls (unit: images, "
            "characters, seconds).", ["provider", "model", "unit"], registry=r)
        self.cost = Counter(
            "tokensense_cost_usd", "Cost in US dollars of the calls, by provider, model, workflow and project.",
            ["provider", "model", "workflow", "project"], registry=r)
        self.unpriced = Counter(
            "tokensense_unpriced_requests", "Calls the price catalog could not price (their cost is unknown).",
            ["provider", "model"], registry=r)
        self.duration = Histogram(
            "tokensense_request_duration_seconds", "Time from the request to the end of the answer.",
            ["provider", "model", "endpoint"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram(
            "tokensense_time_to_first_token_seconds", "Streamed calls: time from the request to the first token.",
            ["provider", "model"], buckets=TTFT_BUCKETS, registry=r)
        self.upstream_errors = Counter(
            "tokensense_upstream_errors", "Failed provider calls, by kind: timeout, connection, interrupted, "
            "rate_limited (provider's 429), server_error (provider's 5xx).",
            ["provider", "model", "kind"], registry=r)
        self.retries = Counter(
            "tokensense_upstream_retries", "Upstream attempts after the first one of a call (retries and fallbacks).",
            ["provider", "model"], registry=r)
        self.budget = Gauge("tokensense_budget_usd", "Each key's budget for its period, in US dollars.",
                            ["key", "period"], registry=r)
        self.budget_spent = Gauge("tokensense_budget_spent_usd",
                                  "What each key with a budget spent in its current period (settled records).",
                                  ["key", "period"], registry=r)
        self.budget_remaining = Gauge("tokensense_budget_remaining_usd",
                                      "What is left of each key's budget for its current period (never below 0).",
                                      ["key", "period"], registry=r)
        self.realtime_sessions = Gauge(
            "tokensense_realtime_sessions", "Realtime sessions (OpenAI Realtime, Gemini Live WebSockets) open now.",
            registry=r)
        if get_sessions is not None:
            self.realtime_sessions.set_function(get_sessions)
        r.register(RecorderCollector(get_recorder or (lambda: None)))
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._series: dict[tuple, _CallSeries] = {}
        self._server: WSGIServer | None = None
        self._server_thread: threading.Thread | None = None

    def observe(self, record: UsageCreate, *, upstream_error: str | None = None) -> None:
        """Count one finished call."""
        provider = record.provider or ""
        model = self.model_label(record.model)
        labels = (provider, model, record.endpoint, record.status, self.workflow_label(record.workflow),
                  self.project_label(record.project))
        series = self._series.get(labels)
        if series is None:
            series = self._new_series(labels)
        series.requests.inc()
        for child, (_, field) in zip(series.tokens, TOKEN_KINDS):
            child.inc(getattr(record, field) or 0)
        series.cost.inc(max(record.cost_usd or 0.0, 0.0))
        if record.latency_ms is not None:
            series.duration.observe(record.latency_ms / 1000)
        if record.stream and record.ttft_ms is not None:
            series.ttft.observe(record.ttft_ms / 1000)
        # Rarer cases look their series up each time.
        for unit, field in MEDIA_UNITS:
            amount = getattr(record, field) or 0
            if amount:
                self.media.labels(provider, model, unit).inc(amount)
        if record.cost_usd is None:
            self.unpriced.labels(provider, model).inc()
        if upstream_error:
            self.upstream_errors.labels(provider, model, upstream_error).inc()
        if (record.attempt or 1) > 1:
            self.retries.labels(provider, model).inc()

    def _new_series(self, labels: tuple) -> _CallSeries:
        """The children a call with these labels updates, looked up once (`labels()` costs a few µs each time)."""
        provider, model, endpoint, status, workflow, project = labels
        if len(self._series) >= 10_000:  # a cache only: the series themselves stay registered
            self._series.clear()
        series = self._series[labels] = _CallSeries(
            requests=self.requests.labels(provider, model, endpoint, str(status)),
            tokens=tuple(self.tokens.labels(provider, model, kind) for kind, _ in TOKEN_KINDS),
            cost=self.cost.labels(provider, model, workflow, project),
            duration=self.duration.labels(provider, model, endpoint),
            ttft=self.ttft.labels(provider, model),
        )
        return series

    def set_budget(self, *, key_name: str, period: str, budget_usd: float, spent_usd: float) -> None:
        self.budget.labels(key_name, period).set(budget_usd)
        self.budget_spent.labels(key_name, period).set(spent_usd)
        self.budget_remaining.labels(key_name, period).set(max(budget_usd - spent_usd, 0.0))

    def watch_budgets(self, read: Callable[[], list[BudgetGauge]], *, ttl: float = 15.0) -> BudgetCollector:
        """Show every budget's limit, spent and reserved (`BudgetCollector`), read with `read` when scraped."""
        collector = BudgetCollector(read, ttl=ttl)
        self.registry.register(collector)
        return collector

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve `/metrics` on host:port from a thread of its own (OSError if the port is taken)."""
        self.close()
        self._server, self._server_thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._server_thread = None

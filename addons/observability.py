"""Hands each recorded call to the observability thread: Prometheus metrics, OpenTelemetry spans, budget alerts."""

from __future__ import annotations

import logging
import os
import threading
import time
from functools import partial
from typing import TYPE_CHECKING

from mitmproxy import ctx, exceptions, http

from addons.common import get_call
from tokensense.gateway.limits import MemoryCounters
from tokensense.gateway.runtime import Runtime
from tokensense.metering.recorder import UsageRecorder
from tokensense.observability.metrics import BudgetGauge, GatewayMetrics, budget_gauges, upstream_error_kind
from tokensense.observability.worker import FinishedCall, ObservabilityWorker
from tokensense.storage.models import UsageCreate

if TYPE_CHECKING:  # imported when used: OpenTelemetry only when its environment asks for it
    from tokensense.observability.alerts import AttributionBudgetWatcher, BudgetWatcher, KeyBudget, WebhookSender
    from tokensense.observability.tracing import GenAITracing

log = logging.getLogger(__name__)
OBSERVED = "tokensense.observed"  # the call's record will reach this addon


class Observability:
    """Last in the addon list, after Metering has recorded the call.

    `tokensense_metrics_port` P: Prometheus metrics on http://HOST:P/metrics
    (HOST: `tokensense_metrics_host`, default 127.0.0.1), served by a thread
    of its own. The OpenTelemetry environment (`OTEL_EXPORTER_OTLP_ENDPOINT`,
    ...) turns on one span per call; `[alerts]` in config.toml turns on budget
    alerts. On the event loop this addon only queues a small object per call.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.metrics: GatewayMetrics | None = None
        self.tracing: GenAITracing | None = None
        self.budgets: BudgetWatcher | None = None
        self.limits: AttributionBudgetWatcher | None = None  # alerts of budgets on attribution
        self.sender: WebhookSender | None = None
        self.worker: ObservabilityWorker | None = None
        self._settle_delay: float | None = None  # set when the recorder cannot say when records are written

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("tokensense_metrics_port", int, 0,
                          "Serve Prometheus metrics on this port at /metrics (0: no metrics).")
        loader.add_option("tokensense_metrics_host", str, "127.0.0.1",
                          "Address the Prometheus metrics server listens on.")

    def configure(self, updated: set[str]) -> None:
        if "tokensense_metrics_port" not in updated and "tokensense_metrics_host" not in updated:
            return
        port = ctx.options.tokensense_metrics_port
        if not 0 <= port <= 65535:
            raise exceptions.OptionsError(f"tokensense_metrics_port: {port} is not a port number")
        if self.metrics is not None:
            self.metrics.close()
        if port == 0:
            return
        if self.metrics is None:
            self.metrics = GatewayMetrics(max_label_values=self.runtime.settings.metrics_max_label_values,
                                          get_recorder=lambda: self.runtime.recorder,
                                          get_sessions=lambda: self.runtime.open_sessions)
            self.metrics.watch_budgets(self._budget_gauges)
        try:
            self.metrics.serve(port, ctx.options.tokensense_metrics_host)
        except OSError as e:
            raise exceptions.OptionsError(f"tokensense_metrics_port: cannot listen on "
                                          f"{ctx.options.tokensense_metrics_host}:{port}: {e}") from e

    def running(self) -> None:
        # Lifecycle (first in the list) has started the runtime: config, database and recorder exist.
        from tokensense.observability.tracing import tracing_configured

        if tracing_configured() and self.tracing is None:
            from tokensense.observability.tracing import GenAITracing, TracingUnavailable

            try:
                self.tracing = GenAITracing()
                log.info("OpenTelemetry spans to %s", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                         or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            except TracingUnavailable as e:
                log.error("OpenTelemetry tracing is off: %s", e)
        alerts = self.runtime.config.alerts
        if alerts.webhook_url and self.sender is None:
            from tokensense.observability.alerts import WebhookSender

            self.sender = WebhookSender(alerts)
            log.info("budget alerts at %s of each key's budget", ", ".join(f"{t:g}" for t in alerts.thresholds))
        if self.sender is not None:
            self.runtime.guard.on_alert = self.sender.send  # loop guard alerts ([guards]) through the same webhook
        if self.worker is None and (self.metrics is not None or self.tracing is not None or self.sender is not None):
            self.worker = ObservabilityWorker(handle_calls=self._handle_calls, handle_written=self._handle_written,
                                              interval=self.runtime.settings.flush_interval)
            self._watch_budgets()
            self.runtime.on_booked.append(self._booked)

    def _watch_budgets(self) -> None:
        recorder = self.runtime.recorder
        if recorder is None or (self.metrics is None and self.sender is None):
            return
        from tokensense.observability.alerts import BudgetWatcher, make_ledger

        settings = self.runtime.settings
        self.budgets = BudgetWatcher(
            self.runtime.engine, config=self.runtime.config.alerts if self.sender else None,
            ledger=make_ledger(settings.home, settings.redis_url) if self.sender else None,
            send=self.sender.send if self.sender else None, on_budget=self._set_budget_gauges)
        if self.sender is not None and self.runtime.budgets is not None:
            from tokensense.observability.alerts import AttributionBudgetWatcher

            assert self.budgets.ledger is not None
            self.limits = AttributionBudgetWatcher(self.runtime.engine, config=self.runtime.config.alerts,
                                                   ledger=self.budgets.ledger, send=self.sender.send,
                                                   applicable=self.runtime.budgets.applicable)
        worker = self.worker
        assert worker is not None
        if not isinstance(recorder, UsageRecorder):
            # A worker of `serve --workers N` hands its records to the hub, which writes them: no
            # callback here, so the budgets are read a while after the calls instead (`_handle_calls`).
            self._settle_delay = 2 * self.runtime.settings.flush_interval + 1.0
            return
        earlier = recorder.on_written

        def on_written(records: list[UsageCreate]) -> None:  # in the recorder's thread
            if earlier is not None:
                earlier(records)
            worker.records_written(records)

        recorder.on_written = on_written

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # As soon as the call has its context: a call answered at admission is counted too.
        self._observe(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        self._observe(flow)  # calls that got their context only now (intercept mode)

    def _observe(self, flow: http.HTTPFlow) -> None:
        call = get_call(flow)
        if call is not None and self.worker is not None and OBSERVED not in flow.metadata:
            flow.metadata[OBSERVED] = True
            call.on_record.append(partial(self._recorded, flow))
            call.on_attempt_record.append(partial(self._recorded, flow))  # retried attempts are records too

    def _recorded(self, flow: http.HTTPFlow, record: UsageCreate) -> None:
        """On the event loop, as Metering records the call: gather what the flow knows, queue it."""
        call = get_call(flow)
        worker = self.worker
        if call is None or worker is None:
            return
        end = time.time_ns()
        event = FinishedCall(
            record=record, start_ns=end - int((record.latency_ms or 0.0) * 1_000_000), end_ns=end,
            upstream_error=upstream_error_kind(status=record.status, provider_answered=call.first_byte is not None,
                                               flow_failed=flow.error is not None, timed_out=call.timed_out)
            if call.provider is not None else None,
        )
        if self.tracing is not None:
            headers = flow.request.headers
            event.traceparent = headers.get("traceparent")
            event.tracestate = headers.get("tracestate")
            response = flow.response
            if response is not None and not response.stream:
                event.response_body = response.raw_content  # decoded in the thread, if compressed
                event.content_encoding = response.headers.get("content-encoding")
        worker.call_finished(event)

    def _booked(self, records: list[UsageCreate]) -> None:
        """Records written outside the recorder (a batch job's lines, booked by the follower, already in the
        database): counted and checked against the budgets like any call's."""
        worker = self.worker
        if worker is None:
            return
        now = time.time_ns()
        for record in records:
            worker.call_finished(FinishedCall(record=record, start_ns=now, end_ns=now))
        worker.records_written(records)

    # --- in the observability thread ---

    def _handle_calls(self, calls: list[FinishedCall]) -> None:
        metrics, tracing = self.metrics, self.tracing
        if self._settle_delay is not None and self.budgets is not None and self.worker is not None:
            spent = [c.record for c in calls if c.record.cost_usd]
            if spent:
                timer = threading.Timer(self._settle_delay, self.worker.records_written, [spent])
                timer.daemon = True
                timer.start()
        for call in calls:
            if metrics is not None:
                metrics.observe(call.record, upstream_error=call.upstream_error)
            if tracing is not None:
                from tokensense.observability.tracing import response_model

                tracing.record_span(call.record, start_ns=call.start_ns, end_ns=call.end_ns,
                                    traceparent=call.traceparent, tracestate=call.tracestate,
                                    response_model=response_model(call.response_body, call.content_encoding),
                                    upstream_error=call.upstream_error)

    def _handle_written(self, records: list[UsageCreate]) -> None:
        if self.budgets is not None:
            self.budgets.check(r.key_id for r in records if r.key_id and r.cost_usd)
        if self.limits is not None:
            self.limits.check(records)

    def _budget_gauges(self) -> list[BudgetGauge]:
        """Every budget's gauges (in the metrics server's thread, when scraped)."""
        runtime = self.runtime
        if not runtime.started or getattr(runtime, "_engine", None) is None:
            return []
        counters = runtime.counters
        held = counters.held if isinstance(counters, MemoryCounters) else None
        return budget_gauges(runtime.engine, configured=runtime.config.budgets.limits,
                             redis_url=runtime.settings.redis_url, held=held)

    def _set_budget_gauges(self, state: KeyBudget) -> None:
        if self.metrics is not None:
            self.metrics.set_budget(key_name=state.key_name, period=state.period, budget_usd=state.budget_usd,
                                    spent_usd=state.spent_usd)

    def done(self) -> None:
        # After Lifecycle.done: the recorder has drained, so its last batches are queued here already.
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        if self.tracing is not None:
            self.tracing.shutdown()
            self.tracing = None
        if self.metrics is not None:
            self.metrics.close()

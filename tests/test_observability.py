"""Metrics, spans and budget alerts, piece by piece (tests/test_e2e_observability.py runs them through the gateway)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from observability_receivers import OtlpTraceReceiver, WebhookReceiver
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from tests.conftest import service_missing
from tokensense.cli.commands import main
from tokensense.config import AlertsConfig, ConfigError, load_config
from tokensense.observability.alerts import (
    BudgetWatcher,
    FileAlertLedger,
    RedisAlertLedger,
    alert_payload,
    post_alert,
    sample_alert,
)
from tokensense.observability.metrics import GatewayMetrics, LabelBound, recorder_stats, upstream_error_kind
from tokensense.observability.tracing import span_attributes, tracing_configured
from tokensense.settings import Settings, reset_settings
from tokensense.storage import repo
from tokensense.storage.db import init_db, make_engine
from tokensense.storage.models import UsageCreate

REDIS_URL = os.environ.get("TOKENSENSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def samples(metrics: GatewayMetrics) -> dict[tuple[str, frozenset], float]:
    """Every sample of the registry as parsed back from the exposition text: (name, labels) -> value."""
    text = generate_latest(metrics.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def record(**fields: object) -> UsageCreate:
    base: dict = dict(provider="openai", model="gpt-4o-mini", endpoint="chat.completions", status=200,
                      input_tokens=10, output_tokens=5, cost_usd=0.25, latency_ms=120.0, key_id="k1", key_name="app")
    return UsageCreate(**{**base, **fields})


def test_label_bound_passes_the_first_values_then_folds_new_ones_into_other() -> None:
    bound = LabelBound(2)
    assert [bound(v) for v in ("a", "b", "c", "a", None, "d", "b")] == ["a", "b", "other", "a", "", "other", "b"]


def test_metrics_count_each_record_and_bound_the_workflow_label() -> None:
    metrics = GatewayMetrics(max_label_values=2, process_metrics=False)
    records = [
        record(workflow="w1", project="p", cached_input_tokens=4, reasoning_tokens=2, ttft_ms=30.0, stream=True),
        record(workflow="w2", project="p", status=429, cost_usd=0.0),
        record(workflow="w3", project="p", cost_usd=0.5, cache_write_tokens=7),
        record(workflow="w4", project="p", cost_usd=None, attempt=2, status=502),
    ]
    for r, error in zip(records, [None, "rate_limited", None, "connection"]):
        metrics.observe(r, upstream_error=error)
    found = samples(metrics)
    common = {"provider": "openai", "model": "gpt-4o-mini"}
    assert value(found, "tokensense_requests_total", **common, endpoint="chat.completions", status="200") == 2
    assert value(found, "tokensense_requests_total", **common, endpoint="chat.completions", status="429") == 1
    assert value(found, "tokensense_tokens_total", **common, kind="input") == 40
    assert value(found, "tokensense_tokens_total", **common, kind="output") == 20
    assert value(found, "tokensense_tokens_total", **common, kind="cached") == 4
    assert value(found, "tokensense_tokens_total", **common, kind="cache_write") == 7
    assert value(found, "tokensense_tokens_total", **common, kind="reasoning") == 2
    # Past two workflows, new ones fold into `other`: w3 and w4 share one series.
    assert value(found, "tokensense_cost_usd_total", **common, workflow="w1", project="p") == 0.25
    assert value(found, "tokensense_cost_usd_total", **common, workflow="w2", project="p") == 0.0
    assert value(found, "tokensense_cost_usd_total", **common, workflow="other", project="p") == 0.5
    assert not [k for k in found if dict(k[1]).get("workflow") in ("w3", "w4")]
    assert value(found, "tokensense_unpriced_requests_total", **common) == 1
    assert value(found, "tokensense_request_duration_seconds_count", **common, endpoint="chat.completions") == 4
    assert value(found, "tokensense_request_duration_seconds_sum", **common, endpoint="chat.completions") == \
        pytest.approx(0.48)
    assert value(found, "tokensense_time_to_first_token_seconds_count", **common) == 1
    assert value(found, "tokensense_time_to_first_token_seconds_bucket", **common, le="0.05") == 1
    assert value(found, "tokensense_upstream_errors_total", **common, kind="rate_limited") == 1
    assert value(found, "tokensense_upstream_errors_total", **common, kind="connection") == 1
    assert value(found, "tokensense_upstream_retries_total", **common) == 1
    assert not [k for k in found if k[0].endswith("_created")]


def test_budget_and_recorder_gauges() -> None:
    class Recorder:
        queue_depth = 3
        spooled = 2
        dropped = 1
        written = 10

    metrics = GatewayMetrics(process_metrics=False, get_recorder=Recorder)
    metrics.set_budget(key_name="app", period="daily", budget_usd=5.0, spent_usd=6.5)
    found = samples(metrics)
    assert value(found, "tokensense_budget_usd", key="app", period="daily") == 5.0
    assert value(found, "tokensense_budget_spent_usd", key="app", period="daily") == 6.5
    assert value(found, "tokensense_budget_remaining_usd", key="app", period="daily") == 0.0
    assert value(found, "tokensense_recorder_queued_records") == 3
    assert value(found, "tokensense_recorder_spooled_records") == 2
    assert value(found, "tokensense_recorder_dropped_records_total") == 1
    assert value(found, "tokensense_recorder_written_records_total") == 10


def test_recorder_stats_read_what_the_recorder_has() -> None:
    class Today:  # today's UsageRecorder: a private pending count and `written`
        _pending = 4
        written = 7

    assert recorder_stats(Today()).queue_depth == 4
    assert recorder_stats(Today()).spooled == 0
    assert recorder_stats(None).written == 0


@pytest.mark.parametrize(("kwargs", "kind"), [
    (dict(status=504, provider_answered=False, flow_failed=True, timed_out=True), "timeout"),
    (dict(status=502, provider_answered=False, flow_failed=True, timed_out=False), "connection"),
    (dict(status=502, provider_answered=True, flow_failed=True, timed_out=False), "interrupted"),
    (dict(status=499, provider_answered=True, flow_failed=True, timed_out=False), None),
    (dict(status=429, provider_answered=True, flow_failed=False, timed_out=False), "rate_limited"),
    (dict(status=503, provider_answered=True, flow_failed=False, timed_out=False), "server_error"),
    (dict(status=400, provider_answered=True, flow_failed=False, timed_out=False), None),
    (dict(status=429, provider_answered=False, flow_failed=False, timed_out=False), None),  # TokenSense's own limit
    (dict(status=402, provider_answered=False, flow_failed=False, timed_out=False), None),
])
def test_upstream_error_kind(kwargs: dict, kind: str | None) -> None:
    assert upstream_error_kind(**kwargs) == kind


def test_span_attributes_follow_the_genai_conventions() -> None:
    r = record(provider="anthropic", model="claude-sonnet-4-6", endpoint="messages", cached_input_tokens=3,
               cache_write_tokens=2, reasoning_tokens=1, workflow="wf", step="s1", execution_id="e1", project="p",
               status=529)
    attrs = span_attributes(r, response_model="claude-sonnet-4-6-20260101", upstream_error="server_error")
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "claude-sonnet-4-6"
    assert attrs["gen_ai.response.model"] == "claude-sonnet-4-6-20260101"
    assert attrs["gen_ai.usage.input_tokens"] == 10
    assert attrs["gen_ai.usage.output_tokens"] == 5
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 3
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 2
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 1
    assert attrs["error.type"] == "server_error"
    assert attrs["tokensense.workflow"] == "wf" and attrs["tokensense.step"] == "s1"
    assert attrs["tokensense.execution_id"] == "e1" and attrs["tokensense.key.name"] == "app"
    assert attrs["tokensense.cost_usd"] == 0.25 and attrs["tokensense.request_id"] == r.request_id
    assert None not in attrs.values()
    gemini = span_attributes(record(provider="gemini", endpoint="gemini"))
    assert (gemini["gen_ai.provider.name"], gemini["gen_ai.operation.name"]) == ("gcp.gemini", "generate_content")
    assert "error.type" not in gemini


def test_tracing_only_with_an_otlp_endpoint() -> None:
    assert not tracing_configured({})
    assert not tracing_configured({"OTEL_SERVICE_NAME": "x"})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert not tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_SDK_DISABLED": "true"})
    assert not tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_TRACES_EXPORTER": "none"})


def test_spans_reach_an_otlp_receiver_as_children_of_the_traceparent() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from tokensense.observability.tracing import GenAITracing

    receiver = OtlpTraceReceiver()
    try:
        tracing = GenAITracing({}, exporter=OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces"))
        trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
        r = record(workflow="wf")
        tracing.record_span(r, start_ns=1_700_000_000_000_000_000, end_ns=1_700_000_000_120_000_000,
                            traceparent=f"00-{trace_id}-{parent_id}-01")
        tracing.record_span(record(status=500), start_ns=1_700_000_001_000_000_000, end_ns=1_700_000_001_100_000_000)
        tracing.shutdown()
        spans = receiver.wait_spans(2)
    finally:
        receiver.close()
    assert len(spans) == 2
    child, root = spans
    assert (child["trace_id"], child["parent_span_id"]) == (trace_id, parent_id)
    assert child["name"] == "chat gpt-4o-mini"
    assert (child["start_ns"], child["end_ns"]) == (1_700_000_000_000_000_000, 1_700_000_000_120_000_000)
    assert child["attributes"] == span_attributes(r)
    assert child["resource"]["service.name"] == "tokensense"
    assert root["parent_span_id"] == "" and root["trace_id"] != trace_id
    assert root["status_code"] == 2  # STATUS_CODE_ERROR


@pytest.fixture
def engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'obs.db'}")
    init_db(engine)
    yield engine
    engine.dispose()


def _spend(engine, key_id: str, *costs: float) -> None:
    with Session(engine) as session:
        repo.record_usages(session=session, usages=[record(key_id=key_id, cost_usd=c) for c in costs])


def test_budget_alert_once_per_threshold_even_after_a_restart(engine, tmp_path: Path) -> None:
    with Session(engine) as session:
        key, _ = repo.create_key(session=session, name="team", budget_usd=10.0, budget_period="daily")
        key_id = key.id
    sent: list = []
    budgets: list = []
    config = AlertsConfig(webhook_url="http://127.0.0.1:9/hook")

    def watcher() -> BudgetWatcher:  # a gateway (re)start: a new watcher and ledger over the same file
        return BudgetWatcher(engine, config=config, ledger=FileAlertLedger(tmp_path / "alerts-sent.json"),
                             send=sent.append, on_budget=budgets.append)

    w = watcher()
    _spend(engine, key_id, 3.0, 2.5)
    assert [a.threshold for a in w.check([key_id])] == [0.5]
    assert (budgets[-1].spent_usd, budgets[-1].budget_usd, budgets[-1].period) == (5.5, 10.0, "daily")
    assert w.check([key_id]) == []
    w = watcher()
    assert w.check([key_id]) == []
    _spend(engine, key_id, 5.0)  # 10.5: past 0.8 and 1.0 at once
    assert [a.threshold for a in w.check([key_id])] == [0.8, 1.0]
    assert watcher().check([key_id]) == []
    assert [(a.key_id, a.key_name, a.period, a.budget_usd) for a in sent] == [(key_id, "team", "daily", 10.0)] * 3
    assert sent[0].window.startswith("daily:") and sent[0].spent_usd == 5.5


def test_keys_without_a_budget_raise_nothing(engine) -> None:
    with Session(engine) as session:
        key, _ = repo.create_key(session=session, name="free")
    _spend(engine, key.id, 100.0)
    sent: list = []
    w = BudgetWatcher(engine, config=AlertsConfig(webhook_url="http://x"), ledger=FileAlertLedger(Path("/nonexistent/x")),
                      send=sent.append)
    assert w.check([key.id, "unknown"]) == [] and sent == []


@pytest.mark.redis
def test_redis_ledger_is_shared_between_instances(tmp_path: Path) -> None:
    redis = pytest.importorskip("redis")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    first = RedisAlertLedger(REDIS_URL, FileAlertLedger(tmp_path / "a.json"), prefix=prefix)
    second = RedisAlertLedger(REDIS_URL, FileAlertLedger(tmp_path / "b.json"), prefix=prefix)
    try:
        first.redis.ping()
    except redis.exceptions.ConnectionError as e:
        service_missing(f"no Redis at {REDIS_URL}: {e}")
    try:
        assert first.claim("k", "daily:2026-01-01", 0.5, "daily") is True
        assert second.claim("k", "daily:2026-01-01", 0.5, "daily") is False
        assert second.claim("k", "daily:2026-01-01", 0.8, "daily") is True
        assert 0 < first.redis.ttl(f"{prefix}:alert:k|daily:2026-01-01|0.5") <= 3 * 86400
    finally:
        for name in first.redis.keys(f"{prefix}:*"):
            first.redis.delete(name)


def test_webhook_retried_with_backoff_until_accepted() -> None:
    receiver = WebhookReceiver(fail_first=2)
    waits: list[float] = []
    try:
        assert post_alert(receiver.url, alert_payload(sample_alert()), attempts=3, backoff=0.5, wait=waits.append)
        assert receiver.attempts == 3 and len(receiver.bodies) == 1
        assert waits == [0.5, 1.0]
        receiver.fail_first, receiver.attempts = 5, 0
        assert not post_alert(receiver.url, {"x": 1}, attempts=2, backoff=0.0, wait=waits.append)
    finally:
        receiver.close()


def test_payload_formats() -> None:
    alert = sample_alert(0.8)
    body = alert_payload(alert)
    assert body["event"] == "tokensense.budget.threshold_crossed"
    assert {k: body[k] for k in ("key_name", "key_id", "period", "spent_usd", "budget_usd", "threshold")} == \
        {"key_name": "example-key", "key_id": "0000000000000000", "period": "monthly", "spent_usd": 80.0,
         "budget_usd": 100.0, "threshold": 0.8}
    assert body["remaining_usd"] == 20.0 and body["test"] is True
    json.dumps(body)
    slack = alert_payload(alert, "slack")
    assert list(slack) == ["text"] and "`example-key`" in slack["text"] and "80%" in slack["text"]


def test_alerts_config(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    (tmp_path / "config.toml").write_text('[alerts]\nwebhook_url = "https://hooks.example.com/x"\n'
                                          'thresholds = [1.0, 0.9]\nformat = "slack"\n')
    alerts = load_config(settings).alerts
    assert (alerts.webhook_url, alerts.thresholds, alerts.format) == ("https://hooks.example.com/x", [0.9, 1.0], "slack")
    (tmp_path / "config.toml").write_text("[alerts]\nthresholds = [0]\n")
    with pytest.raises(ConfigError, match="thresholds"):
        load_config(settings)
    (tmp_path / "config.toml").write_text('[alerts]\nwebhook_url = "ftp://x"\n')
    with pytest.raises(ConfigError, match="webhook_url"):
        load_config(settings)
    assert load_config(Settings(home=tmp_path / "none")).alerts.webhook_url is None


def test_cli_alerts_test_sends_a_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    receiver = WebhookReceiver()
    monkeypatch.setenv("TOKENSENSE_HOME", str(tmp_path))
    reset_settings()
    try:
        assert main(["alerts", "test"]) == 2
        assert "webhook_url" in capsys.readouterr().err
        (tmp_path / "config.toml").write_text(f'[alerts]\nwebhook_url = "{receiver.url}/hook"\nformat = "slack"\n')
        assert main(["alerts", "test"]) == 0
        assert main(["alerts", "test", "--format", "json", "--threshold", "0.5"]) == 0
    finally:
        receiver.close()
        reset_settings()
    assert "delivered" in capsys.readouterr().out
    slack, plain = receiver.bodies
    assert "example-key" in slack["text"]
    assert plain["threshold"] == 0.5 and plain["test"] is True and plain["spent_usd"] == 50.0


def test_unsupported_otlp_protocols_say_what_to_do() -> None:
    from tokensense.observability.tracing import TracingUnavailable, _span_exporter

    with pytest.raises(TracingUnavailable, match="http/protobuf or grpc"):
        _span_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401
    except ImportError:
        with pytest.raises(TracingUnavailable, match=r"tokensense\[otlp-grpc\]"):
            _span_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    else:
        assert type(_span_exporter({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})).__module__.endswith("grpc.trace_exporter")


def test_two_ledgers_on_one_file_claim_each_alert_once(tmp_path: Path) -> None:
    """The workers of `serve --workers N` share the home's ledger file: each alert is claimed once between them."""
    first, second = FileAlertLedger(tmp_path / "alerts-sent.json"), FileAlertLedger(tmp_path / "alerts-sent.json")
    assert first.claim("k", "total", 0.5, "total") is True
    assert second.claim("k", "total", 0.5, "total") is False
    assert second.claim("k", "total", 0.8, "total") is True
    assert first.claim("k", "total", 0.8, "total") is False


def test_each_worker_serves_metrics_on_its_own_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from tokensense.serve.server import mitmdump_args

    args = argparse.Namespace(port=8080, host="127.0.0.1", metrics_port=9464, metrics_host=None)
    assert "tokensense_metrics_port=9464" in mitmdump_args(args)
    monkeypatch.setenv("TOKENSENSE_WORKER", "3")
    argv = mitmdump_args(args)
    assert "tokensense_metrics_port=9466" in argv and "tokensense_metrics_host=127.0.0.1" in argv

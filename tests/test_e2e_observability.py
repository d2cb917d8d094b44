"""Metrics, spans and budget alerts from real calls through the gateway, checked against the usage records."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator

import httpx
import pytest
from conftest import (
    BIN,
    PROVIDER_KEYS,
    ROOT,
    FakeProvider,
    Gateway,
    clean_env,
    cli_in_process,
    free_port,
    start_gateway,
    stop,
    wait_healthy,
)
from observability_receivers import OtlpTraceReceiver, WebhookReceiver
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
BUDGET = 80.0
# $1 per input and per output token: each call's cost is its token count, so thresholds are easy to place.
CONFIG = """
[models."obs-model"]
provider = "openai"
input_per_mtok = 1000000
output_per_mtok = 1000000

[alerts]
webhook_url = "{url}/hook"
thresholds = [0.5, 0.8, 1.0]
"""


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[OtlpTraceReceiver, WebhookReceiver]]:
    otlp, webhook = OtlpTraceReceiver(), WebhookReceiver(fail_first=1)  # the first POST fails: retried
    yield otlp, webhook
    otlp.close()
    webhook.close()


@pytest.fixture(scope="module")
def obs_gateway(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider,
                receivers: tuple[OtlpTraceReceiver, WebhookReceiver]) -> Iterator[Gateway]:
    otlp, webhook = receivers
    tmp = tmp_path_factory.mktemp("observability")
    (tmp / "home").mkdir()
    (tmp / "home" / "config.toml").write_text(CONFIG.format(url=webhook.url))
    metrics_port = free_port()
    gw = start_gateway(tmp, fake_provider, serve_args=["--metrics-port", str(metrics_port)], extra_env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
        "OTEL_SERVICE_NAME": "tokensense-e2e",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    })
    gw.extra["metrics_url"] = f"http://127.0.0.1:{metrics_port}/metrics"
    yield gw
    stop(gw.process)


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(url, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(found: dict, name: str) -> float:
    return sum(v for (n, _), v in found.items() if n == name)


def settled(gw: Gateway, expected_records: int) -> tuple[list[dict], dict]:
    """The records and a scrape once the metrics have counted every record (both are written off the loop)."""
    rows = gw.wait_records(expected_records)
    assert len(rows) >= expected_records, gw.log()
    deadline = time.monotonic() + 20
    while True:
        rows = gw.records()
        found = scrape(gw.extra["metrics_url"])
        if total(found, "tokensense_requests_total") == len(rows) or time.monotonic() > deadline:
            return rows, found
        time.sleep(0.1)


def test_metrics_spans_and_alerts_match_the_records(obs_gateway: Gateway,
                                                    receivers: tuple[OtlpTraceReceiver, WebhookReceiver]) -> None:
    gw = obs_gateway
    otlp, webhook = receivers
    client = OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0)
    attribution = {"x-workflow-tag": "wf-obs", "x-step": "s1", "x-execution-id": "exec-obs", "x-project": "proj-obs"}
    traced = {**attribution, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}

    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}],
                                   extra_headers={**traced, "x-fake-cached-tokens": "1"})
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream please"}], stream=True,
        stream_options={"include_usage": True}, extra_headers={**attribution, "x-fake-reasoning-tokens": "2"}))
    assert chunks
    claude = httpx.post(f"{gw.url}/v1/messages", headers={"x-api-key": gw.key, "x-workflow-tag": "wf-claude",
                                                          "x-fake-cache-write-tokens": "3"},
                        json={"model": "claude-sonnet-4-6", "max_tokens": 50,
                              "messages": [{"role": "user", "content": "Hello Claude"}]}, timeout=30)
    assert claude.status_code == 200, claude.text
    failed = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {gw.key}",
                                                                  "x-fake-status": "503"},
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fail"}]}, timeout=30)
    assert failed.status_code == 503
    unknown = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {gw.key}"},
                         json={"model": "no-such-model", "messages": []}, timeout=30)
    assert unknown.status_code == 404
    refused = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": "Bearer tsk_not-a-key"},
                         json={"model": "gpt-4o-mini", "messages": []}, timeout=30)
    assert refused.status_code == 401  # refused at admission: counted too

    # A key with an $80 budget: each call costs its tokens (2 prompt words + 1 reply word + R reasoning tokens)
    # and reserves $16 (the prompt's 7 characters / 3 + 8, and max_tokens 5). Reasoning tokens beyond the cap
    # (a provider that does not honour it) shape the spend: 43 (past 50%), 64 (80%), 97 (past 100%), then 402.
    alerted = json.loads(gw.cli("keys", "create", "alerted", "--budget-usd", str(BUDGET), "--json").stdout)
    spend = OpenAI(base_url=f"{gw.url}/v1", api_key=alerted["key"], max_retries=0)
    statuses = []
    for reasoning in (40, 18, 30, 0, 0, 0):
        try:
            spend.chat.completions.create(model="obs-model", messages=[{"role": "user", "content": "one two"}],
                                          max_tokens=5, extra_headers={"x-fake-reply": "three",
                                                                       "x-fake-reasoning-tokens": str(reasoning)})
            statuses.append(200)
        except Exception as e:  # 402 once the budget is spent
            statuses.append(getattr(e, "status_code", None))
        # Each call waits for the one before to be settled, so spend grows one call at a time.
        gw.wait_records(statuses.count(200), key_id=alerted["id"])
    assert statuses[:3] == [200] * 3 and statuses[3:] == [402] * 3, statuses

    rows, found = settled(gw, 6 + len(statuses))
    assert any(r["status"] == 401 for r in rows)
    by_request = {r["request_id"]: r for r in rows}

    # --- Prometheus: every value equals what the records add up to ---
    requests, tokens, cost = Counter(), Counter(), Counter()
    durations, ttfts = Counter(), Counter()
    for r in rows:
        provider, model = r["provider"] or "", r["model"] or ""
        requests[(provider, model, r["endpoint"], str(r["status"]))] += 1
        for kind, field in (("input", "input_tokens"), ("output", "output_tokens"), ("cached", "cached_input_tokens"),
                            ("cache_write", "cache_write_tokens"), ("reasoning", "reasoning_tokens")):
            tokens[(provider, model, kind)] += r[field]
        cost[(provider, model, r["workflow"] or "", r["project"] or "")] += r["cost_usd"] or 0.0
        durations[(provider, model, r["endpoint"])] += 1
        if r["stream"] and r["ttft_ms"] is not None:
            ttfts[(provider, model)] += 1
    got = lambda name, **labels: found.get((name, frozenset(labels.items())))  # noqa: E731
    for (provider, model, endpoint, status), n in requests.items():
        assert got("tokensense_requests_total", provider=provider, model=model, endpoint=endpoint, status=status) == n
    assert total(found, "tokensense_requests_total") == len(rows)
    for (provider, model, kind), n in tokens.items():
        assert got("tokensense_tokens_total", provider=provider, model=model, kind=kind) == n
    assert tokens[("openai", "gpt-4o-mini", "cached")] >= 1 and tokens[("openai", "gpt-4o-mini", "reasoning")] >= 2
    assert tokens[("anthropic", "claude-sonnet-4-6", "cache_write")] == 3
    for (provider, model, workflow, project), usd in cost.items():
        assert got("tokensense_cost_usd_total", provider=provider, model=model, workflow=workflow,
                   project=project) == pytest.approx(usd)
    for (provider, model, endpoint), n in durations.items():
        assert got("tokensense_request_duration_seconds_count", provider=provider, model=model, endpoint=endpoint) == n
    assert ttfts and all(got("tokensense_time_to_first_token_seconds_count", provider=p, model=m) == n
                         for (p, m), n in ttfts.items())
    # The 503 call was retried once ([routing] retries = 1): two attempts, two records, two upstream errors.
    assert got("tokensense_upstream_errors_total", provider="openai", model="gpt-4o-mini", kind="server_error") == 2
    assert got("tokensense_upstream_retries_total", provider="openai", model="gpt-4o-mini") == 1
    assert "tokensense_upstream_retries_total" in {f.name + "_total" for f in text_string_to_metric_families(
        httpx.get(gw.extra["metrics_url"], timeout=10).text)}
    spent = sum(r["cost_usd"] or 0.0 for r in rows if r["key_id"] == alerted["id"])
    assert spent >= BUDGET
    assert got("tokensense_budget_spent_usd", key="alerted", period="total") == pytest.approx(spent)
    assert got("tokensense_budget_remaining_usd", key="alerted", period="total") == 0.0
    assert got("tokensense_budget_usd", key="alerted", period="total") == BUDGET
    # Every level's gauges (issue 26): the keys' too, read when scraped.
    level = frozenset({"level": "key", "name": "alerted", "period": "total"}.items())
    assert found.get(("tokensense_budget_level_limit_usd", level)) == BUDGET
    assert found.get(("tokensense_budget_level_spent_usd", level)) == pytest.approx(spent)
    assert got("tokensense_recorder_queued_records") == 0
    assert got("tokensense_recorder_written_records_total") == len(rows)
    # The gateway's own port does not serve the metrics.
    assert "tokensense_requests_total" not in httpx.get(f"{gw.url}/metrics", timeout=10).text

    # --- OpenTelemetry: one span per record, attributes from the record, the caller's trace as parent ---
    spans = otlp.wait_spans(len(rows))
    assert len(spans) == len(rows)
    assert otlp.paths[0] == "/v1/traces" and spans[0]["resource"]["service.name"] == "tokensense-e2e"
    spans_by_request = {s["attributes"]["tokensense.request_id"]: s for s in spans}
    assert set(spans_by_request) == set(by_request)
    for request_id, span in spans_by_request.items():
        r, attrs = by_request[request_id], span["attributes"]
        assert attrs["gen_ai.usage.input_tokens"] == r["input_tokens"]
        assert attrs["gen_ai.usage.output_tokens"] == r["output_tokens"]
        assert attrs["http.response.status_code"] == r["status"]
        assert attrs.get("gen_ai.request.model") == r["model"]
        assert attrs.get("tokensense.cost_usd") == r["cost_usd"]
        for column in ("workflow", "step", "execution_id", "project"):
            assert attrs.get(f"tokensense.{column}") == r[column]
        assert attrs.get("tokensense.key.name") == r["key_name"]
        assert attrs.get("gen_ai.usage.cache_read.input_tokens", 0) == r["cached_input_tokens"]
        assert attrs.get("gen_ai.usage.cache_creation.input_tokens", 0) == r["cache_write_tokens"]
        assert attrs.get("gen_ai.usage.reasoning.output_tokens", 0) == r["reasoning_tokens"]
        assert span["end_ns"] - span["start_ns"] == pytest.approx(r["latency_ms"] * 1e6, abs=1e3)
    [first] = [s for s in spans if s["attributes"].get("tokensense.step") == "s1"
               and not s["attributes"]["tokensense.stream"]]
    assert (first["trace_id"], first["parent_span_id"]) == (TRACE_ID, PARENT_ID)
    assert first["name"] == "chat gpt-4o-mini" and first["attributes"]["gen_ai.provider.name"] == "openai"
    assert first["attributes"]["gen_ai.response.model"] == "gpt-4o-mini"
    others = [s for s in spans if s is not first]
    assert all(s["trace_id"] != TRACE_ID and s["parent_span_id"] == "" for s in others)
    claude_span = next(s for s in spans if s["attributes"].get("gen_ai.provider.name") == "anthropic")
    assert claude_span["attributes"]["gen_ai.operation.name"] == "chat"
    failed_span = next(s for s in spans if s["attributes"]["http.response.status_code"] == 503)
    assert failed_span["status_code"] == 2 and failed_span["attributes"]["error.type"] == "server_error"

    # --- Budget alerts: one POST per threshold crossed (the first delivery failed once and was retried) ---
    bodies = webhook.wait_bodies(3)
    time.sleep(0.5)  # a fourth (repeated) alert would be here by now
    assert [b["threshold"] for b in webhook.bodies] == [0.5, 0.8, 1.0]
    assert webhook.attempts == 4
    for body in bodies:
        assert body["event"] == "tokensense.budget.threshold_crossed"
        assert (body["key_name"], body["key_id"], body["period"], body["window"]) == \
            ("alerted", alerted["id"], "total", "total")
        assert body["budget_usd"] == BUDGET and body["test"] is False
        assert body["spent_usd"] >= body["threshold"] * BUDGET
    assert "budget alert: key alerted" in gw.log()
    assert alerted["key"] not in gw.log()


def test_mitmdump_option_serves_metrics(tmp_path, fake_provider: FakeProvider) -> None:
    """`mitmdump -s addons/tokensense.py --set tokensense_metrics_port=P`: the same metrics without `serve`."""
    env = clean_env()
    env["TOKENSENSE_HOME"] = str(tmp_path)
    env["TOKENSENSE_OPENAI_BASE_URL"] = f"{fake_provider.url}/openai"
    env["OPENAI_API_KEY"] = PROVIDER_KEYS["openai"]
    env["TOKENSENSE_FLUSH_INTERVAL"] = "0.05"
    env["TOKENSENSE_METRICS_MAX_LABEL_VALUES"] = "1"
    key = json.loads(cli_in_process(["keys", "create", "script", "--json"], env).stdout)["key"]
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen([str(BIN / "mitmdump"), "-s", str(ROOT / "addons" / "tokensense.py"),
                             "--listen-port", str(port), "--set", f"tokensense_metrics_port={metrics_port}"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, "mitmdump with the gateway script")
        for workflow in ("first", "second", "third"):
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                           headers={"authorization": f"Bearer {key}", "x-workflow-tag": workflow},
                           json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
            assert r.status_code == 200
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 20
        while total(found := scrape(url), "tokensense_requests_total") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop(proc)
    workflows = defaultdict(float)
    for (name, labels), v in found.items():
        if name == "tokensense_requests_total":
            assert dict(labels)["status"] == "200"
        if name == "tokensense_cost_usd_total":
            workflows[dict(labels)["workflow"]] += v
    assert total(found, "tokensense_requests_total") == 3
    # TOKENSENSE_METRICS_MAX_LABEL_VALUES=1: the first workflow keeps its name, the next two fold into `other`.
    assert set(workflows) == {"first", "other"} and workflows["other"] == pytest.approx(2 * workflows["first"])
    assert total(found, "process_cpu_seconds_total") > 0

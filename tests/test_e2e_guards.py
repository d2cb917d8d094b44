"""Runaway guards end to end (issue 26): the per-call cost cap (header and key) and the loop guard ([guards])."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import FakeProvider, Gateway, start_gateway, stop
from observability_receivers import WebhookReceiver
from websockets.sync.client import connect

pytestmark = pytest.mark.e2e

CONFIG = """
[routing]
backoff = 0.05
max_backoff = 0.1
breaker_failures = 100

[guards]
repeat_limit = 3
repeat_window_s = 600
max_calls_per_execution = 5

[alerts]
webhook_url = "{url}/hook"
"""
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider, webhook: WebhookReceiver) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("guards")
    config = tmp / "config.toml"
    config.write_text(CONFIG.format(url=webhook.url))

    def prepare(gw: Gateway) -> None:
        capped = json.loads(gw.cli("keys", "create", "capped", "--max-call-usd", "0.001", "--json").stdout)
        gw.extra["capped"] = capped["key"]

    gw = start_gateway(tmp, fake_provider, extra_env={"TOKENSENSE_CONFIG_FILE": str(config)}, prepare=prepare)
    yield gw
    stop(gw.process)


@pytest.fixture(autouse=True)
def no_faults(fake_provider: FakeProvider) -> Iterator[None]:
    httpx.delete(f"{fake_provider.url}/_fake/faults", timeout=10)
    yield
    httpx.delete(f"{fake_provider.url}/_fake/faults", timeout=10)


def client(gw: Gateway, key: str | None = None, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key or gw.key, max_retries=0, timeout=30,
                         default_headers=headers)


def alerts_of(webhook: WebhookReceiver, run: str) -> list[dict]:
    """The webhook bodies about execution `run`, once at least one arrived (sent from the alert thread)."""
    deadline = time.monotonic() + 20
    while not (found := [b for b in webhook.bodies if b.get("execution_id") == run]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def sent(fake: FakeProvider, marker: str) -> list[dict]:
    """The requests the fake provider received whose body carries `marker`."""
    return [r for r in fake.requests() if marker in json.dumps(r.get("body"))]


def test_a_call_over_its_cost_cap_is_402_before_the_provider(gw: Gateway, fake_provider: FakeProvider) -> None:
    marker = f"cap-{uuid.uuid4().hex[:8]}"
    messages = [{"role": "user", "content": marker}]
    capped = client(gw, **{"x-tokensense-max-cost-usd": "0.001"})
    with pytest.raises(openai.APIStatusError) as e:  # gpt-4o at 4,000 output tokens: about $0.04
        capped.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=4000)
    assert e.value.status_code == 402
    body = e.value.body
    assert isinstance(body, dict) and body["code"] == "max_cost_exceeded"
    assert "$0.001" in body["message"] and "can cost up to $0.04" in body["message"]
    assert sent(fake_provider, marker) == []  # nothing reached the provider
    # Under the cap: served, and the header is not forwarded.
    answer = capped.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=50)
    assert answer.choices[0].message.content
    forwarded = sent(fake_provider, marker)
    assert len(forwarded) == 1 and "x-tokensense-max-cost-usd" not in forwarded[0]["headers"]


def test_a_malformed_cost_cap_is_400(gw: Gateway) -> None:
    for value in ("abc", "0", "-1", "nan", "inf"):
        with pytest.raises(openai.BadRequestError) as e:
            client(gw, **{"x-tokensense-max-cost-usd": value}).chat.completions.create(
                model="gpt-4o-mini", messages=HI, max_tokens=5)
        assert isinstance(e.value.body, dict) and e.value.body["code"] == "invalid_max_cost"
    # No valid key: 401 first, whatever the header says.
    with pytest.raises(openai.AuthenticationError):
        client(gw, "tsk_not-a-key", **{"x-tokensense-max-cost-usd": "abc"}).chat.completions.create(
            model="gpt-4o-mini", messages=HI, max_tokens=5)


def test_the_keys_cap_and_the_smaller_of_both(gw: Gateway, fake_provider: FakeProvider) -> None:
    marker = f"keycap-{uuid.uuid4().hex[:8]}"
    messages = [{"role": "user", "content": marker}]
    keyed = client(gw, gw.extra["capped"])  # --max-call-usd 0.001
    with pytest.raises(openai.APIStatusError) as e:
        keyed.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=4000)
    assert e.value.status_code == 402 and "$0.001" in str(e.value)
    # A larger header cap does not lift the key's.
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, gw.extra["capped"], **{"x-tokensense-max-cost-usd": "5"}).chat.completions.create(
            model="gpt-4o", messages=messages, max_tokens=4000)
    assert e.value.status_code == 402
    assert sent(fake_provider, marker) == []
    assert keyed.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=50).choices
    # A smaller header cap applies under the key's.
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, gw.extra["capped"], **{"x-tokensense-max-cost-usd": "0.000001"}).chat.completions.create(
            model="gpt-4o-mini", messages=messages, max_tokens=50)
    assert e.value.status_code == 402 and "$1e-06" in str(e.value)
    listed = {k["name"]: k for k in json.loads(gw.cli("keys", "list", "--json").stdout)}
    assert listed["capped"]["max_call_usd"] == 0.001
    assert "$0.001" in gw.cli("keys", "list").stdout


def test_keys_update_sets_and_removes_the_cap(gw: Gateway) -> None:
    name = f"upd-{uuid.uuid4().hex[:8]}"
    gw.cli("keys", "create", name, "--json")
    assert json.loads(gw.cli("keys", "update", name, "--max-call-usd", "0.25", "--json").stdout)["max_call_usd"] == 0.25
    assert json.loads(gw.cli("keys", "update", name, "--no-max-call-usd", "--json").stdout)["max_call_usd"] is None
    assert gw.cli("keys", "update", name, "--max-call-usd", "0", check=False).returncode != 0


def test_a_fallback_over_the_cap_is_skipped(gw: Gateway, fake_provider: FakeProvider) -> None:
    marker = f"fb-{uuid.uuid4().hex[:8]}"
    httpx.post(f"{fake_provider.url}/_fake/faults", json=[{"prefix": "/openai", "model": "gpt-4o-mini",
                                                           "status": 500, "times": 2}], timeout=10)
    raw = client(gw, **{"x-tokensense-max-cost-usd": "0.001",
                        "x-tokensense-fallbacks": "claude-opus-4-1,gemini-2.5-flash"}) \
        .chat.completions.with_raw_response.create(model="gpt-4o-mini", max_tokens=50,
                                                   messages=[{"role": "user", "content": marker}])
    assert raw.headers["x-tokensense-served-by"] == "gemini/gemini-2.5-flash"
    assert not [r for r in sent(fake_provider, marker) if r["prefix"].strip("/") == "anthropic"]
    assert "fallback claude-opus-4-1 skipped: This call can cost up to" in gw.log()


def test_the_loop_guard_stops_the_fourth_identical_call_of_a_run(gw: Gateway, fake_provider: FakeProvider,
                                                                 webhook: WebhookReceiver) -> None:
    run, other = f"run-{uuid.uuid4().hex[:8]}", f"run-{uuid.uuid4().hex[:8]}"
    marker = f"loop-{uuid.uuid4().hex[:8]}"
    body = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": marker}]}
    agent = client(gw, **{"x-execution-id": run})
    for _ in range(3):
        assert agent.chat.completions.create(**body).choices  # type: ignore[call-overload]
    for _ in range(2):  # the 4th and 5th: refused, one alert
        with pytest.raises(openai.RateLimitError) as e:
            agent.chat.completions.create(**body)  # type: ignore[call-overload]
        assert isinstance(e.value.body, dict) and e.value.body["code"] == "loop_detected"
    assert len(sent(fake_provider, marker)) == 3
    # The same body with its keys in another order is the same request.
    reordered = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                           headers={"authorization": f"Bearer {gw.key}", "x-execution-id": run},
                           content=json.dumps({"messages": body["messages"], "max_tokens": 5, "model": "gpt-4o-mini"}))
    assert reordered.status_code == 429 and reordered.json()["error"]["code"] == "loop_detected"
    # Another run, and a call without an execution id, go through.
    assert client(gw, **{"x-execution-id": other}).chat.completions.create(**body).choices  # type: ignore[call-overload]
    for _ in range(4):
        assert client(gw).chat.completions.create(**body).choices  # type: ignore[call-overload]
    alerts = alerts_of(webhook, run)
    assert len(alerts) == 1 and alerts[0]["event"] == "tokensense.guard.loop_detected"
    assert alerts[0]["reason"] == "repeat" and alerts[0]["limit"] == 3


def test_max_calls_per_execution(gw: Gateway, fake_provider: FakeProvider, webhook: WebhookReceiver) -> None:
    run = f"run-{uuid.uuid4().hex[:8]}"
    agent = client(gw, **{"x-execution-id": run})
    for i in range(5):  # different bodies: only the count stops it
        assert agent.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                             messages=[{"role": "user", "content": f"{run} step {i}"}]).choices
    with pytest.raises(openai.RateLimitError) as e:
        agent.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                      messages=[{"role": "user", "content": f"{run} step 5"}])
    assert isinstance(e.value.body, dict) and e.value.body["code"] == "loop_detected"
    assert "5 calls" in e.value.body["message"]
    assert not sent(fake_provider, f"{run} step 5")
    records = gw.wait_records(6, execution_id=run)
    assert [r["status"] for r in records].count(429) == 1
    assert [b["reason"] for b in alerts_of(webhook, run)] == ["max_calls"]


def test_the_cost_cap_holds_on_the_responses_api(gw: Gateway, fake_provider: FakeProvider) -> None:
    marker = f"resp-{uuid.uuid4().hex[:8]}"
    capped = client(gw, **{"x-tokensense-max-cost-usd": "0.001"})
    with pytest.raises(openai.APIStatusError) as e:
        capped.responses.create(model="gpt-4o", input=marker, max_output_tokens=4000)
    assert e.value.status_code == 402 and isinstance(e.value.body, dict)
    assert e.value.body["code"] == "max_cost_exceeded"
    assert sent(fake_provider, marker) == []
    assert capped.responses.create(model="gpt-4o-mini", input=marker, max_output_tokens=50).output_text
    assert len(sent(fake_provider, marker)) == 1


def test_the_cost_cap_of_a_responses_websocket_applies_to_each_response(gw: Gateway,
                                                                        fake_provider: FakeProvider) -> None:
    marker = f"ws-{uuid.uuid4().hex[:8]}"
    url = gw.url.replace("http://", "ws://") + "/v1/responses"
    with connect(url, additional_headers={"Authorization": f"Bearer {gw.key}", "x-tokensense-max-cost-usd": "0.001",
                                          "OpenAI-Beta": "responses_websockets=2026-02-06"},
                 open_timeout=10, compression=None) as conn:
        def create(**body: object) -> dict:
            conn.send(json.dumps({"type": "response.create", **body}))
            while True:
                event = json.loads(conn.recv(timeout=15))
                if event["type"] in ("response.completed", "response.incomplete", "response.failed", "error"):
                    return event
        refused = create(model="gpt-4o", input=marker, max_output_tokens=4000, store=False)
        assert refused["type"] == "error" and "max_cost_exceeded" in json.dumps(refused)
        assert create(model="gpt-4o-mini", input=marker, max_output_tokens=50, store=False)["type"] == \
            "response.completed"
    upstream = sent(fake_provider, marker)
    assert len(upstream) == 1 and "x-tokensense-max-cost-usd" not in upstream[0]["headers"]

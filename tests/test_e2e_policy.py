"""Policies end to end on one SQLite instance: 403 access, 429 rate limits, 402 budgets under concurrency."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import openai
import pytest
from conftest import Gateway
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tokensense.core.usage import TokenUsage
from tokensense.metering.pricing import PriceBook

pytestmark = pytest.mark.e2e


def new_key(gw: Gateway, *options: str) -> dict:
    return json.loads(gw.cli("keys", "create", f"pol-{uuid.uuid4().hex[:8]}", *options, "--json").stdout)


def chat(gw: Gateway, key: str, model: str = "gpt-4o-mini", prompt: str = "hi there", **headers: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}", **headers},
                      json={"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": prompt}]},
                      timeout=30)


def test_model_outside_the_policy_is_403_on_every_route(gateway: Gateway) -> None:
    key = new_key(gateway, "--allow-model", "gpt-4o*", "--allow-model", "claude-haiku-*")["key"]
    assert chat(gateway, key).status_code == 200
    with pytest.raises(openai.PermissionDeniedError) as e:
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0).chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-4.1-mini" in str(e.value) and e.value.body["code"] == "model_not_allowed"
    with pytest.raises(anthropic.PermissionDeniedError) as ae:
        anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0).messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert ae.value.body["error"]["type"] == "permission_error" and "claude-sonnet-4-6" in str(ae.value)
    gclient = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=gateway.url, api_version="v1beta"))
    with pytest.raises(genai_errors.ClientError) as ge:
        gclient.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert ge.value.code == 403 and ge.value.status == "PERMISSION_DENIED"


def test_provider_outside_the_policy_is_403(gateway: Gateway) -> None:
    key = new_key(gateway, "--allow-provider", "anthropic")["key"]
    r = chat(gateway, key)
    assert r.status_code == 403 and "openai" in r.json()["error"]["message"]
    message = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0).messages.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert message.content


def test_rpm_limit_is_429_with_retry_after_and_ratelimit_headers(gateway: Gateway) -> None:
    key = new_key(gateway, "--rpm", "3", "--tpm", "100000")["key"]
    answers = [chat(gateway, key) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    first, refused = answers[0], answers[3]
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert "x-ratelimit-reset-requests" in first.headers
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    # The SDK sees it as a rate-limit error with the header.
    with pytest.raises(openai.RateLimitError) as e:
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert e.value.response.headers["retry-after"]


def test_tpm_limit_is_429(gateway: Gateway) -> None:
    key = new_key(gateway, "--tpm", "60")["key"]
    prompt = " ".join(["word"] * 40)  # 40 tokens at the fake provider; estimated higher before the call
    first = chat(gateway, key, prompt=prompt)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "60"
    second = chat(gateway, key, prompt=prompt)
    assert second.status_code == 429 and "60 tokens per minute" in second.json()["error"]["message"]
    assert int(second.headers["retry-after"]) >= 1


def test_free_plan_gives_default_limits(gateway: Gateway) -> None:
    key = new_key(gateway, "--plan", "free")["key"]
    r = chat(gateway, key)
    assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "20"


def test_spent_budget_is_402_before_forwarding(gateway: Gateway, exec_id: str) -> None:
    # The budget admits one call's largest cost (20 output tokens, the prompt / 3 in); after it, what is
    # left does not cover another (the reservation rule, issue 12).
    key = new_key(gateway, "--budget-usd", "0.000015", "--budget-period", "daily")["key"]
    assert chat(gateway, key, **{"x-execution-id": exec_id, "x-fake-reply": "one two three four five six seven "
                                 "eight nine ten"}).status_code == 200
    gateway.wait_records(execution_id=exec_id)
    before = len(gateway.fake.requests())
    r = chat(gateway, key)
    assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded"
    assert "budget" in r.json()["error"]["message"] and "spent" in r.json()["error"]["message"]
    assert len(gateway.fake.requests()) == before, "a refused call must not reach the provider"
    messages = httpx.post(f"{gateway.url}/v1/messages", headers={"x-api-key": key},
                          json={"model": "claude-sonnet-4-6", "max_tokens": 5,
                                "messages": [{"role": "user", "content": "hi"}]})
    assert messages.status_code == 402 and messages.json()["type"] == "error"


def test_parallel_requests_overspend_at_most_what_was_in_flight(gateway: Gateway) -> None:
    """20 parallel calls against a budget that covers 5: the in-flight rule bounds the overshoot."""
    prices = PriceBook()
    reply = "one two three four five six seven eight nine ten"
    body = {"model": "gpt-4o-mini", "max_tokens": 10,
            "messages": [{"role": "user", "content": "please answer with exactly ten words"}]}
    # What one call really costs (the fake's formula: prompt words in, reply words out).
    one_call = prices.token_cost("openai", "gpt-4o-mini", TokenUsage(input_tokens=6, output_tokens=10))
    budget = 5 * one_call
    created = new_key(gateway, "--budget-usd", repr(budget))
    workflow = f"inflight-{uuid.uuid4().hex[:6]}"

    def call(_: int) -> httpx.Response:
        return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60, headers={
            "authorization": f"Bearer {created['key']}", "x-fake-delay": "0.5", "x-fake-reply": reply,
            "x-workflow-tag": workflow})

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(call, range(20)))
    ok = [a for a in answers if a.status_code == 200]
    # Refused while the budget is held by calls in flight: 429 with Retry-After (issue 12), or 402 once spent.
    refused = [a for a in answers if a.status_code in (402, 429)]
    assert len(ok) + len(refused) == 20 and ok and refused
    assert all(a.headers.get("retry-after") for a in refused if a.status_code == 429)
    records = gateway.wait_records(count=20, workflow=workflow)
    spent = sum(r["cost_usd"] for r in records)
    billed = sum(prices.token_cost("openai", "gpt-4o-mini", TokenUsage(
        input_tokens=a.json()["usage"]["prompt_tokens"], output_tokens=a.json()["usage"]["completion_tokens"]))
        for a in ok)
    assert spent == pytest.approx(billed), "the recorded spend is what the provider billed"
    # Calls are admitted only while spent + reserved + their reservation fits and each reserves at least
    # its real cost: no overshoot.
    assert spent <= budget * 1.0001
    assert len(ok) <= 6


def test_models_list_shows_only_what_the_key_may_use(gateway: Gateway) -> None:
    key = new_key(gateway, "--allow-model", "gpt-4o*", "--allow-provider", "openai")["key"]
    ids = {m.id for m in openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0).models.list()}
    assert ids and all(i.startswith("gpt-4o") for i in ids)

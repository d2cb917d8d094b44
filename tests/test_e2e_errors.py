"""Error answers in each endpoint's own shape: 400, 401, 403, 404, 502, 504, and upstream errors passed through."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from conftest import FakeProvider, Gateway, free_port, start_gateway, stop
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def post(gw: Gateway, path: str, key: str | None, **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(f"{gw.url}{path}", headers=headers, timeout=30, **kwargs)


def test_bad_json_is_400_in_openai_shape(gateway: Gateway) -> None:
    r = post(gateway, "/v1/chat/completions", gateway.key, content=b"{nope")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json" and "not valid JSON" in r.json()["error"]["message"]


def test_bad_json_on_messages_is_400_in_anthropic_shape(gateway: Gateway) -> None:
    r = post(gateway, "/v1/messages", gateway.key, content=b"[1")
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"


def test_missing_key_is_401(gateway: Gateway) -> None:
    r = post(gateway, "/v1/chat/completions", None, json=CHAT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


def test_unknown_key_is_401_in_each_shape(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="tsk_unknown", max_retries=0).chat.completions.create(**CHAT)
    with pytest.raises(anthropic.AuthenticationError) as ae:
        anthropic.Anthropic(base_url=gateway.url, api_key="tsk_unknown", max_retries=0).messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert ae.value.body["error"]["type"] == "authentication_error"
    gclient = genai.Client(api_key="tsk_unknown",
                           http_options=types.HttpOptions(base_url=gateway.url, api_version="v1beta"))
    with pytest.raises(genai_errors.ClientError) as ge:
        gclient.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert ge.value.code == 401 and ge.value.status == "UNAUTHENTICATED"


def test_revoked_key_is_401(gateway: Gateway) -> None:
    import json

    key = json.loads(gateway.cli("keys", "create", f"short-lived-{time.time_ns()}", "--json").stdout)
    # A key created after the gateway started is found on first use.
    assert post(gateway, "/v1/chat/completions", key["key"], json=CHAT).status_code == 200
    gateway.cli("keys", "revoke", key["id"])
    deadline = time.monotonic() + 10
    while (r := post(gateway, "/v1/chat/completions", key["key"], json=CHAT)).status_code == 200:
        assert time.monotonic() < deadline, "a revoked key kept working"
        time.sleep(0.2)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_unknown_model_is_404(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0).chat.completions.create(
            model="gpt-does-not-exist", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-does-not-exist" in str(e.value)


def test_upstream_too_slow_is_504(gateway: Gateway, exec_id: str) -> None:
    r = post(gateway, "/v1/chat/completions", gateway.key, json=CHAT,
             headers={"x-fake-delay": "10", "x-execution-id": exec_id})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert r.headers["x-tokensense-attempts"] == "2"  # retried once ([routing] retries = 1), as slow again
    records = gateway.wait_records(2, execution_id=exec_id)
    assert [(rec["attempt"], rec["status"], rec["provider"]) for rec in records] == [(1, 504, "openai"), (2, 504, "openai")]


def test_upstream_errors_pass_through_and_are_metered(gateway: Gateway, exec_id: str) -> None:
    with pytest.raises(anthropic.APIStatusError) as e:
        anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0,
                            default_headers={"x-fake-status": "529", "x-execution-id": exec_id}).messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 529 and e.value.body["error"]["type"] == "overloaded_error"
    assert e.value.response.headers["x-tokensense-attempts"] == "2"  # retried once, overloaded again
    records = gateway.wait_records(2, execution_id=exec_id)
    assert [(r["attempt"], r["status"]) for r in records] == [(1, 529), (2, 529)] and all(r["error"] for r in records)


@pytest.fixture(scope="module")
def broken_gateway(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    """A gateway whose OpenAI upstream is down and which has no Mistral key."""
    gw = start_gateway(tmp_path_factory.mktemp("broken"), fake_provider, extra_env={
        "TOKENSENSE_OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}", "MISTRAL_API_KEY": None})
    yield gw
    stop(gw.process)


def test_no_provider_key_is_403(broken_gateway: Gateway) -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        openai.OpenAI(base_url=f"{broken_gateway.url}/v1", api_key=broken_gateway.key, max_retries=0
                      ).chat.completions.create(model="mistral-small-latest", messages=[{"role": "user", "content": "hi"}])
    assert "tokensense providers set mistral" in str(e.value)


def test_upstream_down_is_502_in_each_shape(broken_gateway: Gateway, exec_id: str) -> None:
    r = post(broken_gateway, "/v1/chat/completions", broken_gateway.key, json=CHAT,
             headers={"x-execution-id": exec_id})
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "upstream_error"
    records = broken_gateway.wait_records(2, execution_id=exec_id)
    assert [(rec["attempt"], rec["status"]) for rec in records] == [(1, 502), (2, 502)]


def test_nothing_secret_in_the_gateway_log(gateway: Gateway) -> None:
    log = gateway.log()
    assert gateway.key not in log
    for secret in ("sk-test-openai", "sk-ant-stored-key", "gm-test-gemini"):
        assert secret not in log

"""Retries, fallbacks and provider-key pools end to end: a gateway and a fake provider that fails on purpose.

The fake provider's /_fake/faults program failures per provider (path prefix), key and
model; each test clears them first. The gateway here has its own config.toml:
fast backoff, a per-model first-byte timeout, and a configured fallback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from conftest import STORED_ANTHROPIC_KEY, FakeProvider, Gateway, free_port, start_gateway, stop

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_faults")]  # conftest: faults cleared around each test

CONFIG = """
[routing]
retries = 1
max_retry_wait = 5
backoff = 0.05
max_backoff = 0.1
breaker_failures = 100  # the tests here fail the same keys on purpose, many times

[routing.timeouts]
"gpt-4.1-mini" = { first_byte = 1 }

[fallbacks]
"gpt-4o-mini" = ["claude-haiku-4-5"]
"""
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fake(fake_provider: FakeProvider) -> FakeProvider:
    """The session's fake: the faults programmed here are global to it, so each test clears them before and after
    (`no_faults`), and gateways make no calls of their own (nothing else reaches it while a test here runs)."""
    return fake_provider


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("reliability")
    config = tmp / "config.toml"
    # An OpenAI-compatible provider whose models no catalog prices: a budget cannot count their cost.
    config.write_text(CONFIG + f'\n[providers.unpriced]\nbase_url = "{fake.url}/unpriced"\n'
                      'api_key_env = "UNPRICED_API_KEY"\n')

    def prepare(gw: Gateway) -> None:  # before the start: loaded then, no wait for the second-by-second reload
        # Mistral: a pool of two keys. xAI: a good key and one whose base URL refuses connections.
        gw.cli("providers", "set", "mistral", "--api-key", "mis-a")
        gw.cli("providers", "set", "mistral", "--api-key", "mis-b", "--name", "backup")
        gw.cli("providers", "set", "xai", "--api-key", "xai-good", "--base-url", f"{fake.url}/xai")
        gw.cli("providers", "set", "xai", "--api-key", "xai-dead", "--name", "dead",
               "--base-url", f"http://127.0.0.1:{free_port()}")
        limited = json.loads(gw.cli("keys", "create", "limited", "--allow-model", "gpt-4o", "--allow-model",
                                    "gemini-*", "--json").stdout)
        broke = json.loads(gw.cli("keys", "create", "broke", "--budget-usd", "0.01", "--json").stdout)
        gw.extra.update(limited=limited["key"], broke=broke["key"])

    gw = start_gateway(tmp, fake, extra_env={"TOKENSENSE_CONFIG_FILE": str(config),
                                             "UNPRICED_API_KEY": "unpriced-key"}, prepare=prepare)
    yield gw
    stop(gw.process)


def client(gw: Gateway, exec_id: str, key: str | None = None, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key or gw.key, max_retries=0, timeout=30,
                         default_headers={"x-execution-id": exec_id, **headers})


def attempts_of(gw: Gateway, exec_id: str, count: int) -> list[tuple]:
    records = gw.wait_records(count, execution_id=exec_id)
    assert len({r["request_id"] for r in records}) == 1  # every attempt carries the call's request id
    return [(r["attempt"], r["provider"], r["model"], r["status"]) for r in records]


def test_429_with_retry_after_is_retried_after_that_wait(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o", "status": 429, "retry_after": 1, "times": 1})
    started = time.monotonic()
    raw = client(gw, exec_id).chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    waited = time.monotonic() - started
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert raw.headers["x-tokensense-attempts"] == "2"
    assert raw.headers["x-tokensense-served-by"] == "openai/gpt-4o"
    assert waited >= 1.0  # the provider's Retry-After was waited for (a lower bound: never flaky)
    assert "status 429; Retry-After 1s; retry" in gw.log()
    assert attempts_of(gw, exec_id, 2) == [(1, "openai", "gpt-4o", 429), (2, "openai", "gpt-4o", 200)]
    failed, served = gw.records(execution_id=exec_id)
    assert failed["cost_usd"] == 0 and failed["output_tokens"] == 0 and failed["error"]
    assert served["output_tokens"] > 0 and served["cost_usd"] > 0
    assert len([r for r in fake.requests() if r["prefix"] == "/openai"]) == 2


def test_503_and_529_are_retried_with_backoff(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o", "status": 503, "times": 1},
           {"prefix": "/anthropic", "model": "claude-sonnet-4-6", "status": 529, "times": 1})
    raw = client(gw, exec_id).chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.parse().choices[0].message.content and raw.headers["x-tokensense-attempts"] == "2"
    assert attempts_of(gw, exec_id, 2) == [(1, "openai", "gpt-4o", 503), (2, "openai", "gpt-4o", 200)]

    other = exec_id + "-claude"
    claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0,
                                 default_headers={"x-execution-id": other})
    raw_message = claude.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=20, messages=HI)
    assert raw_message.parse().content[0].text and raw_message.headers["x-tokensense-attempts"] == "2"
    assert attempts_of(gw, other, 2) == [(1, "anthropic", "claude-sonnet-4-6", 529),
                                         (2, "anthropic", "claude-sonnet-4-6", 200)]
    assert "status 529; backoff; retry" in gw.log()


def test_retries_used_up_give_the_last_failure(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o", "status": 503, "times": 5})
    with pytest.raises(openai.InternalServerError) as e:
        client(gw, exec_id).chat.completions.create(model="gpt-4o", messages=HI)
    assert e.value.status_code == 503 and e.value.response.headers["x-tokensense-attempts"] == "2"
    assert attempts_of(gw, exec_id, 2) == [(1, "openai", "gpt-4o", 503), (2, "openai", "gpt-4o", 503)]


def test_connection_refused_is_retried_on_another_key_of_the_pool(gw: Gateway, exec_id: str) -> None:
    # Round-robin over `default` (answers) and `dead` (refuses connections): within two calls one starts on `dead`.
    retried = None
    for n in range(3):
        raw = client(gw, f"{exec_id}-{n}").chat.completions.with_raw_response.create(model="grok-3-mini", messages=HI)
        assert raw.parse().choices[0].message.content
        if raw.headers["x-tokensense-attempts"] == "2":
            retried = f"{exec_id}-{n}"
            break
    assert retried is not None
    first, second = gw.wait_records(2, execution_id=retried)
    assert (first["attempt"], first["status"], second["attempt"], second["status"]) == (1, 502, 2, 200)
    assert "refused" in first["error"].lower() or "connect" in first["error"].lower()


def test_slow_first_byte_hits_the_models_timeout_and_is_retried(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    # [routing.timeouts] gives gpt-4.1-mini 1 s to the first byte (the gateway's default here is 3 s).
    fake.program_faults({"prefix": "/openai", "model": "gpt-4.1-mini", "delay": 2.5, "times": 1})
    raw = client(gw, exec_id).chat.completions.with_raw_response.create(model="gpt-4.1-mini", messages=HI)
    assert raw.parse().choices[0].message.content and raw.headers["x-tokensense-attempts"] == "2"
    assert attempts_of(gw, exec_id, 2) == [(1, "openai", "gpt-4.1-mini", 504), (2, "openai", "gpt-4.1-mini", 200)]
    assert "1 seconds" in gw.records(execution_id=exec_id)[0]["error"]


def test_configured_fallback_openai_to_claude_through_translation(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o-mini", "status": 503, "times": 2})
    raw = client(gw, exec_id).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI,
                                                                         max_tokens=30)
    completion = raw.parse()  # the OpenAI SDK reads Claude's answer, translated
    assert completion.object == "chat.completion" and completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-tokensense-attempts"] == "3"
    assert raw.headers["x-tokensense-served-by"] == "anthropic/claude-haiku-4-5"
    assert attempts_of(gw, exec_id, 3) == [(1, "openai", "gpt-4o-mini", 503), (2, "openai", "gpt-4o-mini", 503),
                                           (3, "anthropic", "claude-haiku-4-5", 200)]
    assert gw.records(execution_id=exec_id)[2]["cost_usd"] > 0
    sent = fake.last("anthropic")
    assert sent["path"].endswith("/v1/messages") and sent["body"]["model"] == "claude-haiku-4-5"
    assert sent["headers"]["x-api-key"] == STORED_ANTHROPIC_KEY and "authorization" not in sent["headers"]
    assert not any(h.startswith("x-stainless") for h in sent["headers"])


def test_streamed_call_failing_before_its_first_byte_falls_back_and_arrives_whole(
        gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o-mini", "status": 502, "times": 2})
    with client(gw, exec_id).chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=HI, max_tokens=30, stream=True,
            stream_options={"include_usage": True}) as response:
        assert response.headers["x-tokensense-served-by"] == "anthropic/claude-haiku-4-5"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    records = gw.wait_records(3, execution_id=exec_id)
    assert [(r["attempt"], r["status"], r["stream"]) for r in records] == [(1, 502, 1), (2, 502, 1), (3, 200, 1)]
    assert records[2]["output_tokens"] == chunks[-1].usage.completion_tokens


def test_retried_stream_without_include_usage_gets_no_usage_chunk(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o", "status": 500, "times": 1})
    stream = client(gw, exec_id).chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks)  # TokenSense asked for it, and took it out again
    served = gw.wait_records(2, execution_id=exec_id)[1]
    assert served["attempt"] == 2 and served["output_tokens"] > 0 and served["cost_usd"] > 0


def test_stream_broken_after_its_first_byte_is_not_retried(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o", "broken": True, "times": 1})
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        list(client(gw, exec_id).chat.completions.create(model="gpt-4o", messages=HI, stream=True))
    time.sleep(0.5)
    records = gw.wait_records(1, execution_id=exec_id)
    assert [r["attempt"] for r in records] == [1]
    assert len([r for r in fake.requests() if r["prefix"] == "/openai"]) == 1  # never sent again


def test_header_fallback_to_gemini_and_the_header_is_not_forwarded(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o", "status": 500, "times": 2})
    raw = client(gw, exec_id, **{"x-tokensense-fallbacks": "gemini-2.5-flash"}).chat.completions.with_raw_response \
        .create(model="gpt-4o", messages=HI)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-tokensense-served-by"] == "gemini/gemini-2.5-flash"
    assert attempts_of(gw, exec_id, 3)[2] == (3, "gemini", "gemini-2.5-flash", 200)
    assert all("x-tokensense-fallbacks" not in r["headers"] for r in fake.requests())
    bad = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": HI}, timeout=30,
                     headers={"authorization": f"Bearer {gw.key}", "x-tokensense-fallbacks": "a b"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_fallbacks"


def test_native_messages_call_falls_back_only_to_models_served_natively(
        gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/anthropic", "model": "claude-haiku-4-5", "status": 529, "times": 2})
    claude = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0, default_headers={
        "x-execution-id": exec_id, "x-tokensense-fallbacks": "gpt-4o-mini,claude-sonnet-4-6"})
    raw = claude.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=20, messages=HI)
    message = raw.parse()
    assert message.content[0].text and raw.headers["x-tokensense-served-by"] == "anthropic/claude-sonnet-4-6"
    assert attempts_of(gw, exec_id, 3)[2] == (3, "anthropic", "claude-sonnet-4-6", 200)
    assert "fallback gpt-4o-mini skipped: OpenAI does not serve the `messages` endpoint" in gw.log()
    assert not [r for r in fake.requests() if r["prefix"] == "/openai"]


def test_a_fallback_the_key_may_not_use_is_skipped(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o", "status": 503, "times": 2})
    raw = client(gw, exec_id, gw.extra["limited"], **{"x-tokensense-fallbacks": "claude-haiku-4-5,gemini-2.5-flash"}) \
        .chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.parse().choices[0].message.content
    assert (raw.headers["x-tokensense-served-by"], raw.headers["x-tokensense-attempts"]) == ("gemini/gemini-2.5-flash", "3")
    assert not [r for r in fake.requests() if r["prefix"] == "/anthropic"]
    assert "fallback claude-haiku-4-5 skipped: The key `limited` may not use the model" in gw.log()


def test_a_fallback_reserves_its_own_budget(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    # The key's $0.01 covers gpt-4o-mini's largest cost (2000 output tokens, about $0.0012) but not, on top of
    # it, gpt-4o's (about $0.02): the call goes, and its fallback's own reservation is refused, so it is skipped.
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o-mini", "status": 503, "times": 2})
    with pytest.raises(openai.InternalServerError) as e:
        client(gw, exec_id, gw.extra["broke"], **{"x-tokensense-fallbacks": "gpt-4o"}) \
            .chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=2000)
    assert e.value.response.headers["x-tokensense-attempts"] == "2"
    assert not [r for r in fake.requests() if r["body"].get("model") == "gpt-4o"]
    assert "fallback gpt-4o skipped: the key `broke`'s budget of $0.01 cannot cover it" in gw.log()
    assert [r[0] for r in attempts_of(gw, exec_id, 2)] == [1, 2]


def test_a_fallback_to_an_unpriced_model_is_refused_for_a_key_with_a_budget(
        gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    """Issue 22: fallbacks were policed by a second copy of the policy that lacked the unpriced-model refusal,
    so a budgeted key reached, through `x-tokensense-fallbacks`, a model whose cost cannot be counted."""
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o-mini", "status": 503, "times": 2})
    with pytest.raises(openai.InternalServerError) as e:
        client(gw, exec_id, gw.extra["broke"], **{"x-tokensense-fallbacks": "unpriced/local-model"}) \
            .chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=10)
    assert e.value.response.headers["x-tokensense-attempts"] == "2"
    assert not [r for r in fake.requests() if r["prefix"] == "/unpriced"]
    assert "fallback unpriced/local-model skipped: The key `broke` has a budget, and TokenSense knows no price " \
        "for the model `unpriced/local-model`" in gw.log()
    assert [r[0] for r in attempts_of(gw, exec_id, 2)] == [1, 2]
    # The same fallback for a key without a budget is tried (and answers): only the missing price refuses it.
    fake.program_faults({"prefix": "/openai", "model": "gpt-4o-mini", "status": 503, "times": 2})
    answer = client(gw, exec_id, **{"x-tokensense-fallbacks": "unpriced/local-model"}) \
        .chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI, max_tokens=10)
    assert answer.headers["x-tokensense-served-by"] == "unpriced/local-model"
    assert [r for r in fake.requests() if r["prefix"] == "/unpriced"]


def _mistral_keys(fake: FakeProvider) -> list[str]:
    return [r["headers"]["authorization"].split()[-1] for r in fake.requests() if r["prefix"] == "/mistral"]


def test_pool_key_rate_limited_cools_down_and_comes_back(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/mistral", "key": "mis-a", "status": 429, "retry_after": 2, "times": 1})
    mistral = client(gw, exec_id)
    for _ in range(2):  # round-robin: one of these starts on mis-a, is limited, and goes on at once on mis-b
        mistral.chat.completions.create(model="mistral-small-latest", messages=HI)
    assert "mis-a" in _mistral_keys(fake)
    statuses = [(r["attempt"], r["status"]) for r in gw.wait_records(3, execution_id=exec_id)]
    assert (1, 429) in statuses and (2, 200) in statuses
    fake.clear()
    for _ in range(3):  # while mis-a cools down, every call uses mis-b
        mistral.chat.completions.create(model="mistral-small-latest", messages=HI)
    assert _mistral_keys(fake) == ["mis-b"] * 3
    time.sleep(2.2)
    fake.clear()
    for _ in range(4):
        mistral.chat.completions.create(model="mistral-small-latest", messages=HI)
    assert set(_mistral_keys(fake)) == {"mis-a", "mis-b"}  # back in the pool


def test_pool_key_refused_is_taken_out_until_restored(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/mistral", "key": "mis-b", "status": 401, "times": 1})
    mistral = client(gw, exec_id)
    for _ in range(2):
        mistral.chat.completions.create(model="mistral-small-latest", messages=HI)
    assert "mis-b" in _mistral_keys(fake)
    def taken_out(listed: str) -> bool:
        return any("backup" in line and "out" in line for line in listed.splitlines())

    listed = ""
    for _ in range(50):  # the take-out is written to the database by a worker thread
        listed = gw.cli("providers", "list").stdout
        if taken_out(listed):
            break
        time.sleep(0.1)
    assert taken_out(listed), listed
    fake.clear()
    for _ in range(3):
        mistral.chat.completions.create(model="mistral-small-latest", messages=HI)
    assert _mistral_keys(fake) == ["mis-a"] * 3
    gw.cli("providers", "restore", "mistral", "--name", "backup")
    time.sleep(1.5)
    fake.clear()
    for _ in range(4):
        mistral.chat.completions.create(model="mistral-small-latest", messages=HI)
    assert set(_mistral_keys(fake)) == {"mis-a", "mis-b"}


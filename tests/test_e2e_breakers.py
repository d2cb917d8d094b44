"""Breakers only steer (issue 22): a resting key is passed over only when something else can serve.

A real gateway and a fake provider that fails on purpose (/_fake/faults). Anthropic and
OpenAI have one key each here, Mistral a pool of two, xAI one key with a total timeout.
The breaker opens after 3 failures in a row and stays open for a minute: long enough
that, before the fix, every later call in a test got TokenSense's own 429.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import FakeProvider, Gateway, start_fake_provider, start_gateway, stop

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_faults")]  # conftest: faults cleared around each test

CONFIG = """
[routing]
retries = 1
backoff = 0.05
max_backoff = 0.1
breaker_failures = 3
breaker_cooldown = 60

[routing.timeouts]
"grok-3-mini" = { total = 1 }
"""
HI = [{"role": "user", "content": "hi"}]
OVERLOADED = "Overloaded (fake error requested with x-fake-status: 529)."


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    fake = start_fake_provider()  # its own: faults are global to a fake
    yield fake
    stop(fake.process)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("breakers")
    (tmp / "config.toml").write_text(CONFIG)

    def prepare(gw: Gateway) -> None:  # before the start: loaded then, no wait for the second-by-second reload
        gw.cli("providers", "set", "mistral", "--api-key", "mis-a")
        gw.cli("providers", "set", "mistral", "--api-key", "mis-b", "--name", "backup")

    gw = start_gateway(tmp, fake, extra_env={"TOKENSENSE_CONFIG_FILE": str(tmp / "config.toml"),
                                             "TOKENSENSE_CLIENT_IDLE_TIMEOUT": "1"}, prepare=prepare)
    yield gw
    stop(gw.process)


def chat(gw: Gateway, model: str, exec_id: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", json={"model": model, "messages": HI, **extra}, timeout=30,
                      headers={"authorization": f"Bearer {gw.key}", "x-execution-id": exec_id})


def messages(gw: Gateway, model: str, exec_id: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/messages", json={"model": model, "max_tokens": 20, "messages": HI}, timeout=30,
                      headers={"x-api-key": gw.key, "anthropic-version": "2023-06-01", "x-execution-id": exec_id})


def statuses(gw: Gateway, exec_id: str, count: int) -> list[tuple[int, int]]:
    return [(r["attempt"], r["status"]) for r in gw.wait_records(count, execution_id=exec_id)]


def test_lone_anthropic_key_failing_529_is_still_tried_and_529_reaches_the_client(
        gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    """Issue 22: after a few 529s the lone key rested and healthy calls got TokenSense's 429 for half a minute."""
    fake.program_faults({"provider": "anthropic", "status": 529, "times": 10})
    for n in range(5):
        answer = messages(gw, "claude-haiku-4-5", f"{exec_id}-{n}")
        assert answer.status_code == 529, answer.text  # the provider's status and body, in its own shape
        assert answer.json()["error"] == {"type": "overloaded_error", "message": OVERLOADED}
        assert answer.headers["x-tokensense-attempts"] == "2"
        assert statuses(gw, f"{exec_id}-{n}", 2) == [(1, 529), (2, 529)]  # one record per attempt
    assert "anthropic key default: circuit open after 3 failures" in gw.log()  # the breaker did open
    healthy = messages(gw, "claude-haiku-4-5", f"{exec_id}-ok")
    assert healthy.status_code == 200 and healthy.json()["content"][0]["text"]
    assert statuses(gw, f"{exec_id}-ok", 1) == [(1, 200)]
    assert len(fake.requests()) == 11  # every call reached the provider
    assert "every anthropic key is resting" not in gw.log()


def test_lone_openai_key_failing_529_is_still_tried_in_openai_format_and_translated(
        gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"provider": "openai", "status": 529, "times": 10})
    for n in range(5):
        answer = chat(gw, "gpt-4o-mini", f"{exec_id}-{n}")
        assert answer.status_code == 529, answer.text
        assert answer.json()["error"]["message"] == OVERLOADED and answer.json()["error"]["type"] == "server_error"
        assert statuses(gw, f"{exec_id}-{n}", 2) == [(1, 529), (2, 529)]
    assert "openai key env: circuit open after 3 failures" in gw.log()
    healthy = chat(gw, "gpt-4o-mini", f"{exec_id}-ok")
    assert healthy.status_code == 200 and healthy.json()["choices"][0]["message"]["content"]
    assert "every openai key is resting" not in gw.log()

    # An OpenAI-format call to Claude: Anthropic's 529 reaches the client as 529, in OpenAI's error shape.
    fake.program_faults({"provider": "anthropic", "status": 529, "times": 2})
    translated = chat(gw, "claude-haiku-4-5", f"{exec_id}-claude", max_tokens=20)
    assert translated.status_code == 529, translated.text
    assert translated.json()["error"]["message"] == OVERLOADED
    assert statuses(gw, f"{exec_id}-claude", 2) == [(1, 529), (2, 529)]


def _mistral_keys(fake: FakeProvider) -> list[str]:
    return [r["headers"]["authorization"].split()[-1] for r in fake.requests() if r["prefix"] == "/mistral"]


def test_with_two_keys_the_failing_one_rests_and_the_other_serves(
        gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    fake.program_faults({"prefix": "/mistral", "key": "mis-a", "status": 503})
    for n in range(8):  # round-robin: calls starting on mis-a are retried at once on mis-b
        answer = chat(gw, "mistral-small-latest", f"{exec_id}-{n}")
        assert answer.status_code == 200, answer.text
    assert _mistral_keys(fake).count("mis-a") == 3  # three failures in a row open its circuit
    assert "mistral key default: circuit open after 3 failures" in gw.log()
    fake.clear()
    for n in range(4):
        assert chat(gw, "mistral-small-latest", f"{exec_id}-after-{n}").status_code == 200
    assert _mistral_keys(fake) == ["mis-b"] * 4  # mis-a rests while mis-b can serve


def test_a_stream_slow_after_its_headers_leaves_the_key_usable(gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    """Issue 22: an answer too slow for the total timeout after its headers counted as the key failing."""
    # Each call: a 503, then the retry's stream is too slow for grok-3-mini's total timeout (1 s).
    slow = {"x-fake-chunks": "10", "x-fake-chunk-delay-ms": "250"}
    for n in range(3):
        fake.program_faults({"prefix": "/xai", "status": 503, "times": 1})
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=30,
                          json={"model": "grok-3-mini", "messages": HI, "stream": True},
                          headers={"authorization": f"Bearer {gw.key}", "x-execution-id": f"{exec_id}-{n}",
                                   **slow}) as answer:
            answer.read()
        assert answer.status_code == 504 and "did not complete within 1 seconds" in answer.text
        assert statuses(gw, f"{exec_id}-{n}", 2) == [(1, 503), (2, 504)]
    # Three 503s, each followed by an answer that came (slowly): no streak of three failures.
    assert "xai key env: circuit open" not in gw.log()
    healthy = chat(gw, "grok-3-mini", f"{exec_id}-ok")
    assert healthy.status_code == 200 and healthy.headers["x-tokensense-attempts"] == "1"


def test_a_resting_key_with_a_fallback_is_passed_over_and_the_fallback_may_take_its_time(
        gw: Gateway, fake: FakeProvider, exec_id: str) -> None:
    """The plan runs in the request stage when the first key rests: the client connection must not look
    half-sent meanwhile (it was closed after TOKENSENSE_CLIENT_IDLE_TIMEOUT, here 1 s)."""
    fake.program_faults({"prefix": "/openai", "status": 503, "times": 4})
    for n in range(2):  # two calls of two attempts: three failures in a row open the lone key's circuit
        assert chat(gw, "gpt-4o", f"{exec_id}-{n}").status_code == 503
    fake.program_faults({"provider": "anthropic", "delay": 2, "times": 1})
    fake.clear()
    answer = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                        json={"model": "gpt-4o", "messages": HI, "max_tokens": 20},
                        headers={"authorization": f"Bearer {gw.key}", "x-execution-id": exec_id,
                                 "x-tokensense-fallbacks": "claude-haiku-4-5"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-tokensense-served-by"] == "anthropic/claude-haiku-4-5"
    assert [r["prefix"] for r in fake.requests()] == ["/anthropic"]  # the resting key was passed over
    assert statuses(gw, exec_id, 1) == [(1, 200)]


# --- a run of faulty calls: one record per attempt --------------------------------------------

CHAOS_CONFIG = """
[routing]
backoff = 0.05
max_backoff = 0.1

[routing.timeouts]
"gpt-4.1-mini" = { first_byte = 1 }
"claude-sonnet-4-6" = { first_byte = 1 }
"gpt-4o-2024-08-06" = { total = 1 }
"""
# Each model of the run fails its own way, every time it is asked (5xx, 529, resets, slow first bytes,
# answers cut half-way); two models answer, some calls with slow chunks.
CHAOS_FAULTS = [
    {"model": "gpt-4o", "status": 503}, {"model": "gpt-4o-mini", "status": 500},
    {"model": "gpt-4.1", "reset": True}, {"model": "gpt-4.1-mini", "delay": 2},
    {"model": "gpt-4.1-nano", "broken": True}, {"model": "claude-haiku-4-5", "status": 529},
    {"model": "claude-opus-4-1", "reset": True}, {"model": "claude-sonnet-4-6", "delay": 2},
    {"model": "claude-3-5-haiku-latest", "status": 502},
]
CHAOS_MODELS = [("openai", f["model"]) if f["model"].startswith("gpt") else ("anthropic", f["model"])
                for f in CHAOS_FAULTS] + [("openai", "gpt-4o-2024-08-06"), ("anthropic", "claude-sonnet-4-5"),
                                          ("openai", "claude-haiku-4-5")]


def _chaos_call(gw: Gateway, fmt: str, model: str, stream: bool, slow: bool) -> tuple[str, int | None, str | None]:
    exec_id = f"chaos-{uuid.uuid4().hex[:10]}"
    headers = {"x-execution-id": exec_id}
    if slow:
        headers.update({"x-fake-chunks": "8", "x-fake-chunk-delay-ms": "150"})
    body: dict = {"model": model, "messages": HI, "max_tokens": 20, "stream": stream}
    if fmt == "openai":
        url = f"{gw.url}/v1/chat/completions"
        headers["authorization"] = f"Bearer {gw.key}"
    else:
        url = f"{gw.url}/v1/messages"
        headers.update({"x-api-key": gw.key, "anthropic-version": "2023-06-01"})
    try:
        with httpx.Client(timeout=60) as client, client.stream("POST", url, json=body, headers=headers) as answer:
            answer.read()
            return exec_id, answer.status_code, answer.headers.get("x-tokensense-attempts")
    except httpx.HTTPError:  # an answer cut half-way after its first byte
        return exec_id, None, None


def test_a_run_of_faulty_upstream_calls_leaves_one_record_per_attempt(tmp_path: Path) -> None:
    """Issue 22: in a run of 56 faulty-upstream calls, 2 left no usage record."""
    fake = start_fake_provider()
    (tmp_path / "config.toml").write_text(CHAOS_CONFIG)
    gw = start_gateway(tmp_path, fake, extra_env={"TOKENSENSE_CONFIG_FILE": str(tmp_path / "config.toml")})
    try:
        fake.program_faults(*CHAOS_FAULTS)
        rng = random.Random(22)
        plan = [(*CHAOS_MODELS[n % len(CHAOS_MODELS)], rng.random() < 0.5, rng.random() < 0.3) for n in range(60)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            calls = list(pool.map(lambda args: _chaos_call(gw, *args), plan))
        upstream = len(fake.requests())
        gw.wait_records(upstream, timeout=30)  # records are written in batches
        records = {exec_id: gw.records(execution_id=exec_id) for exec_id, _, _ in calls}
    finally:
        stop(gw.process)
        stop(fake.process)
    # Every attempt sent upstream is one record, and nothing else is: no call answered by TokenSense alone.
    assert sum(len(r) for r in records.values()) == upstream
    for (exec_id, status, attempts), (fmt, model, stream, slow) in zip(calls, plan, strict=True):
        rows = records[exec_id]
        what = f"{fmt} {model} stream={stream} slow={slow}: {status}, attempts {attempts}"
        assert [r["attempt"] for r in rows] == list(range(1, len(rows) + 1)), what
        assert len({r["request_id"] for r in rows}) == 1, what
        if attempts is not None:
            assert int(attempts) == len(rows), what
        assert status != 429, what  # the upstream never said 429: neither may TokenSense
    answered = Counter(status for _, status, _ in calls)
    assert answered[200] >= 5 and answered[529] >= 4, answered

"""Golden pricing set (issue 13): recorded provider usage objects through the gateway, priced to the micro-dollar.

Each `tests/fixtures/pricing/*.json` holds a usage object as a provider's docs
or SDK show it (`usage_source`), the price page it was priced from
(`price_page`, URL and date) and the cost computed by hand
(`expected_cost_usd`, with its `arithmetic`). The fake provider answers that
usage object verbatim (`x-fake-usage`), unstreamed and streamed, natively and
(for Anthropic and Gemini) through the OpenAI chat translation. The test checks
the record (tokens, breakdown, cost), the `x-tokensense-cost-usd` header, the
record as `GET /v1/tokensense/requests/{id}` answers it, and that
`tokensense reprice` of the recorded flows gives the recorded cost.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import FakeProvider, Gateway, start_gateway, stop

FIXTURES = Path(__file__).parent / "fixtures" / "pricing"
CASES = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]
MICRO = 1e-9  # "to the micro-dollar", with room to spare: costs are compared to a billionth of a dollar


def _modes(case: dict) -> list[str]:
    modes = ["unstreamed", "streamed"] if True in case["streams"] else ["unstreamed"]
    if case["endpoint"] in ("messages", "gemini"):  # the same answer through the OpenAI chat translation
        modes += [f"translated-{m}" for m in modes]
    return modes


CALLS = [(case["case"], mode) for case in CASES for mode in _modes(case)]


def _wav(seconds: float = 1.0) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * int(8000 * seconds))
    return out.getvalue()


@dataclass
class Sent:
    case: dict
    mode: str
    status: int
    request_id: str
    cost_header: str | None
    record: dict | None = None
    lookup: dict = field(default_factory=dict)


def _send(client: httpx.Client, gw: Gateway, case: dict, mode: str, exec_id: str) -> Sent:
    stream = mode.endswith("-streamed") or mode == "streamed"
    translated = mode.startswith("translated")
    headers = {"authorization": f"Bearer {gw.key}", "x-execution-id": exec_id,
               "x-workflow-tag": f"{case['case']}:{mode}",
               "x-fake-usage": "b64:" + base64.b64encode(json.dumps(case["usage"]).encode()).decode()}
    model, endpoint = case["model"], case["endpoint"]
    files = None
    if endpoint == "chat" or translated:
        path = "/v1/chat/completions"
        body = {"model": model, "messages": [{"role": "user", "content": "What does this cost?"}], "stream": stream,
                **case["request"]}
    elif endpoint == "embeddings":
        path, body = "/v1/embeddings", {"model": model, "input": "What does this cost?"}
    elif endpoint == "messages":
        path = "/v1/messages"
        body = {"model": model, "max_tokens": 1024, "stream": stream,
                "messages": [{"role": "user", "content": "What does this cost?"}]}
    elif endpoint == "gemini":
        path = f"/v1beta/models/{model}:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")
        body = {"contents": [{"role": "user", "parts": [{"text": "What does this cost?"}]}]}
    elif endpoint == "images":
        path, body = "/v1/images/generations", {"model": model, "prompt": "a lighthouse", "size": "1024x1024"}
    elif endpoint == "transcriptions":
        path, body = "/v1/audio/transcriptions", None
        files = {"file": ("speech.wav", _wav(), "audio/wav")}
    else:
        raise AssertionError(f"unknown endpoint {endpoint}")
    if files is not None:
        response = client.post(gw.url + path, headers=headers, files=files, data={"model": model})
    else:
        response = client.post(gw.url + path, headers=headers, json=body)
    return Sent(case, mode, response.status_code, response.headers.get("x-tokensense-request-id", ""),
                response.headers.get("x-tokensense-cost-usd"))


@dataclass
class Golden:
    gateway: Gateway
    record_file: Path
    sent: dict[tuple[str, str], Sent]
    other_key: str
    reprice: dict


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Golden]:
    tmp = tmp_path_factory.mktemp("golden")
    record_file = tmp / "calls.flows"
    gw = start_gateway(tmp, fake_provider, serve_args=["--record", str(record_file)])
    exec_id = f"golden-{uuid.uuid4().hex[:8]}"
    other_key = json.loads(gw.cli("keys", "create", "someone-else", "--json").stdout)["key"]
    try:
        with httpx.Client(timeout=30) as client:
            sent = {(c["case"], mode): _send(client, gw, c, mode, exec_id)
                    for c in CASES for mode in _modes(c)}
            records = {r["workflow"]: r for r in gw.wait_records(len(sent), execution_id=exec_id)}
            for (name, mode), s in sent.items():
                s.record = records.get(f"{name}:{mode}")
                own = client.get(f"{gw.url}/v1/tokensense/requests/{s.request_id}",
                                 headers={"authorization": f"Bearer {gw.key}"})
                other = client.get(f"{gw.url}/v1/tokensense/requests/{s.request_id}",
                                   headers={"authorization": f"Bearer {other_key}"})
                s.lookup = {"own": (own.status_code, own.json()), "other": other.status_code}
    finally:
        stop(gw.process)  # SIGTERM: the recording is complete afterwards
    reprice = json.loads(gw.cli("reprice", str(record_file), "--json").stdout)
    yield Golden(gw, record_file, sent, other_key, reprice)


@pytest.mark.parametrize(("name", "mode"), CALLS, ids=[f"{n}-{m}" for n, m in CALLS])
def test_the_record_has_every_counter_and_the_hand_computed_cost(golden: Golden, name: str, mode: str) -> None:
    sent = golden.sent[(name, mode)]
    case = sent.case
    assert sent.status == 200, golden.gateway.log()[-2000:]
    record = sent.record
    assert record is not None, f"no record for {name}:{mode}"
    assert record["status"] == 200 and record["request_id"] == sent.request_id
    expected = dict(case["expected_record"])
    details = expected.pop("details", {})
    for column, value in expected.items():
        assert record[column] == value, f"{column}: {record[column]} != {value}"
    stored = json.loads(record["details"]) if record["details"] else {}
    for part, value in details.items():
        assert stored.get(part) == value, f"details.{part}: {stored.get(part)} != {value}"
    assert record["cost_usd"] == pytest.approx(case["expected_cost_usd"], abs=MICRO)
    if "streamed" not in mode:
        assert float(sent.cost_header) == pytest.approx(case["expected_cost_usd"], abs=MICRO)


@pytest.mark.parametrize(("name", "mode"), CALLS, ids=[f"{n}-{m}" for n, m in CALLS])
def test_the_record_is_answered_to_its_key_only(golden: Golden, name: str, mode: str) -> None:
    sent = golden.sent[(name, mode)]
    status, body = sent.lookup["own"]
    assert status == 200 and body["request_id"] == sent.request_id
    assert body["cost_usd"] == pytest.approx(sent.case["expected_cost_usd"], abs=MICRO)
    assert body["input_tokens"] == sent.case["expected_record"]["input_tokens"]
    assert body["details"] == (json.loads(sent.record["details"]) if sent.record["details"] else None)
    assert "key_id" not in body
    assert sent.lookup["other"] == 404


def test_reprice_of_the_recorded_flows_equals_the_recorded_cost(golden: Golden) -> None:
    """Issue 13: reprice at the same catalog gives what live metering recorded, surcharges and tiers included."""
    groups = {g["workflow"]: g for g in golden.reprice["by_workflow"]}
    assert golden.reprice["total"]["requests"] == len(CALLS) and golden.reprice["total"]["unpriced"] == 0
    for (name, mode), sent in golden.sent.items():
        group = groups[f"{name}:{mode}"]
        assert group["requests"] == 1
        assert group["recorded_cost_usd"] == pytest.approx(sent.record["cost_usd"], abs=MICRO), f"{name}:{mode}"
        assert group["cost_usd"] == pytest.approx(sent.case["expected_cost_usd"], abs=MICRO), f"{name}:{mode}"
    assert golden.reprice["total"]["difference_usd"] == pytest.approx(0, abs=MICRO)


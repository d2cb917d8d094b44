"""`[budgets] reserve = "typical"` end to end (issue 26, item 3): a coding agent's `max_tokens: 32000` under a small
budget, the overspend of parallel calls against the documented bound, and the history seeded at start."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from conftest import BIN, FakeProvider, Gateway, free_port, start_gateway, stop, wait_healthy

from tokensense.core.usage import TokenUsage
from tokensense.gateway.reservation import prompt_tokens
from tokensense.gateway.typical_output import MIN_SAMPLES
from tokensense.metering.pricing import PriceBook

pytestmark = pytest.mark.e2e

MODEL = "gpt-4o-mini"
CAP = 32_000  # what a coding agent sends on every turn
TYPICAL = 40  # what the warm-up calls write (x-fake-chunks)
AGENT_BUDGET = 0.005  # less than one call at its cap (32,000 x $0.60/M = $0.0192)
FLEET_BUDGET = 0.05
MESSAGES = [{"role": "user", "content": "Refactor the parser."}]


def _prepare(gw: Gateway) -> None:
    for name, usd in (("agent", AGENT_BUDGET), ("fleet", FLEET_BUDGET)):
        gw.extra[name] = json.loads(gw.cli("keys", "create", name, "--budget-usd", repr(usd), "--json").stdout)["key"]


def _start(tmp, fake: FakeProvider, reserve: str | None) -> Gateway:
    env: dict[str, str | None] = {}
    if reserve is not None:
        config = tmp / "config.toml"
        config.write_text(f'[budgets]\nreserve = "{reserve}"\n')
        env["TOKENSENSE_CONFIG_FILE"] = str(config)
    return start_gateway(tmp, fake, extra_env=env, prepare=_prepare)


@pytest.fixture(scope="module")
def typical_gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    gw = _start(tmp_path_factory.mktemp("typical"), fake_provider, "typical")
    yield gw
    stop(gw.process)


@pytest.fixture(scope="module")
def cap_gw(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Iterator[Gateway]:
    gw = _start(tmp_path_factory.mktemp("cap"), fake_provider, None)  # the default: reserve = "cap"
    yield gw
    stop(gw.process)


def call(gw: Gateway, key: str, *, words: int, delay: float = 0.0) -> tuple[int, str | None]:
    """A coding-agent style call (max_tokens 32000) that writes `words` tokens: (status, error code)."""
    headers = {"x-fake-chunks": str(words)}
    if delay:
        headers["x-fake-delay"] = str(delay)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=60, default_headers=headers)
    try:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=CAP)  # type: ignore[arg-type]
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        error = body.get("error", body) if isinstance(body, dict) else {}
        return e.status_code, error.get("code") if isinstance(error, dict) else None
    return 200, None


def warm_up(gw: Gateway) -> None:
    """The model's outputs through the gateway: 20 calls writing 40 tokens each (a key without a budget)."""
    for _ in range(MIN_SAMPLES):
        assert call(gw, gw.key, words=TYPICAL) == (200, None)


def costs() -> tuple[float, float]:
    """(largest, typical) cost of the test's call: its prompt as the reservation counts it, and 32,000 or 40
    output tokens, at gpt-4o-mini's price."""
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": CAP}
    prompt = prompt_tokens(body)
    prices = PriceBook()
    largest = prices.token_cost("openai", MODEL, TokenUsage(input_tokens=prompt, output_tokens=CAP))
    typical = prices.token_cost("openai", MODEL, TokenUsage(input_tokens=prompt, output_tokens=TYPICAL))
    return largest, typical


def spent(gw: Gateway, key_name: str, served: int) -> float:
    rows = gw.wait_records(served, key_name=key_name, status=200)
    assert len(rows) == served
    return sum(r["cost_usd"] for r in rows)


def parallel_rounds(gw: Gateway, key: str, *, rounds: int = 6, width: int = 10) -> tuple[int, list[int]]:
    """Rounds of `width` parallel calls that write their whole cap (the worst case), until every call of a round is
    refused 402: (calls served, statuses seen)."""
    served, statuses = 0, []
    with ThreadPoolExecutor(width) as pool:
        for _ in range(rounds):
            answers = list(pool.map(lambda _: call(gw, key, words=CAP, delay=0.5), range(width)))
            statuses += [status for status, _ in answers]
            served += sum(status == 200 for status, _ in answers)
            if all(status == 402 for status, _ in answers):
                break
    return served, statuses


def test_typical_admits_a_coding_agent_that_cap_refuses(typical_gw: Gateway, cap_gw: Gateway) -> None:
    largest, typical = costs()
    assert typical < AGENT_BUDGET < largest
    # Until 20 outputs of the model were seen, its cap alone counts: refused like in cap mode.
    assert call(typical_gw, typical_gw.extra["agent"], words=TYPICAL) == (402, "budget_exceeded")
    warm_up(typical_gw)
    warm_up(cap_gw)
    assert call(typical_gw, typical_gw.extra["agent"], words=TYPICAL) == (200, None)
    assert call(cap_gw, cap_gw.extra["agent"], words=TYPICAL) == (402, "budget_exceeded")
    assert not cap_gw.records(key_name="agent", status=200)


def test_history_is_seeded_from_the_records_at_start(typical_gw: Gateway, tmp_path) -> None:
    """A restarted gateway knows the model's outputs from its records: the agent's call is admitted at once.
    (The module's later tests use the restarted process.)"""
    stop(typical_gw.process)
    port = free_port()
    log = (tmp_path / "restart.log").open("w")
    typical_gw.process = subprocess.Popen(
        [str(BIN / "tokensense"), "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=typical_gw.env,
        cwd=tmp_path,
    )
    typical_gw.url = f"http://127.0.0.1:{port}"
    wait_healthy(f"{typical_gw.url}/health", typical_gw.process, "the restarted gateway")
    agent = json.loads(
        typical_gw.cli(
            "keys", "create", f"agent-{uuid.uuid4().hex[:6]}", "--budget-usd", repr(AGENT_BUDGET), "--json"
        ).stdout
    )["key"]
    answers = [call(typical_gw, agent, words=TYPICAL)]
    while answers[-1] != (200, None) and len(answers) < 20:  # the seed is read in a thread at start
        answers.append(call(typical_gw, agent, words=TYPICAL))
    assert answers[-1] == (200, None) and len(answers) <= 3, answers


def test_parallel_calls_overspend_at_most_one_calls_excess(typical_gw: Gateway, cap_gw: Gateway) -> None:
    """Ten parallel calls at a time, each writing its whole cap: typical overspends by at most one call's
    (largest - typical); cap never overspends."""
    largest, typical = costs()
    served, statuses = parallel_rounds(typical_gw, typical_gw.extra["fleet"])
    total = spent(typical_gw, "fleet", served)
    assert set(statuses) <= {200, 402, 429}, statuses
    assert FLEET_BUDGET < total <= FLEET_BUDGET + (largest - typical), (total, served, statuses)
    assert 429 in statuses, "calls in flight held the budget: the parallel ones waited"

    served, statuses = parallel_rounds(cap_gw, cap_gw.extra["fleet"])
    assert spent(cap_gw, "fleet", served) <= FLEET_BUDGET

"""Issue 26 items 1 and 5: budgets on projects, workflows, sources and executions, enforced by real gateways.

The official OpenAI SDK (no retries: a 429 is an answer here) against `tokensense serve` and the fake provider.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from conftest import FakeProvider, Gateway, start_gateway, stop
from own_servers import OwnRedis, wait_until

from tests.conftest import service_missing

pytestmark = [pytest.mark.e2e]

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MAX_TOKENS = 40
HEADERS = {"workflow": "x-workflow-tag", "execution_id": "x-execution-id", "source": "x-source", "project": "x-project"}


def client(gateway: Gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key or gateway.key, max_retries=0, timeout=60)


def chat(sdk: openai.OpenAI, **headers: str) -> tuple[int, str, str | None]:
    """(status, error message or "", request id) of one chat call with these attribution headers."""
    try:
        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": "say hi"}],
            extra_headers={HEADERS[k]: v for k, v in headers.items()},
        )
        return raw.http_response.status_code, "", raw.headers.get("x-tokensense-request-id")
    except openai.APIStatusError as e:
        return e.status_code, e.message, None


def spent(gateway: Gateway, **where: object) -> float:
    return sum(r["cost_usd"] or 0.0 for r in gateway.records(**where))


def reservation_of(gateway: Gateway) -> float:
    """What one call reserves (its largest cost at max_tokens), read from the refusal of a budget too small for it;
    the fake's answer costs much less (5 tokens)."""
    source = f"probe-{uuid.uuid4().hex[:8]}"
    gateway.cli("budgets", "set", "--source", source, "--usd", "0.000000001")
    time.sleep(2)  # the gateway reloads budgets every second (a call before would spend)
    status, message, _ = chat(client(gateway), source=source)
    assert status == 402, (status, message)
    gateway.cli("budgets", "remove", "--source", source)
    return float(re.search(r"\(\$([0-9.]+) at its output cap\)", message).group(1))


@pytest.fixture
def fake(fake_provider: FakeProvider) -> FakeProvider:
    return fake_provider


def test_workflow_budget_shared_by_two_keys_holds_under_50_parallel_calls(tmp_path: Path, fake: FakeProvider) -> None:
    """Two keys without budgets of their own, one workflow budget: 50 parallel calls never spend more than it,
    and the refusals name the workflow's budget; `budgets list --json` and the request lookup agree."""
    gateway = start_gateway(tmp_path, fake)
    try:
        reserved = reservation_of(gateway)
        other = json.loads(gateway.cli("keys", "create", "second", "--json").stdout)["key"]
        budget = round(reserved * 3.5, 10)
        workflow = f"wf-{uuid.uuid4().hex[:6]}"
        gateway.cli("budgets", "set", "--workflow", workflow, "--usd", repr(budget))
        sdks = [client(gateway), client(gateway, other)]
        time.sleep(1.5)  # the gateway reloads budgets every second
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda i: chat(sdks[i % 2], workflow=workflow), range(50)))
        statuses = [r[0] for r in results]
        assert statuses.count(200) >= 1 and set(statuses) <= {200, 402, 429}, statuses
        refusals = [message for status, message, _ in results if status != 200]
        assert refusals, "a budget of 3.5 reservations admitted 50 parallel calls"
        assert all(f"workflow `{workflow}`" in m for m in refusals), refusals[:3]
        rows = gateway.wait_records(statuses.count(200), workflow=workflow, status=200)
        assert len(rows) == statuses.count(200)
        assert {r["key_name"] for r in rows} == {"e2e", "second"} or len(rows) < 2
        total = sum(r["cost_usd"] for r in rows)
        assert total <= budget + 1e-12, (total, budget)
        # Sequential calls until the budget is spent: never past it.
        sequential = []
        for _ in range(80):
            status, message, _ = chat(sdks[0], workflow=workflow)
            sequential.append(status)
            if status == 402:
                break
        assert status == 402 and f"workflow `{workflow}`" in message and "spent" in message, (status, message)
        count = statuses.count(200) + sequential.count(200)
        served = gateway.wait_records(count, workflow=workflow, status=200)
        assert len(served) == count
        assert spent(gateway, workflow=workflow, status=200) <= budget + 1e-12

        listed = json.loads(gateway.cli("budgets", "list", "--json").stdout)
        row = next(b for b in listed if b["level"] == "workflow" and b["name"] == workflow)
        assert row["origin"] == "cli" and row["usd"] == budget and row["period"] == "total"
        assert row["spent_usd"] == pytest.approx(sum(r["cost_usd"] for r in served), abs=1e-9)
        assert row["left_usd"] == pytest.approx(max(budget - row["spent_usd"], 0.0), abs=1e-9)

        request_id = next(rid for status, _, rid in results if status == 200)
        body = httpx.get(
            f"{gateway.url}/v1/tokensense/requests/{request_id}",
            timeout=10,
            headers={"authorization": f"Bearer {gateway.key}"},
        ).json()
        if body.get("key_name") != "e2e":  # made with the other key: read with it
            body = httpx.get(
                f"{gateway.url}/v1/tokensense/requests/{request_id}",
                timeout=10,
                headers={"authorization": f"Bearer {other}"},
            ).json()
        assert body["details"]["budgets"] == [f"workflow:{workflow}"]
    finally:
        stop(gateway.process)


def test_execution_budget_stops_one_run_not_the_next(tmp_path: Path, fake: FakeProvider) -> None:
    gateway = start_gateway(tmp_path, fake)
    try:
        reserved = reservation_of(gateway)
        limit = round(reserved * 1.2, 10)  # the first call reserves it all but a little: a few calls of 5 tokens
        gateway.cli("budgets", "set", "--each-execution", "--usd", repr(limit))
        workflow_runs = f"wf-{uuid.uuid4().hex[:6]}"
        # A tighter budget for one workflow's runs: a run of it stops after one call.
        gateway.cli(
            "budgets", "set", "--each-execution", "--workflow", workflow_runs, "--usd", repr(round(reserved * 1.05, 10))
        )
        time.sleep(1.5)
        sdk = client(gateway)
        first, second = f"run-{uuid.uuid4().hex[:8]}", f"run-{uuid.uuid4().hex[:8]}"
        codes = []
        for _ in range(6):
            status, message, _ = chat(sdk, execution_id=first)
            codes.append(status)
            if status == 402:
                break
        assert codes[:2] == [200, 200] and codes[-1] == 402, codes
        assert f"execution `{first}`" in message and "each execution" in message
        assert spent(gateway, execution_id=first) <= limit + 1e-12
        assert chat(sdk, execution_id=second)[0] == 200  # the next run has its own budget
        assert chat(sdk)[0] == 200  # a call of no execution has none

        run = f"run-{uuid.uuid4().hex[:8]}"
        assert chat(sdk, execution_id=run, workflow=workflow_runs)[0] == 200
        status, message, _ = chat(sdk, execution_id=run, workflow=workflow_runs)
        assert status == 402 and f"each execution of workflow `{workflow_runs}`" in message

        removed = json.loads(gateway.cli("budgets", "remove", "--each-execution", "--json").stdout)
        assert removed["removed"] == 1
        assert wait_until(lambda: chat(sdk, execution_id=first)[0] == 200, timeout=10)
    finally:
        stop(gateway.process)


def test_config_budgets_apply_and_cli_lists_them(tmp_path: Path, fake: FakeProvider) -> None:
    """`[[budgets]]` in config.toml: enforced at start, listed as from config; the CLI cannot remove it."""

    def prepare(gw: Gateway) -> None:
        gw.home.mkdir(parents=True, exist_ok=True)
        (gw.home / "config.toml").write_text(
            '[[budgets]]\nsource = "nightly-batch"\nusd = 0.0000001\n'
            'period = "day"\n\n[[budgets]]\nproject = "proj-default"\nusd = 1000\n'
        )

    gateway = start_gateway(tmp_path, fake, prepare=prepare)
    try:
        sdk = client(gateway)
        status, message, _ = chat(sdk, source="nightly-batch")
        assert status == 402 and "source `nightly-batch`" in message and "per day" in message
        # The refusal in the client's own error shape: Anthropic's on /v1/messages.
        anthropic = httpx.post(
            f"{gateway.url}/v1/messages",
            timeout=30,
            headers={"x-api-key": gateway.key, "anthropic-version": "2023-06-01", "x-source": "nightly-batch"},
            json={"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert anthropic.status_code == 402
        assert anthropic.json()["type"] == "error" and "source `nightly-batch`" in anthropic.json()["error"]["message"]
        status, _, request_id = chat(sdk, source="other")
        assert status == 200
        gateway.wait_records(1, request_id=request_id)
        body = httpx.get(
            f"{gateway.url}/v1/tokensense/requests/{request_id}",
            timeout=10,
            headers={"authorization": f"Bearer {gateway.key}"},
        ).json()
        assert body["details"]["budgets"] == ["project:proj-default"]  # the key's project
        listed = json.loads(gateway.cli("budgets", "list", "--json").stdout)
        assert {(b["level"], b["name"], b["origin"]) for b in listed} == {
            ("source", "nightly-batch", "config"),
            ("project", "proj-default", "config"),
        }
        project = next(b for b in listed if b["level"] == "project")
        assert project["spent_usd"] > 0
        result = gateway.cli("budgets", "remove", "--source", "nightly-batch", check=False)
        assert result.returncode != 0 and "config.toml" in result.stderr
    finally:
        stop(gateway.process)


def test_workflow_budget_holds_across_workers(tmp_path: Path, fake: FakeProvider) -> None:
    """`serve --workers 2`: the supervisor's hub counts budgets on attribution for every worker."""
    gateway = start_gateway(tmp_path, fake, serve_args=["--workers", "2"])
    try:
        reserved = reservation_of(gateway)
        budget = round(reserved * 2.5, 10)
        workflow = f"wf-{uuid.uuid4().hex[:6]}"
        gateway.cli("budgets", "set", "--workflow", workflow, "--usd", repr(budget), "--period", "week")
        time.sleep(2)
        sdk = client(gateway)
        with ThreadPoolExecutor(30) as pool:
            results = list(pool.map(lambda i: chat(sdk, workflow=workflow), range(30)))
        statuses = [r[0] for r in results]
        assert 200 in statuses and (402 in statuses or 429 in statuses), statuses
        codes: list[int] = []
        while 402 not in codes:
            codes.append(chat(sdk, workflow=workflow)[0])
            assert len(codes) < 80, codes
        served = statuses.count(200) + codes.count(200)
        rows = gateway.wait_records(served, workflow=workflow, status=200)
        assert len(rows) == served
        assert sum(r["cost_usd"] for r in rows) <= budget + 1e-12
    finally:
        stop(gateway.process)


# --- several instances, Redis ----------------------------------------------------------------


@pytest.fixture
def own_redis():
    try:
        redis = OwnRedis()
    except RuntimeError as e:
        pytest.skip(str(e))
    yield redis
    redis.close()


def limits_ok(gateway: Gateway) -> bool:
    try:
        return httpx.get(f"{gateway.url}/health", timeout=10).json().get("limits") == "ok"
    except (httpx.HTTPError, ValueError):
        return False


@pytest.mark.redis
def test_workflow_budget_holds_across_two_instances_and_a_redis_restart(
    tmp_path: Path, fake: FakeProvider, own_redis: OwnRedis
) -> None:
    """Two instances sharing PostgreSQL and Redis: parallel calls to both never spend more than the workflow's
    budget; once spent it stays refused with Redis down and after Redis restarts empty (seeded from the
    settled spend)."""
    import psycopg

    try:
        with psycopg.connect(PG_URL, connect_timeout=3, autocommit=True) as conn:
            schema = f"ts_budgets_{uuid.uuid4().hex[:8]}"
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except Exception as e:
        service_missing(f"PostgreSQL at {PG_URL} is not reachable ({type(e).__name__}: {e})")
        return
    env = {
        "TOKENSENSE_DATABASE_URL": f"{PG_URL}?options=-csearch_path%3D{schema}",
        "TOKENSENSE_REDIS_URL": own_redis.url,
        "TOKENSENSE_SECRET": "budgets-test-secret",
    }
    gateways: list[Gateway] = []
    try:
        for i in range(2):
            (tmp_path / f"i{i}").mkdir()
            gateways.append(start_gateway(tmp_path / f"i{i}", fake, extra_env=env, key_name=f"e2e-{i}"))
        reserved = reservation_of(gateways[0])

        def costs(**where: object) -> list[float]:
            clause = " AND ".join(f"{k} = %s" for k in where)
            with psycopg.connect(PG_URL) as conn:
                conn.execute(f'SET search_path TO "{schema}"')
                rows = conn.execute(f"SELECT cost_usd FROM usage WHERE {clause}", tuple(where.values())).fetchall()
            return [float(r[0] or 0.0) for r in rows]

        budget = round(reserved * 3.5, 10)
        workflow = f"wf-{uuid.uuid4().hex[:6]}"
        gateways[0].cli("budgets", "set", "--workflow", workflow, "--usd", repr(budget), "--period", "month")
        time.sleep(1.5)
        sdks = [client(gateways[0]), client(gateways[1])]
        with ThreadPoolExecutor(40) as pool:
            results = list(pool.map(lambda i: chat(sdks[i % 2], workflow=workflow), range(40)))
        statuses = [r[0] for r in results]
        assert 200 in statuses and set(statuses) <= {200, 402, 429}, statuses
        assert all(f"workflow `{workflow}`" in m for s, m, _ in results if s != 200)
        codes: list[int] = []
        while 402 not in codes:
            codes.append(chat(sdks[len(codes) % 2], workflow=workflow)[0])
            assert len(codes) < 80, codes
        served = statuses.count(200) + codes.count(200)
        assert wait_until(lambda: len(costs(workflow=workflow, status=200)) >= served, timeout=30)
        total = sum(costs(workflow=workflow, status=200))
        assert total <= budget + 1e-12, (total, budget)

        own_redis.kill()
        outage = [chat(sdks[i % 2], workflow=workflow)[0] for i in range(4)]
        assert outage == [402] * 4, f"a spent workflow budget was served while Redis was down: {outage}"
        own_redis.start()  # empty
        assert wait_until(lambda: all(limits_ok(g) for g in gateways), timeout=60)
        window = time.strftime("%Y-%m", time.gmtime())
        redis_key = f'tokensense:budget:{{"workflow":"{workflow}"}}@month:month:{window}'
        after: list[int] = []

        def seeded() -> bool:
            after.extend(chat(s, workflow=workflow)[0] for s in sdks)
            value = own_redis.client().hget(redis_key, "spent")
            return value is not None and len(after) >= 4

        assert wait_until(seeded, timeout=60, step=0.2), after
        assert set(after) == {402}, f"a spent workflow budget was served by a Redis restarted empty: {after}"
        assert float(own_redis.client().hget(redis_key, "spent")) >= total - 1e-12
        assert sum(costs(workflow=workflow, status=200)) <= budget + 1e-12
        assert chat(sdks[1], workflow="another")[0] == 200  # other workflows are not held
        listed = json.loads(gateways[1].cli("budgets", "list", "--json").stdout)
        (row,) = [b for b in listed if b["name"] == workflow]
        assert row["reserved_usd"] == 0.0 and row["window"] == f"month:{window}"  # read from Redis: none in flight
        assert row["spent_usd"] == pytest.approx(sum(costs(workflow=workflow, status=200)), abs=1e-9)
    finally:
        for gw in gateways:
            stop(gw.process)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_alerts_fire_for_a_workflow_budget(tmp_path: Path, fake: FakeProvider) -> None:
    """`[alerts]` thresholds fire for budgets on attribution too, once each, naming the level and the budget."""
    from observability_receivers import WebhookReceiver

    webhook = WebhookReceiver()
    workflow = f"wf-{uuid.uuid4().hex[:6]}"

    def prepare(gw: Gateway) -> None:
        gw.home.mkdir(parents=True, exist_ok=True)
        # $1 per token: each call costs its tokens (5), so a $40 budget crosses half after 4 calls.
        (gw.home / "config.toml").write_text(
            '[models."alert-model"]\nprovider = "openai"\ninput_per_mtok = 1000000\noutput_per_mtok = 1000000\n\n'
            f'[alerts]\nwebhook_url = "{webhook.url}/hook"\nthresholds = [0.5, 1.0]\n\n'
            f'[[budgets]]\nworkflow = "{workflow}"\nusd = 40\n'
        )

    gateway = start_gateway(tmp_path, fake, prepare=prepare)
    try:
        sdk = client(gateway)
        for _ in range(5):
            response = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                timeout=30,
                headers={"authorization": f"Bearer {gateway.key}", "x-workflow-tag": workflow},
                json={"model": "alert-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
            )
            assert response.status_code == 200, response.text
        bodies = webhook.wait_bodies(1)
        assert bodies[0]["level"] == "workflow" and bodies[0]["key_name"] == workflow
        assert bodies[0]["threshold"] == 0.5 and bodies[0]["budget_usd"] == 40
        assert chat(sdk, workflow="unbudgeted")[0] == 200
        time.sleep(1.0)
        assert len(webhook.bodies) == 1  # once per threshold and period
    finally:
        stop(gateway.process)
        webhook.close()

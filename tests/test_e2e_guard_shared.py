"""The loop guard across two gateway instances sharing Redis and PostgreSQL (issue 26, item 4)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import openai
import pytest
from conftest import FakeProvider, Gateway, start_gateway, stop
from own_servers import OwnRedis

from tests.conftest import service_missing

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONFIG = """
[guards]
repeat_limit = 3
repeat_window_s = 600
"""


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    try:
        redis = OwnRedis()
    except RuntimeError as e:
        pytest.skip(str(e))
    yield redis
    redis.close()


@pytest.fixture
def schema() -> Iterator[str]:
    import psycopg

    name = f"ts_guard_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
    except Exception as e:
        service_missing(f"PostgreSQL at {PG_URL} is not reachable ({type(e).__name__}: {e})")
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def ask(gw: Gateway, key: str, run: str, marker: str) -> int:
    client = openai.OpenAI(
        base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=30, default_headers={"x-execution-id": run}
    )
    try:
        client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": f"list the files {marker}"}]
        )
    except openai.APIStatusError as e:
        assert e.status_code != 429 or '"loop_detected"' in json.dumps(e.body)
        return e.status_code
    return 200


def test_the_fourth_identical_call_of_a_run_is_refused_across_two_instances(
    tmp_path, fake_provider: FakeProvider, own_redis: OwnRedis, schema: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    env = {
        "TOKENSENSE_DATABASE_URL": f"{PG_URL}?options=-csearch_path%3D{schema}",
        "TOKENSENSE_REDIS_URL": own_redis.url,
        "TOKENSENSE_SECRET": "guard-test-secret",
        "TOKENSENSE_CONFIG_FILE": str(config),
    }
    gateways: list[Gateway] = []
    try:
        for i in range(2):
            (tmp_path / f"i{i}").mkdir()
            gateways.append(start_gateway(tmp_path / f"i{i}", fake_provider, extra_env=env, key_name=f"e2e-{i}"))
        a, b = gateways
        key, marker = a.key, uuid.uuid4().hex  # the key of the first instance, known to both (created before)
        run = f"run-{marker[:8]}"
        assert [ask(gw, key, run, marker) for gw in (a, b, a)] == [200, 200, 200]
        assert ask(b, key, run, marker) == 429, "the 4th identical call, though each instance served fewer"
        assert ask(a, key, run, marker) == 429
        sent = [r for r in fake_provider.requests() if marker in json.dumps(r.get("body"))]
        assert len(sent) == 3, "the refused calls were not forwarded"
        assert ask(b, key, f"other-{marker[:8]}", marker) == 200, "a different run goes through"
        assert own_redis.client().keys("tokensense:loop:*"), "the counts are in Redis"
    finally:
        for gw in gateways:
            stop(gw.process)

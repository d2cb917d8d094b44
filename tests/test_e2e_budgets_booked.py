"""Issue 26, end to end: a batch job's reservation holds in the budget of its workflow (its key has none), across
a restart (the seed counts open jobs), and the follower settles that budget to the booked cost."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import openai
import pytest

from tests.conftest import FakeProvider, start_fake_provider, start_gateway, stop
from tests.test_e2e_batches import CHAT_LINES, POLL, _jsonl, jobs, new_key, openai_client, restart, wait_booked

pytestmark = pytest.mark.e2e


def _create(client: openai.OpenAI, file_id: str, **headers: str):  # type: ignore[no-untyped-def]
    return client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers=headers or None,
    )


def test_a_jobs_hold_is_in_its_workflows_budget_until_the_follower_settles_it(tmp_path: Path) -> None:
    fake: FakeProvider = start_fake_provider()
    gateway = start_gateway(tmp_path, fake, extra_env=POLL)
    workflow = f"wf-{uuid.uuid4().hex[:6]}"
    try:
        probe = openai_client(gateway)
        sample = _create(probe, probe.files.create(file=_jsonl(CHAT_LINES[:2]), purpose="batch").id)
        reserved = next(j["reserved_usd"] for j in jobs(gateway) if j["id"] == sample.id)
        gateway.cli("budgets", "set", "--workflow", workflow, "--usd", f"{reserved * 1.5:.8f}")
        time.sleep(1.5)  # a running gateway reloads the budgets within a second
        key = new_key(gateway, "unbudgeted")  # the key has no budget: only its workflow's holds the job
        client = openai_client(gateway, key, **{"x-workflow-tag": workflow})
        mine = client.files.create(file=_jsonl(CHAT_LINES[:2]), purpose="batch")
        first = _create(client, mine.id, **{"x-fake-batch-seconds": "3600"})
        with pytest.raises(openai.APIStatusError) as refused:
            _create(client, mine.id)
        assert refused.value.status_code == 402 and workflow in refused.value.message

        gateway = restart(gateway, tmp_path)  # the workflow's counter is seeded with the open job's hold
        client = openai_client(gateway, key, **{"x-workflow-tag": workflow})
        with pytest.raises(openai.APIStatusError) as again:
            _create(client, mine.id)
        assert again.value.status_code == 402 and workflow in again.value.message

        client.batches.cancel(first.id)
        assert wait_booked(gateway, first.id)["booked_usd"] == 0  # cancelled before it ran: nothing booked
        # The follower gave the workflow's budget back what the job held: the next job fits.
        second = _create(client, mine.id)
        booked = wait_booked(gateway, second.id)
        assert 0 < booked["booked_usd"] < booked["reserved_usd"]
    finally:
        stop(gateway.process)
        stop(fake.process)

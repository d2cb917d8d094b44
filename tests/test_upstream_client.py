"""Attempts made with httpx against the fake provider: up to the first byte, failures read, timeouts, refusals."""

from __future__ import annotations

import json
import random
import socket

import httpx

from tokensense.config import RoutingConfig
from tokensense.demo.fakeprovider import start
from tokensense.gateway.attempts import run_attempts
from tokensense.gateway.key_pool import KeyPools
from tokensense.gateway.retry import Candidate, UpstreamTimeouts
from tokensense.gateway.upstream_client import UpstreamClient, UpstreamRequest

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}], "stream": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_attempts_against_failing_fakes_until_a_stream_is_open() -> None:
    runner, url = await start("127.0.0.1", 0)
    client = UpstreamClient()
    try:
        async with httpx.AsyncClient(base_url=url) as control:
            await control.post("/_fake/faults", json=[
                {"prefix": "/slow", "delay": 2, "times": 1},
                {"prefix": "/busy", "status": 503, "times": 1},
            ])
        dead = f"http://127.0.0.1:{_free_port()}"
        targets = {"refused": dead, "slow": f"{url}/slow", "busy": f"{url}/busy"}

        async def send(candidate: Candidate, key, timeouts: UpstreamTimeouts):
            request = UpstreamRequest("POST", f"{targets[candidate.provider]}/v1/chat/completions",
                                      {"authorization": f"Bearer {key.api_key}", "content-type": "application/json"},
                                      json.dumps(CHAT).encode())
            return await client.send(request, timeouts)

        class Key:
            name, disabled, api_key = "default", False, "sk-test"

        plan = [Candidate("a", "gpt-4o-mini", "refused"), Candidate("b", "gpt-4o-mini", "slow", 1),
                Candidate("c", "gpt-4o-mini", "busy", 2)]
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)

        result = await run_attempts(plan, pools=KeyPools(), routing=RoutingConfig(retries=1, backoff=0.01),
                                    credentials=lambda p: [Key()], send=send,
                                    timeouts=lambda c: UpstreamTimeouts(0.5, 30), discard=client.discard,
                                    sleep=sleep, rng=random.Random(1))
        # refused twice (retry with backoff), the slow one timed out then answered, the busy one 503 then 200.
        assert [(a.candidate.provider, a.status) for a in result.attempts] == [
            ("refused", None), ("refused", None), ("slow", None), ("slow", 200)]
        assert "ConnectError" in result.attempts[0].error and "within 0.5 seconds" in result.attempts[2].error
        assert len(waits) == 2 and all(0.005 <= w <= 0.01 for w in waits)  # a backoff before each retry
        # The stream is open and unread: its events come as the provider sends them.
        response = result.outcome.answer.response
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) > 3
        await client.discard(result.outcome)

        busy = await send(plan[2], Key(), UpstreamTimeouts(5, None))
        assert busy.status == 503 and "fake error requested" in busy.error
    finally:
        await client.close()
        await runner.cleanup()

"""The fake provider's programmed faults: per provider, key and model, for a number of requests."""

from __future__ import annotations

import httpx

from tokensense.demo.fakeprovider import start

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


async def test_faults_answer_per_provider_and_key_for_their_number_of_times() -> None:
    runner, url = await start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            rules = [{"provider": "openai", "key": "sk-a", "status": 429, "retry_after": 7, "times": 2},
                     {"provider": "anthropic", "status": 529, "times": 1}]
            assert (await client.post("/_fake/faults", json=rules)).json() == {"faults": 2}

            for _ in range(2):
                limited = await client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-a"})
                assert (limited.status_code, limited.headers["retry-after"]) == (429, "7")
                assert limited.json()["error"]["code"] == "rate_limit_exceeded"
            other_key = await client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-b"})
            assert other_key.status_code == 200
            assert (await client.post("/v1/chat/completions", json=CHAT,
                                      headers={"authorization": "Bearer sk-a"})).status_code == 200

            overloaded = await client.post("/v1/messages", json=MESSAGES, headers={"x-api-key": "k"})
            assert overloaded.status_code == 529 and overloaded.json()["error"]["type"] == "overloaded_error"
            assert (await client.post("/v1/messages", json=MESSAGES, headers={"x-api-key": "k"})).status_code == 200
            assert [r["used"] for r in (await client.get("/_fake/faults")).json()] == [2, 1]

            await client.post("/_fake/faults", json={"model": "gpt-4o", "reset": True})
            try:
                await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o"},
                                  headers={"authorization": "Bearer k"})
                raise AssertionError("the connection should have been dropped")
            except httpx.TransportError:
                pass
            assert (await client.delete("/_fake/faults")).json() == {"cleared": 3}
            bad = await client.post("/_fake/faults", json={"provider": "openai"})
            assert bad.status_code == 400 and "needs status" in bad.json()["error"]
    finally:
        await runner.cleanup()

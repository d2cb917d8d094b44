"""The forward stage with resting provider keys, in-process (mitmproxy's taddons/tflow): breakers only steer.

A lone key whose circuit is open is still the first attempt's key when the call has
no fallback; with a fallback (or another key of the pool) it is passed over.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mitmproxy.test import taddons
from sqlmodel import Session
from test_pipeline import FAKE_BASE, gateway_flow, run_gates

from addons.stack import build_addons
from tokensense.gateway.flowmeta import get_call
from tokensense.gateway.key_pool import KeyState, Outcome
from tokensense.gateway.runtime import Runtime
from tokensense.providers import PROVIDERS
from tokensense.settings import Settings
from tokensense.storage import repo

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    mp = pytest.MonkeyPatch()
    for provider in PROVIDERS.values():
        mp.setenv(provider.env_key, f"provider-key-{provider.name}")
    settings = Settings(home=tmp_path_factory.mktemp("breakers"),
                        **{f"{name}_base_url": f"{FAKE_BASE}/{name}" for name in PROVIDERS})
    rt = Runtime(settings)
    rt.start()
    yield rt
    rt.close()
    mp.undo()


@pytest.fixture
def key(runtime: Runtime) -> str:
    with Session(runtime.engine) as session:
        _, plain = repo.create_key(session=session, name="breakers")
    runtime.keys.refresh(force=True)  # type: ignore[union-attr]
    return plain


async def _open_circuit(runtime: Runtime, provider: str, name: str) -> None:
    assert runtime.pools is not None
    for _ in range(runtime.pools.policy.breaker_failures):
        await runtime.pools.report(provider, name, Outcome.FAILED)
    states = await runtime.pools.states(provider, runtime.keys.credentials(provider))  # type: ignore[union-attr]
    assert states[name][0] is KeyState.OPEN


async def test_a_lone_key_with_its_circuit_open_is_the_first_attempts_key(runtime: Runtime, key: str) -> None:
    """Issue 22: the gateway answered its own 429 "every openai key is resting" instead of trying the key."""
    await _open_circuit(runtime, "openai", "env")
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        flow = await run_gates(chain, gateway_flow("POST", "/v1/chat/completions", CHAT, key=key))
    assert flow.response is None  # not answered by the gateway: sent to the provider
    assert (flow.request.host, flow.request.port, flow.request.path) == ("127.0.0.1", 9999,
                                                                          "/openai/v1/chat/completions")
    assert flow.request.headers["authorization"] == "Bearer provider-key-openai"
    call = get_call(flow)
    assert call is not None and call.forwarded and call.provider_key == "env"


async def test_with_a_fallback_a_resting_key_is_passed_over(runtime: Runtime, key: str) -> None:
    await _open_circuit(runtime, "openai", "env")
    await _open_circuit(runtime, "anthropic", "env")
    chain = build_addons(runtime)[0]
    with taddons.context(chain):
        flow = await run_gates(chain, gateway_flow("POST", "/v1/chat/completions", CHAT, key=key,
                                                   headers={"x-tokensense-fallbacks": "claude-haiku-4-5"}))
    # The plan ran at once: openai passed over (a fallback may serve), then the fallback, resting too and the
    # last of the plan, was tried anyway (nothing listens at the fake base URL here: no answer).
    assert flow.response is not None
    assert flow.response.headers["x-tokensense-served-by"] == "anthropic/claude-haiku-4-5"
    assert flow.request.host != "127.0.0.1"  # the native request was never pointed upstream
    assert "could not get an answer from Anthropic" in flow.response.text

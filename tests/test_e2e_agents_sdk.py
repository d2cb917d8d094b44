"""The OpenAI Agents SDK (openai-agents) run through TokenSense: an agent with a function tool, in the SDK's
default Responses mode for an OpenAI and a translated Claude and Gemini model, and in chat-completions mode.

These are the settings the README gives ("Coding agents through TokenSense"): an `AsyncOpenAI` client
with TokenSense's URL and key, handed to the model (or set with `set_default_openai_client`), tracing off
(the SDK would otherwise export traces to OpenAI with that key).
"""

from __future__ import annotations

import json

import pytest
from conftest import Gateway

agents = pytest.importorskip("agents")
from agents import (  # noqa: E402
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI  # noqa: E402

pytestmark = pytest.mark.e2e

CALLS: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return f"sunny in {city}"


def _client(gw: Gateway, exec_id: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=gw.key,
                       default_headers={"x-execution-id": exec_id, "x-workflow-tag": "agents-sdk"})


def _run(model) -> tuple[str, list]:
    set_tracing_disabled(True)
    CALLS.clear()
    agent = Agent(name="Weather", instructions="Answer with the weather tool.", tools=[get_weather], model=model)
    result = Runner.run_sync(agent, "What is the weather in Paris?")
    return result.final_output, result.new_items


def _tool_round_trip(items: list) -> None:
    kinds = [item.type for item in items]
    assert "tool_call_item" in kinds and "tool_call_output_item" in kinds and kinds[-1] == "message_output_item"
    assert len(CALLS) == 1


@pytest.mark.parametrize(("model", "provider"), [
    ("gpt-4o-mini", "openai"), ("claude-sonnet-4-6", "anthropic"), ("gemini-2.5-flash", "gemini"),
])
def test_agent_with_a_function_tool_in_responses_mode(gateway: Gateway, exec_id: str, model: str,
                                                      provider: str) -> None:
    output, items = _run(OpenAIResponsesModel(model=model, openai_client=_client(gateway, exec_id)))
    _tool_round_trip(items)
    assert output == f"The tool returned: sunny in {CALLS[0]}"
    records = gateway.wait_records(2, execution_id=exec_id)
    assert [(r["endpoint"], r["provider"], r["model"], r["status"]) for r in records] == \
        [("responses", provider, model, 200)] * 2
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 and r["cost_usd"] > 0 for r in records)
    assert {r["workflow"] for r in records} == {"agents-sdk"}
    # the second turn sent the tool's output back, whatever the provider's format
    last = gateway.fake.last(provider)
    assert f"sunny in {CALLS[0]}" in json.dumps(last["body"])


@pytest.mark.parametrize(("model", "provider"), [("gpt-4o-mini", "openai"), ("claude-sonnet-4-6", "anthropic")])
def test_agent_with_a_function_tool_in_chat_completions_mode(gateway: Gateway, exec_id: str, model: str,
                                                             provider: str) -> None:
    output, items = _run(OpenAIChatCompletionsModel(model=model, openai_client=_client(gateway, exec_id)))
    _tool_round_trip(items)
    assert output == f"The tool returned: sunny in {CALLS[0]}"
    records = gateway.wait_records(2, execution_id=exec_id)
    assert [(r["endpoint"], r["provider"], r["model"], r["status"]) for r in records] == \
        [("chat.completions", provider, model, 200)] * 2
    assert all(r["cost_usd"] > 0 for r in records)


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_agent_with_the_default_client_settings_of_the_readme(gateway: Gateway, exec_id: str, api: str) -> None:
    """The README's way: `set_default_openai_client` (not for tracing), the model named by a string."""
    from agents import set_default_openai_api, set_default_openai_client

    set_default_openai_client(_client(gateway, exec_id), use_for_tracing=False)
    set_default_openai_api(api)  # type: ignore[arg-type]
    try:
        output, items = _run("claude-sonnet-4-6")
    finally:
        set_default_openai_api("responses")
    _tool_round_trip(items)
    assert output == f"The tool returned: sunny in {CALLS[0]}"
    endpoint = "responses" if api == "responses" else "chat.completions"
    records = gateway.wait_records(2, execution_id=exec_id)
    assert [(r["endpoint"], r["model"]) for r in records] == [(endpoint, "claude-sonnet-4-6")] * 2

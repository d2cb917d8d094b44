"""What a call may cost at most, reserved against its key's budget before it goes upstream.

The reservation is the largest cost the call can have when the provider honours
the output cap: the prompt as sent upstream (characters / 3, more than any
tokenizer makes of text, plus a flat amount per image), and as output the cap
actually sent upstream (the Claude translation's default `max_tokens` of 4,096
included), times the number of choices asked for; without a cap, the model's
largest output. `genai-prices` knows context windows but not output limits, so
those come from the providers (`Provider.output_caps`, their published limits
by model family), with a conservative default for a model none of them lists.
"""

from __future__ import annotations

import json
import math
from typing import Any

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.gateway.call import CallContext
from tokensense.gateway.limits import BudgetDecision
from tokensense.providers import Provider, provider_for_model

DEFAULT_MAX_OUTPUT_TOKENS = 32_768
"""Assumed largest output of a model no provider gives a cap for (more than most models can write)."""

IMAGE_INPUT_CHARACTERS = 3000  # about 765 tokens: a 1024px image at high detail
BUDGET_RETRY_AFTER_SECONDS = 2  # a call refused while others hold the budget: they settle within seconds


def model_max_output(model: str | None, provider: Provider | None = None) -> int:
    """The largest output `model` can produce, from the providers' `output_caps`: the serving provider's
    (it knows what it serves), else those of the provider whose model family the name is (a model another
    provider serves: a cloud's Claude, a deployment's GPT); else the default."""
    name = (model or "").lower().rsplit("/", 1)[-1]
    cap = provider.max_output_tokens(name) if provider is not None else None
    if cap is None and (owner := provider_for_model(name)) is not None:
        cap = owner.max_output_tokens(name)
    return cap if cap is not None else DEFAULT_MAX_OUTPUT_TOKENS


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        if value.get("type") in ("image_url", "image", "input_image") or "inlineData" in value:
            return IMAGE_INPUT_CHARACTERS
        return sum(_text_chars(v) for k, v in value.items() if k not in ("type", "role", "model"))
    return 0


def prompt_tokens(body: dict[str, Any]) -> int:
    """More tokens than the prompt of `body` (OpenAI, Anthropic or Gemini shape) can make."""
    prompt = body.get("messages") or body.get("contents") or body.get("input") or body.get("prompt") or ""
    chars = _text_chars(prompt) + _text_chars(body.get("system") or body.get("systemInstruction")
                                              or body.get("instructions") or "")
    if body.get("tools"):
        chars += len(json.dumps(body["tools"]))
    return math.ceil(chars / 3) + 8


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("generationConfig")
    return config if isinstance(config, dict) else {}


def output_cap(body: dict[str, Any]) -> int | None:
    """The output cap `body` sets, in whichever field its format uses; None if it sets none."""
    config = _generation_config(body)
    for cap in (body.get("max_completion_tokens"), body.get("max_tokens"), body.get("max_output_tokens"),
                config.get("maxOutputTokens")):
        if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
            return cap
    return None


def _choices(body: dict[str, Any]) -> int:
    config = _generation_config(body)
    n = body.get("n") or config.get("candidateCount") or 1
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1


def reservation_usage(body_sent_upstream: dict[str, Any], *, max_output_tokens: int | None,
                      model_max_output: int | None, generates: bool = True,
                      typical_output: int | None = None) -> TokenUsage:
    """The most tokens a call can use: its prompt, and its output cap (or the model's largest output).

    `body_sent_upstream` is the body as it goes to the provider (after any
    translation); `max_output_tokens` the cap sent, if the caller knows it
    (else it is read from the body); `model_max_output` the model's largest
    output, for a request that sets no cap; `generates` False for an endpoint
    that writes no tokens (embeddings); `typical_output` the model's typical
    output per choice (`[budgets] reserve = "typical"`), used when below the cap.
    """
    input_tokens = prompt_tokens(body_sent_upstream)
    if not generates:
        return TokenUsage(input_tokens=input_tokens, output_tokens=0)
    cap = max_output_tokens or output_cap(body_sent_upstream) or model_max_output or DEFAULT_MAX_OUTPUT_TOKENS
    if typical_output is not None:
        cap = min(cap, typical_output)
    return TokenUsage(input_tokens=input_tokens, output_tokens=cap * _choices(body_sent_upstream))


def budget_refusal(key_name: str, budget_usd: float, period: str, decision: BudgetDecision) -> tuple[GatewayError, dict[str, str]]:
    """The answer to a call the budget does not admit, and its extra headers.

    429 with Retry-After while the budget is held by calls in flight (a retry
    succeeds as they settle); 402 once settled spend has reached the budget, or
    when this call's largest cost does not fit in what is left.
    """
    when = {"daily": "for today", "monthly": "for this month"}.get(period, "in total")
    money = f"${decision.spent:.6f} spent, ${decision.reserved:.6f} reserved by calls in flight"
    if decision.reason == "reserved":
        return GatewayError(
            429, f"The budget of the key `{key_name}` (${budget_usd:g} {when}) is held by calls in flight "
            f"({money}); retry in a moment.", code="budget_reserved"), {"retry-after": str(BUDGET_RETRY_AFTER_SECONDS)}
    if decision.reason == "insufficient":
        return GatewayError(
            402, f"The key `{key_name}` has ${max(budget_usd - decision.spent, 0):.6f} of its budget of "
            f"${budget_usd:g} {when} left ({money}), less than this call can cost "
            f"(${decision.amount:.6f} at its output cap); lower max_tokens.", code="budget_exceeded"), {}
    return GatewayError(
        402, f"The key `{key_name}` has spent its budget of ${budget_usd:g} {when} ({money}).",
        code="budget_exceeded"), {}


_NO_OUTPUT_ACTIONS = frozenset({"embedContent", "batchEmbedContents", "countTokens"})

def output_choices(body: dict[str, Any]) -> int:
    """How many choices (`n`, `candidateCount`) `body` asks for: a call's output is shared among them."""
    return _choices(body)


def call_generates(call: CallContext) -> bool:
    """Whether the call's endpoint writes tokens (not embeddings, token counts)."""
    return call.route_endpoint not in (Endpoint.EMBEDDINGS, Endpoint.COUNT_TOKENS) \
        and call.action not in _NO_OUTPUT_ACTIONS


def call_reservation(call: CallContext, body_sent_upstream: dict[str, Any],
                     typical_output: int | None = None) -> TokenUsage:
    """`reservation_usage` for a call: its model's largest output, and whether its endpoint writes tokens."""
    return reservation_usage(body_sent_upstream, max_output_tokens=None,
                             model_max_output=model_max_output(call.model, call.provider),
                             generates=call_generates(call), typical_output=typical_output)

"""OpenAI-format `usage` objects (OpenAI, xAI, Mistral; chat, embeddings, images, audio) in TokenSense terms."""

from __future__ import annotations

from typing import Any

from tokensense.core.usage import TokenUsage
from tokensense.providers.usage_fields import UsageReader

_READERS: dict[str, UsageReader] = {}


def _reader(provider: str) -> UsageReader:
    reader = _READERS.get(provider)
    if reader is None:
        reader = _READERS[provider] = UsageReader(provider)
    return reader


def usage_from_openai(usage: Any, *, provider: str = "openai", reasoning_outside: bool = False,
                      service_tier: str | None = None) -> TokenUsage | None:
    """An OpenAI-format `usage` object in TokenSense terms, every billable counter kept.

    Chat names the counts `prompt_tokens`/`completion_tokens` with
    `prompt_tokens_details` (cached, audio, image) and `completion_tokens_details`
    (reasoning, audio, accepted/rejected prediction); images and the Responses
    API say `input_tokens`/`output_tokens` with `input_tokens_details`, and
    transcriptions `input_token_details`. Rejected prediction tokens are billed
    as output and already counted in `completion_tokens`: kept as counters only.

    `reasoning_outside`: xAI reports `reasoning_tokens` apart from
    `completion_tokens` and bills them as output. TokenSense adds them to
    `output_tokens` unless `total_tokens` shows they are already included.
    `service_tier` is the tier the answer names (it sits beside `usage`).
    """
    if not isinstance(usage, dict):
        return None
    r = _reader(provider)
    chat = "prompt_tokens" in usage or "completion_tokens" in usage
    input_tokens = r.count(usage, "prompt_tokens") if chat else r.count(usage, "input_tokens")
    output_tokens = r.count(usage, "completion_tokens") if chat else r.count(usage, "output_tokens")
    if chat:
        prompt = r.obj(usage, "prompt_tokens_details")
        completion = r.obj(usage, "completion_tokens_details")
        prompt_path, completion_path = "prompt_tokens_details.", "completion_tokens_details."
    else:
        key = "input_token_details" if "input_token_details" in usage else "input_tokens_details"
        prompt, prompt_path = r.obj(usage, key), key + "."
        # The Realtime API's `response.done` names it `output_token_details`, like its `input_token_details`.
        out_key = "output_token_details" if "output_token_details" in usage else "output_tokens_details"
        completion, completion_path = r.obj(usage, out_key), out_key + "."
    cached = r.count(prompt, "cached_tokens", prompt_path)
    cached_details = r.obj(prompt, "cached_tokens_details", prompt_path)
    reasoning = r.count(completion, "reasoning_tokens", completion_path)
    if reasoning_outside and reasoning:
        total = usage.get("total_tokens")
        if not (isinstance(total, int) and total == input_tokens + output_tokens):
            output_tokens += reasoning
    units = {
        "input_audio_tokens": r.count(prompt, "audio_tokens", prompt_path),
        "input_image_tokens": r.count(prompt, "image_tokens", prompt_path),
        "cache_audio_read_tokens": r.count(cached_details, "audio_tokens", prompt_path + "cached_tokens_details."),
        "cache_image_read_tokens": r.count(cached_details, "image_tokens", prompt_path + "cached_tokens_details."),
        "output_audio_tokens": r.count(completion, "audio_tokens", completion_path),
        "output_image_tokens": r.count(completion, "image_tokens", completion_path),
    }
    counters = {
        "accepted_prediction_tokens": r.count(completion, "accepted_prediction_tokens", completion_path),
        "rejected_prediction_tokens": r.count(completion, "rejected_prediction_tokens", completion_path),
        "input_text_tokens": r.count(prompt, "text_tokens", prompt_path),
        "output_text_tokens": r.count(completion, "text_tokens", completion_path),
        "num_sources_used": r.count(usage, "num_sources_used"),  # xAI live search
    }
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached,
        reasoning_tokens=reasoning,
        units={k: v for k, v in units.items() if v},
        counters={k: v for k, v in counters.items() if v},
        service_tier=service_tier,
    ).consistent()


def service_tier_of(answer: Any) -> str | None:
    """The `service_tier` an OpenAI answer (or stream chunk) names beside its usage."""
    tier = answer.get("service_tier") if isinstance(answer, dict) else None
    return tier if isinstance(tier, str) and tier else None

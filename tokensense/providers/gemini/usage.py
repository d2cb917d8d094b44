"""Gemini `usageMetadata` in TokenSense terms: thinking, cached content, tool-use prompts, tokens by modality."""

from __future__ import annotations

from typing import Any

from tokensense.core.usage import TokenUsage
from tokensense.providers.usage_fields import UsageReader

_R = UsageReader("gemini")
_MODALITIES = {"AUDIO": "audio", "IMAGE": "image", "VIDEO": "video"}


def _by_modality(meta: dict[str, Any], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in _R.items(meta, key):
        modality = _MODALITIES.get(str(item.get("modality", "")).upper())
        if modality:
            counts[modality] = counts.get(modality, 0) + _R.count(item, "tokenCount", key + "[].")
    return counts


def usage_from_gemini(meta: Any) -> TokenUsage | None:
    """Gemini `usageMetadata` in TokenSense terms.

    Gemini reports thinking tokens (`thoughtsTokenCount`) apart from
    `candidatesTokenCount`, and bills them as output: TokenSense adds them to
    `output_tokens` and also keeps them as `reasoning_tokens`. The prompt of a
    call with tools is `promptTokenCount` plus `toolUsePromptTokenCount`. Audio
    input is billed above text (`promptTokensDetails` by modality, and
    `cacheTokensDetails` for cached audio); image and audio output by
    `candidatesTokensDetails`.
    """
    if not isinstance(meta, dict):
        return None
    thoughts = _R.count(meta, "thoughtsTokenCount")
    tool_prompt = _R.count(meta, "toolUsePromptTokenCount")
    prompt_parts = _by_modality(meta, "promptTokensDetails")
    for modality, count in _by_modality(meta, "toolUsePromptTokensDetails").items():
        prompt_parts[modality] = prompt_parts.get(modality, 0) + count
    cached_parts = _by_modality(meta, "cacheTokensDetails")
    output_parts = _by_modality(meta, "candidatesTokensDetails")
    units = {
        "input_audio_tokens": prompt_parts.get("audio", 0),
        "input_image_tokens": prompt_parts.get("image", 0),
        "input_video_tokens": prompt_parts.get("video", 0),
        "cache_audio_read_tokens": cached_parts.get("audio", 0),
        "cache_image_read_tokens": cached_parts.get("image", 0),
        "output_audio_tokens": output_parts.get("audio", 0),
        "output_image_tokens": output_parts.get("image", 0),
    }
    return TokenUsage(
        input_tokens=_R.count(meta, "promptTokenCount") + tool_prompt,
        output_tokens=_R.count(meta, "candidatesTokenCount") + thoughts,
        cached_input_tokens=_R.count(meta, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
        units={k: v for k, v in units.items() if v},
        counters={"tool_use_prompt_tokens": tool_prompt} if tool_prompt else {},
    ).consistent()

"""Token and media usage of one call, normalised across providers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# Billable counters beyond the columns of a usage record, named by the genai-prices
# usage keys they are priced under. Each is a part of a column's count, never an
# addition to it: audio input tokens are part of `input_tokens`, 1-hour cache
# writes part of `cache_write_tokens`, cached audio part of `cached_input_tokens`.
UNIT_KEYS = frozenset({
    "cache_write_5m_tokens", "cache_write_1h_tokens",
    "input_audio_tokens", "cache_audio_read_tokens", "output_audio_tokens",
    "input_image_tokens", "cache_image_read_tokens", "output_image_tokens",
    "input_video_tokens", "output_video_tokens",
    "web_searches",
    "input_document_pages",  # document OCR pages processed (a count of its own, not part of a column)
})

# Service tiers that are billed at the standard price (what `service_tier` answers say for them).
STANDARD_TIERS = frozenset({"default", "standard", "auto", "on_demand"})


class TokenUsage(BaseModel):
    """What one call consumed.

    `input_tokens` counts every prompt token, cached ones included (OpenAI's
    convention); `cached_input_tokens` and `cache_write_tokens` are the parts of
    it read from or written to the provider's prompt cache. `reasoning_tokens`
    are part of `output_tokens`. Media units are counted for non-token endpoints.

    `units` holds the finer billable counters (`UNIT_KEYS`: audio and image
    tokens, 1-hour cache writes, web searches), `service_tier` the tier the
    provider says it served the call in, and `counters` what the provider
    reported that is not billed apart (accepted/rejected prediction tokens,
    tool-use prompt tokens, modality details of text), kept for the record.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    images: int = 0
    characters: int = 0
    seconds: float = 0.0
    units: dict[str, int] = Field(default_factory=dict)
    service_tier: str | None = None
    counters: dict[str, int] = Field(default_factory=dict)

    @property
    def has_tokens(self) -> bool:
        return bool(self.input_tokens or self.output_tokens or self.units)

    @property
    def priced_tier(self) -> str | None:
        """The service tier to price at, or None for the standard price."""
        tier = self.service_tier
        return None if tier is None or tier in STANDARD_TIERS else tier

    @property
    def is_plain(self) -> bool:
        """Only the four basic token counts, at the standard tier (the fast pricing path applies)."""
        return not any(self.units.values()) and self.priced_tier is None

    def consistent(self) -> TokenUsage:
        """This usage with every part capped at its whole (a provider's counts that do not add up are not
        priced as more than they say: cached reads within the prompt, audio within input, 1h writes within writes)."""
        inp, out = self.input_tokens, self.output_tokens
        cached = min(self.cached_input_tokens, inp)
        written = min(self.cache_write_tokens, inp - cached)
        units = dict(self.units)
        caps = {
            "cache_write_5m_tokens": written, "cache_write_1h_tokens": written,
            "input_audio_tokens": inp, "input_image_tokens": inp, "input_video_tokens": inp,
            "output_audio_tokens": out, "output_image_tokens": out, "output_video_tokens": out,
        }
        for key, cap in caps.items():
            if key in units:
                units[key] = min(units[key], cap)
        if "cache_write_5m_tokens" in units and "cache_write_1h_tokens" in units:
            units["cache_write_5m_tokens"] = min(units["cache_write_5m_tokens"],
                                                 written - units["cache_write_1h_tokens"])
        for part, whole in (("cache_audio_read_tokens", "input_audio_tokens"),
                            ("cache_image_read_tokens", "input_image_tokens")):
            if part in units:
                units[part] = min(units[part], cached, units.get(whole, 0))
        reasoning = min(self.reasoning_tokens, out)
        if (cached, written, reasoning, units) == (self.cached_input_tokens, self.cache_write_tokens,
                                                   self.reasoning_tokens, self.units):
            return self
        return self.model_copy(update={"cached_input_tokens": cached, "cache_write_tokens": written,
                                       "reasoning_tokens": reasoning, "units": units})

    def prices_usage(self) -> dict[str, int]:
        """The usage as genai-prices `Usage` keyword arguments (zeros left out)."""
        values = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            **self.units,
        }
        return {k: v for k, v in values.items() if v}

    def details(self) -> dict[str, Any] | None:
        """What the record's `details` column keeps: the breakdown beyond the columns (None if there is none)."""
        out: dict[str, Any] = {}
        if units := {k: v for k, v in self.units.items() if v}:
            out["units"] = units
        if self.service_tier is not None:
            out["service_tier"] = self.service_tier
        if counters := {k: v for k, v in self.counters.items() if v}:
            out["counters"] = counters
        return out or None

    def with_details(self, details: Any) -> TokenUsage:
        """This usage with the breakdown of a record's `details` laid over it (ignored if malformed)."""
        if not isinstance(details, dict):
            return self
        update: dict[str, Any] = {}
        units = details.get("units")
        if isinstance(units, dict):
            update["units"] = {k: v for k, v in units.items() if k in UNIT_KEYS and _count(v)}
        tier = details.get("service_tier")
        if isinstance(tier, str):
            update["service_tier"] = tier
        counters = details.get("counters")
        if isinstance(counters, dict):
            update["counters"] = {k: v for k, v in counters.items() if isinstance(k, str) and _count(v)}
        return self.model_copy(update=update) if update else self


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0

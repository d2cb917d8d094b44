"""Token and media usage of one call, normalised across providers."""

from __future__ import annotations

from pydantic import BaseModel


class TokenUsage(BaseModel):
    """What one call consumed.

    `input_tokens` counts every prompt token, cached ones included (OpenAI's
    convention); `cached_input_tokens` and `cache_write_tokens` are the parts of
    it read from or written to the provider's prompt cache. `reasoning_tokens`
    are part of `output_tokens`. Media units are counted for non-token endpoints.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    images: int = 0
    characters: int = 0
    seconds: float = 0.0

    def is_empty(self) -> bool:
        return not (self.input_tokens or self.output_tokens or self.images or self.characters or self.seconds)

"""Corrections to the genai-prices catalog: entries that disagree with the provider's own price page.

Each override names the models it applies to (exact names, as clients send
them), the prices in genai-prices' price keys (USD per million tokens, or per
thousand for `*_kcount`), the page that publishes them and the day that page
was read. Overrides are applied before the catalog and shown by
`tokensense prices MODEL`. Remove an entry once the catalog agrees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from genai_prices.types import ClauseEquals, ClauseOr, ModelInfo, ModelPrice


@dataclass(frozen=True)
class PriceOverride:
    provider: str  # the genai-prices provider id
    models: tuple[str, ...]  # model names it applies to (compared in lower case)
    name: str  # the model as the provider calls it
    prices: dict[str, str] = field(hash=False)  # genai-prices price key -> USD
    source: str  # the provider's page that publishes these prices
    checked: str  # the day the page was read (YYYY-MM-DD)
    reason: str  # what the catalog gets wrong

    def model_info(self) -> ModelInfo:
        """The override as a catalog entry, priced by the same calculator as the catalog's own."""
        return ModelInfo(
            id=self.models[0],
            match=ClauseOr(or_=[ClauseEquals(equals=m) for m in self.models]),
            name=self.name,
            price_comments=f"TokenSense override: {self.reason} Source: {self.source} (read {self.checked}).",
            prices=ModelPrice(**{key: Decimal(value) for key, value in self.prices.items()}),
        )

    @property
    def origin(self) -> str:
        return f"TokenSense override ({self.source}, read {self.checked})"


PRICE_OVERRIDES: tuple[PriceOverride, ...] = (
    PriceOverride(
        provider="mistral",
        models=("mistral-large-latest",),
        name="Mistral Large 3",
        prices={"input_mtok": "0.5", "output_mtok": "1.5"},
        source="https://docs.mistral.ai/models/mistral-large-3-25-12 and https://mistral.ai/pricing#api-pricing",
        checked="2026-12-01",
        reason="the catalog maps `mistral-large-latest` to Mistral Large 2 ($2/$6); Mistral's model card "
               "points the alias at Mistral Large 3 (mistral-large-2512), $0.50 input / $1.50 output per 1M tokens.",
    ),
    PriceOverride(
        provider="openai",
        models=("gpt-4o-audio-preview", "gpt-4o-audio-preview-2025-06-03", "gpt-4o-audio-preview-2024-12-17",
                "gpt-4o-audio-preview-2024-10-01"),
        name="GPT-4o Audio",
        prices={"input_mtok": "2.5", "output_mtok": "10", "input_audio_mtok": "40", "output_audio_mtok": "80"},
        source="https://platform.openai.com/docs/pricing (Audio tokens)",
        checked="2026-12-01",
        reason="the catalog lists only the text rates; audio tokens are billed at $40 input / $80 output per 1M.",
    ),
    PriceOverride(
        provider="openai",
        models=("gpt-4o-mini-audio-preview", "gpt-4o-mini-audio-preview-2024-12-17"),
        name="GPT-4o mini Audio",
        prices={"input_mtok": "0.15", "output_mtok": "0.6", "input_audio_mtok": "10", "output_audio_mtok": "20"},
        source="https://platform.openai.com/docs/pricing (Audio tokens)",
        checked="2026-12-01",
        reason="the catalog lists only the text rates; audio tokens are billed at $10 input / $20 output per 1M.",
    ),
)


def find_override(prices_id: str, model: str,
                  overrides: tuple[PriceOverride, ...] = PRICE_OVERRIDES) -> PriceOverride | None:
    name = model.lower()
    for override in overrides:
        if override.provider == prices_id and name in override.models:
            return override
    return None

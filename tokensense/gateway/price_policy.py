"""Budgets need prices: a key with a budget may not call a model TokenSense cannot price."""

from __future__ import annotations

from tokensense.core.errors import GatewayError
from tokensense.gateway.keys import KeyInfo
from tokensense.metering.pricing import PriceBook
from tokensense.providers import ProviderAdapter


def unpriced_refusal(key: KeyInfo, prices: PriceBook, adapter: ProviderAdapter, model: str,
                     requested: str | None = None) -> GatewayError | None:
    """A 403 naming the model if `key` has a budget and no price is known for `model`; None otherwise.

    A budget cannot hold over calls whose cost is unknown. A model priced in
    config.toml (`[models."NAME"]` with prices, or `free = true`), by
    TokenSense's override table or by the genai-prices catalog is allowed.
    Media endpoints are priced by the media table and are not checked here.
    """
    if key.budget_usd is None or prices.resolve(adapter.prices_id, model) is not None:
        return None
    name = requested or model
    return GatewayError(
        403, f"The key `{key.name}` has a budget, and TokenSense knows no price for the model `{name}`: its cost "
        f"could not be counted against the budget. Declare its prices under [models.\"{model}\"] in config.toml "
        "(input_per_mtok, output_per_mtok), or `free = true`.", code="model_unpriced", param="model")

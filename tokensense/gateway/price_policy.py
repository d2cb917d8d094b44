"""Budgets need prices: a key with a budget may not call a model TokenSense cannot price."""

from __future__ import annotations

from tokensense.core.errors import GatewayError
from tokensense.gateway.keys import KeyInfo
from tokensense.metering.pricing import PriceBook
from tokensense.providers import ProviderAdapter


def unpriced_refusal(key: KeyInfo, prices: PriceBook, adapter: ProviderAdapter, model: str,
                     requested: str | None = None, *, budget: str | None = None) -> GatewayError | None:
    """A 403 naming the model if `key` has a budget and no price is known for `model`; None otherwise.

    A budget cannot hold over calls whose cost is unknown. A model priced in
    config.toml (`[models."NAME"]` with prices, or `free = true`), by
    TokenSense's override table or by the genai-prices catalog is allowed.
    Media endpoints are priced by the media table and are not checked here.
    `budget`: how to name a budget on attribution the call counts against (e.g. "workflow `nightly`"), when the
    key itself has none.
    """
    if (key.budget_usd is None and budget is None) or prices.resolve(adapter.prices_id, model) is not None:
        return None
    name = requested or model
    holder = f"The key `{key.name}` has a budget" if key.budget_usd is not None else f"The call counts against the budget of {budget}"
    return GatewayError(
        403, f"{holder}, and TokenSense knows no price for the model `{name}`: its cost "
        f"could not be counted against the budget. Declare its prices under [models.\"{model}\"] in config.toml "
        "(input_per_mtok, output_per_mtok), or `free = true`.", code="model_unpriced", param="model")

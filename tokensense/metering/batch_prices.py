"""What a batch line costs: the catalog's batch rate where it has one, else half the standard price.

The providers bill batch jobs at a discount: OpenAI, Anthropic, Google and
Mistral publish 50% of the standard token prices. genai-prices carries batch
rates as price variants (`when: {processing: batch}`) for many models (checked
against the providers' batch price pages, per its entries' comments); a model
without one, and models declared in config.toml, are priced at
`BATCH_DISCOUNT` times their standard price.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import NamedTuple

from genai_prices import Usage as PricesUsage

from tokensense.core.usage import TokenUsage
from tokensense.metering.pricing import PriceBook

log = logging.getLogger(__name__)

BATCH_DISCOUNT = 0.5
"""The batch price as a share of the standard price where the catalog has no batch rate (the providers' 50% off)."""

BATCH_CONTEXT = {"processing": "batch"}
CATALOG_BATCH_RATE = "catalog batch rate"
HALF_PRICE = "50% of the standard price (the provider's batch discount; the catalog has no batch rate)"


class BatchPrice(NamedTuple):
    cost: float | None  # None: unpriced
    source: str  # where the rate came from (CATALOG_BATCH_RATE or HALF_PRICE)


def has_batch_rate(prices: PriceBook, prices_id: str, model: str, *, at: datetime | None = None) -> bool:
    """Whether the price that prices `model` has a batch variant in force."""
    resolved = prices.resolve(prices_id, model)
    if resolved is None or resolved.kind not in ("catalog", "override"):
        return False
    now = at or datetime.now(UTC)
    for variant in resolved.model.price_variants or ():
        if dict(variant.when) == BATCH_CONTEXT and (variant.constraint is None or variant.constraint.active(now)):
            return True
    return False


def batch_source(prices: PriceBook, prices_id: str, model: str) -> str:
    return CATALOG_BATCH_RATE if has_batch_rate(prices, prices_id, model) else HALF_PRICE


def batch_cost(prices: PriceBook, prices_id: str, model: str, usage: TokenUsage) -> BatchPrice:
    """USD for `usage` of one batch line of `model`, and the rate's source."""
    if not usage.has_tokens:
        return BatchPrice(0.0, batch_source(prices, prices_id, model))
    if has_batch_rate(prices, prices_id, model):
        resolved = prices.resolve(prices_id, model)
        assert resolved is not None
        context = dict(BATCH_CONTEXT)
        if usage.priced_tier:
            context["service_tier"] = usage.priced_tier
        try:
            price = resolved.model.get_prices(datetime.now(UTC), context)  # type: ignore[arg-type]
            cost = float(price.calc_price(PricesUsage(**usage.prices_usage()))["total_price"])
        except Exception:
            log.warning("could not price a batch line of %s/%s", prices_id, model, exc_info=True)
            return BatchPrice(None, CATALOG_BATCH_RATE)
        return BatchPrice(round(cost, 10), CATALOG_BATCH_RATE)
    standard = prices.cost(prices_id, model, usage)
    return BatchPrice(None if standard is None else round(standard * BATCH_DISCOUNT, 10), HALF_PRICE)


def batch_token_cost(prices: PriceBook, prices_id: str, model: str, usage: TokenUsage) -> float:
    """The batch cost of `usage`, 0.0 where unpriced: for reservations, never for records."""
    cost = batch_cost(prices, prices_id, model, usage).cost
    return cost if cost is not None else 0.0


__all__ = ["BATCH_DISCOUNT", "BatchPrice", "batch_cost", "batch_source", "batch_token_cost", "has_batch_rate"]

"""What a call cost: token prices from `genai-prices`, overrides from config.toml."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from genai_prices import Usage as PricesUsage
from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, Provider

from tokensense.config import ModelPrice
from tokensense.usage import TokenUsage

log = logging.getLogger(__name__)

_MISSING = object()


class PriceBook:
    """Looks up models once and prices usage; lookups (hits and misses) are cached."""

    def __init__(self, custom: dict[str, ModelPrice] | None = None) -> None:
        self.custom = dict(custom or {})
        self._snapshot = data_snapshot.get_snapshot()
        self._lookups: dict[tuple[str, str], tuple[Provider, ModelInfo] | None] = {}

    def _lookup(self, prices_id: str, model: str) -> tuple[Provider, ModelInfo] | None:
        key = (prices_id, model)
        found = self._lookups.get(key, _MISSING)
        if found is _MISSING:
            try:
                found = self._snapshot.find_provider_model(model, None, prices_id, None)
            except LookupError:
                found = None
            self._lookups[key] = found
        return found  # type: ignore[return-value]

    def knows(self, prices_id: str, model: str) -> bool:
        """Whether `model` is in the catalog or declared in the configuration."""
        return model in self.custom or self._lookup(prices_id, model) is not None

    def token_cost(self, prices_id: str, model: str, usage: TokenUsage) -> float:
        """USD for the tokens in `usage`; 0.0 for a model with no known price."""
        if not (usage.input_tokens or usage.output_tokens):
            return 0.0
        custom = self.custom.get(model)
        if custom is not None:
            return _custom_cost(custom, usage)
        found = self._lookup(prices_id, model)
        if found is None:
            return 0.0
        provider, model_info = found
        prices_usage = PricesUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cached_input_tokens or None,
            cache_write_tokens=usage.cache_write_tokens or None,
        )
        try:
            calc = model_info.calc_price(prices_usage, provider, genai_request_timestamp=datetime.now(UTC))
        except Exception:  # a catalog entry we cannot price must not fail the request
            log.warning("could not price %s/%s", prices_id, model, exc_info=True)
            return 0.0
        return float(calc.total_price)


def _custom_cost(price: ModelPrice, usage: TokenUsage) -> float:
    cached = usage.cached_input_tokens
    written = usage.cache_write_tokens
    plain_input = max(usage.input_tokens - cached - written, 0)
    cached_rate = price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok
    write_rate = price.cache_write_per_mtok if price.cache_write_per_mtok is not None else price.input_per_mtok
    return (
        plain_input * price.input_per_mtok
        + cached * cached_rate
        + written * write_rate
        + usage.output_tokens * price.output_per_mtok
    ) / 1_000_000

"""What a call cost: token prices from `genai-prices`, overrides from config.toml.

Pricing one call through `genai-prices` takes about 0.1 ms (Decimal arithmetic
over its unit registry), too much for every request. Token prices are linear in
the token counts as long as the input stays within one long-context tier, so
the first call for a model asks the catalog for the cost of a few sample usages,
derives a base and per-token rates for each tier from them, checks them against
one more sample, and prices later calls with five multiplications. A price the
check does not confirm is always computed by the catalog itself.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from typing import NamedTuple

from genai_prices import Usage as PricesUsage
from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, Provider, TieredPrices
from genai_prices.types import ModelPrice as CatalogPrice

from tokensense.config import ModelPrice
from tokensense.metering.usage import TokenUsage

log = logging.getLogger(__name__)

_MISSING = object()


class LinearPrice(NamedTuple):
    """USD = base + rates x tokens, for calls whose input tokens are in (low, high]."""

    low: int  # -1 for the first tier, so that 0 input tokens fall in it
    high: float
    base: float
    input: float
    output: float
    cache_read: float
    cache_write: float


def _catalog_cost(price: CatalogPrice, input_tokens: int, output_tokens: int, cache_read: int = 0,
                  cache_write: int = 0) -> Decimal:
    usage = PricesUsage(input_tokens=input_tokens, output_tokens=output_tokens,
                        cache_read_tokens=cache_read or None, cache_write_tokens=cache_write or None)
    return price.calc_price(usage)["total_price"]


def linear_prices(price: CatalogPrice) -> tuple[LinearPrice, ...] | None:
    """`price` as one linear formula per input tier, or None where the catalog does not confirm them."""
    starts = sorted({tier.start for value in vars(price).values() if isinstance(value, TieredPrices)
                     for tier in value.tiers})
    bounds = [-1, *starts, float("inf")]
    if any(high - low < 4 for low, high in pairwise(bounds)):
        return None
    bands = []
    for low, high in pairwise(bounds):
        i = low + 2  # within the tier, with room for one more input token, one cached and one written
        at = _catalog_cost(price, i, 0)
        rate_in = _catalog_cost(price, i + 1, 0) - at
        rate_out = _catalog_cost(price, i, 1) - at
        rate_read = _catalog_cost(price, i, 0, 1) - at
        rate_write = _catalog_cost(price, i, 0, 0, 1) - at
        band = LinearPrice(low, high, float(at - rate_in * i), float(rate_in), float(rate_out), float(rate_read),
                           float(rate_write))
        # One more sample, far from the first, with every kind of token.
        n = int(min(high, low + 3_000_000))
        expected = float(_catalog_cost(price, n, 777_777, n // 3, n // 5))
        if abs(_linear_cost(band, n, 777_777, n // 3, n // 5) - expected) > 1e-9 * max(expected, 1e-6):
            return None
        bands.append(band)
    return tuple(bands)


def _linear_cost(band: LinearPrice, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int) -> float:
    return (band.base + band.input * input_tokens + band.output * output_tokens + band.cache_read * cache_read
            + band.cache_write * cache_write)


class PriceBook:
    """Looks up models once and prices usage; lookups (hits and misses) and rates are cached."""

    def __init__(self, custom: dict[str, ModelPrice] | None = None) -> None:
        self.custom = dict(custom or {})
        self._snapshot = data_snapshot.get_snapshot()
        self._lookups: dict[tuple[str, str], tuple[Provider, ModelInfo] | None] = {}
        # id(catalog price) -> (that price, its linear formulas or None); the price is
        # kept so that its id cannot be reused by another object.
        self._linear: dict[int, tuple[CatalogPrice, tuple[LinearPrice, ...] | None]] = {}

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
        now = datetime.now(UTC)
        try:
            price = model_info.get_prices(now)  # the price in force now (catalog prices have start dates)
            bands = self._linear_prices(price)
        except Exception:
            log.warning("could not price %s/%s", prices_id, model, exc_info=True)
            return 0.0
        cached, written = usage.cached_input_tokens, usage.cache_write_tokens
        if bands is not None and cached + written <= usage.input_tokens:
            for band in bands:
                if usage.input_tokens <= band.high:
                    return _linear_cost(band, usage.input_tokens, usage.output_tokens, cached, written)
        prices_usage = PricesUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cached_input_tokens or None,
            cache_write_tokens=usage.cache_write_tokens or None,
        )
        try:
            calc = model_info.calc_price(prices_usage, provider, genai_request_timestamp=now)
        except Exception:  # a catalog entry we cannot price must not fail the request
            log.warning("could not price %s/%s", prices_id, model, exc_info=True)
            return 0.0
        return float(calc.total_price)

    def _linear_prices(self, price: CatalogPrice) -> tuple[LinearPrice, ...] | None:
        entry = self._linear.get(id(price))
        if entry is None or entry[0] is not price:
            try:
                bands = linear_prices(price)
            except Exception:  # the catalog cannot price the samples: price every call exactly
                bands = None
            entry = self._linear[id(price)] = (price, bands)
        return entry[1]


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

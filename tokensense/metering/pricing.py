"""What a call cost: config.toml prices, then TokenSense's catalog corrections, then `genai-prices`.

A model is priced from the first of these that knows it: `[models."NAME"]` in
config.toml, the override table in `price_overrides.py` (catalog entries that
disagree with the provider's own price page), the genai-prices catalog (the
bundled snapshot, or the one `tokensense prices update` saved). A call none of
them can price is *unpriced*: its cost is None (NULL in the record), never $0.

Every counter of the usage goes to the calculator: 1-hour cache writes, audio
and image tokens, web searches, and the service tier (OpenAI's `priority` and
`flex`) as genai-prices' price context.

Pricing one call through `genai-prices` takes about 0.1 ms (Decimal arithmetic
over its unit registry), too much for every request. Token prices are linear in
the token counts as long as the input stays within one long-context tier, so
the first call for a model asks the catalog for the cost of a few sample usages,
derives a base and per-token rates for each tier from them, checks them against
one more sample, and prices later calls with five multiplications. Only plain
usage (the four basic counts at the standard tier) takes that path; a price the
check does not confirm, and every usage with a finer breakdown, is computed by
the catalog's own calculator.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from typing import NamedTuple

from genai_prices import Usage as PricesUsage
from genai_prices import data_snapshot
from genai_prices.data_snapshot import DataSnapshot
from genai_prices.types import ClauseEquals, ModelInfo, TieredPrices
from genai_prices.types import ModelPrice as CatalogPrice

from tokensense.core.model_price import ModelPrice
from tokensense.core.usage import TokenUsage
from tokensense.metering.price_overrides import PRICE_OVERRIDES, PriceOverride, find_override

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


FREE_PRICES_PREFIX = "free:"
"""The price id of a provider declared `free = true` in config.toml: `free:NAME`."""


class ResolvedPrice(NamedTuple):
    """Where a model's price comes from, and the entry the calculator prices it with."""

    model: ModelInfo
    kind: str  # "config" | "override" | "catalog" | "free" (a provider declared `free = true`)
    origin: str  # a sentence for people: the file, the override's source page, or the catalog version


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


def config_model_info(model: str, price: ModelPrice) -> ModelInfo:
    """A `[models."NAME"]` table of config.toml as a catalog entry (no prices at all when `free = true`)."""
    rates = {
        "input_mtok": price.input_per_mtok,
        "output_mtok": price.output_per_mtok,
        "cache_read_mtok": price.cached_input_per_mtok,
        "cache_write_mtok": price.cache_write_per_mtok,
    }
    prices = {} if price.free else {k: Decimal(repr(float(v))) for k, v in rates.items() if v is not None}
    return ModelInfo(id=model, match=ClauseEquals(equals=model), name=model, prices=CatalogPrice(**prices))


def catalog_origin(snapshot: DataSnapshot) -> str:
    from genai_prices import __version__

    if snapshot.from_auto_update:
        return f"genai-prices catalog (updated {snapshot.timestamp:%Y-%m-%d %H:%M})"
    return f"genai-prices catalog (bundled with genai-prices {__version__})"


class PriceBook:
    """Looks up models once and prices usage; lookups (hits and misses) and rates are cached."""

    def __init__(self, custom: dict[str, ModelPrice] | None = None, *,
                 overrides: tuple[PriceOverride, ...] = PRICE_OVERRIDES,
                 snapshot: DataSnapshot | None = None) -> None:
        self.custom = dict(custom or {})
        self.overrides = overrides
        self._snapshot = snapshot or data_snapshot.get_snapshot()
        self.catalog_origin = catalog_origin(self._snapshot)
        self._resolved: dict[tuple[str, str], ResolvedPrice | None] = {}
        # id(catalog price) -> (that price, its linear formulas or None); the price is
        # kept so that its id cannot be reused by another object.
        self._linear: dict[int, tuple[CatalogPrice, tuple[LinearPrice, ...] | None]] = {}
        self._unpriced_logged: set[tuple[str, str]] = set()
        self._log_lock = threading.Lock()

    @property
    def snapshot(self) -> DataSnapshot:
        return self._snapshot

    def resolve(self, prices_id: str, model: str) -> ResolvedPrice | None:
        """The entry that prices `model`, or None if nothing does (the call will be unpriced)."""
        key = (prices_id, model)
        found = self._resolved.get(key, _MISSING)
        if found is _MISSING:
            found = self._resolve(prices_id, model)
            self._resolved[key] = found
        return found  # type: ignore[return-value]

    def _resolve(self, prices_id: str, model: str) -> ResolvedPrice | None:
        if prices_id.startswith(FREE_PRICES_PREFIX):  # `[providers.NAME] free = true`: every model costs nothing
            name = prices_id.removeprefix(FREE_PRICES_PREFIX)
            return ResolvedPrice(config_model_info(model, ModelPrice(provider=name, free=True)), "free",
                                 f"config.toml [providers.{name}] (free = true)")
        custom = self.custom.get(model)
        if custom is not None:
            where = "config.toml [models] (free = true)" if custom.free else "config.toml [models]"
            return ResolvedPrice(config_model_info(model, custom), "config", where)
        override = find_override(prices_id, model, self.overrides)
        if override is not None:
            return ResolvedPrice(override.model_info(), "override", override.origin)
        try:
            _, info = self._snapshot.find_provider_model(model, None, prices_id, None)
        except LookupError:
            return None
        return ResolvedPrice(info, "catalog", f"{self.catalog_origin}, entry `{info.id}`")

    def knows(self, prices_id: str, model: str) -> bool:
        """Whether `model` is in the catalog, the override table or the configuration."""
        return model in self.custom or self.resolve(prices_id, model) is not None

    def pricing_kind(self, prices_id: str, model: str) -> str:
        """`catalog`, `override`, `config`, `free` (declared free in config.toml) or `unpriced`."""
        resolved = self.resolve(prices_id, model)
        if resolved is None:
            return "unpriced"
        if resolved.kind == "free" or (resolved.kind == "config" and self.custom[model].free):
            return "free"
        return resolved.kind

    def cost(self, prices_id: str, model: str, usage: TokenUsage, *, at: datetime | None = None) -> float | None:
        """USD for the tokens in `usage`; None if no price is known for the model (unpriced, not free)."""
        if not usage.has_tokens:
            return 0.0
        resolved = self.resolve(prices_id, model)
        if resolved is None:
            self._log_unpriced(prices_id, model)
            return None
        now = at or datetime.now(UTC)
        tier = usage.priced_tier
        try:
            # The price in force now (catalog prices have start dates), in the call's service tier.
            price = resolved.model.get_prices(now, {"service_tier": tier} if tier else None)
        except Exception:
            log.warning("could not price %s/%s", prices_id, model, exc_info=True)
            return None
        if usage.is_plain:
            bands = self._linear_prices(price)
            cached, written = usage.cached_input_tokens, usage.cache_write_tokens
            if bands is not None and cached + written <= usage.input_tokens:
                for band in bands:
                    if usage.input_tokens <= band.high:
                        return _linear_cost(band, usage.input_tokens, usage.output_tokens, cached, written)
        try:
            return float(price.calc_price(PricesUsage(**usage.prices_usage()))["total_price"])
        except Exception:  # a catalog entry or a usage we cannot price must not fail the request
            log.warning("could not price %s/%s", prices_id, model, exc_info=True)
            return None

    def token_cost(self, prices_id: str, model: str, usage: TokenUsage) -> float:
        """USD for the tokens in `usage`, 0.0 where unpriced: for estimates, never for records."""
        cost = self.cost(prices_id, model, usage)
        return cost if cost is not None else 0.0

    def _log_unpriced(self, prices_id: str, model: str) -> None:
        key = (prices_id, model)
        if key in self._unpriced_logged:
            return
        with self._log_lock:
            if key in self._unpriced_logged:
                return
            self._unpriced_logged.add(key)
        log.warning("no price known for %s model %s: its calls are recorded as unpriced (cost NULL). Declare it "
                    "under [models] in config.toml with its prices, or `free = true`. Logged once per model.",
                    prices_id, model)

    def _linear_prices(self, price: CatalogPrice) -> tuple[LinearPrice, ...] | None:
        entry = self._linear.get(id(price))
        if entry is None or entry[0] is not price:
            try:
                bands = linear_prices(price)
            except Exception:  # the catalog cannot price the samples: price every call exactly
                bands = None
            entry = self._linear[id(price)] = (price, bands)
        return entry[1]

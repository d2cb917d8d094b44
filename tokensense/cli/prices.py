"""`tokensense prices MODEL` (the price in force and where it comes from) and `tokensense prices update`."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from genai_prices.types import ModelPrice as CatalogPrice
from genai_prices.types import TieredPrices

from tokensense.config import load_config
from tokensense.metering.catalog_update import CatalogUpdateError, catalog_path, fetch_catalog, install_catalog
from tokensense.metering.media_prices import load_media_prices
from tokensense.metering.pricing import PriceBook
from tokensense.providers import get_provider, provider_for_model
from tokensense.settings import get_settings

EXIT_FAILED = 1


def _unit_label(price_key: str) -> tuple[str, int]:
    """(what the rate is per, e.g. `1M input audio tokens`, how many units that is)."""
    from genai_prices.units import _get_registry

    try:
        unit = _get_registry().unit_for_price_key(price_key)
    except KeyError:
        return price_key, 1
    what = unit.usage_key.replace("_", " ")
    per = {1_000_000: "1M", 1000: "1K", 3600: "hour of"}.get(unit.per, str(unit.per))
    return f"{per} {what}", unit.per


def _rates(price: CatalogPrice) -> list[dict[str, Any]]:
    """Every rate of a catalog price: key, USD, per what, and the long-context tiers."""
    rates = []
    for key, value in vars(price).items():
        if key.startswith("_") or value is None:
            continue
        label, _ = _unit_label(key)
        if isinstance(value, TieredPrices):
            rates.append({"key": key, "usd": str(value.base), "per": label,
                          "tiers": [{"above_input_tokens": t.start, "usd": str(t.price)} for t in value.tiers]})
        elif isinstance(value, Decimal):
            rates.append({"key": key, "usd": str(value), "per": label})
    return rates


def describe_price(prices: PriceBook, prices_id: str, model: str, *, at: datetime | None = None) -> dict[str, Any] | None:
    """The price in force for `model`: where it comes from, every rate, tier variants; None if unpriced."""
    resolved = prices.resolve(prices_id, model)
    if resolved is None:
        return None
    now = at or datetime.now(UTC)
    info = resolved.model
    out: dict[str, Any] = {
        "model": model, "entry": info.id, "name": info.name, "source": resolved.kind, "origin": resolved.origin,
        "rates": _rates(info.get_prices(now)),
    }
    variants = []
    for variant in info.price_variants or ():
        if variant.constraint is not None and not variant.constraint.active(now):
            continue
        variants.append({"when": dict(variant.when), "rates": _rates(variant.prices)})
    if variants:
        out["variants"] = variants
    if info.price_comments:
        out["comments"] = info.price_comments
    return out


def _media_description(model: str) -> dict[str, Any] | None:
    table, _ = load_media_prices(load_config(get_settings()).media_prices)
    price = table.get(model)
    if price is None:
        return None
    return {"model": model, "source": "media", "origin": "TokenSense media price table (tokensense/metering/"
            "media_prices.py) with config.toml [media_prices] overrides",
            "media": price.model_dump(exclude_defaults=True)}


def _print_description(d: dict[str, Any]) -> None:
    print(f"{d['model']}" + (f" ({d['name']})" if d.get("name") else "") + f": {d['origin']}")
    if "media" in d:
        for key, value in d["media"].items():
            print(f"  {key}: {value}")
        return
    if not d["rates"]:
        print("  free (no rates)")
    for rate in d["rates"]:
        print(f"  ${rate['usd']} per {rate['per']}  [{rate['key']}]")
        for tier in rate.get("tiers", ()):
            print(f"    ${tier['usd']} when the prompt is over {tier['above_input_tokens']:,} tokens")
    for variant in d.get("variants", ()):
        when = ", ".join(f"{k} = {v}" for k, v in variant["when"].items())
        print(f"  when {when}:" + ("" if variant["rates"] else " standard rates"))
        for rate in variant["rates"]:
            print(f"    ${rate['usd']} per {rate['per']}  [{rate['key']}]")
    if d.get("batch"):
        print(f"  batch jobs: {d['batch']}")
    if d.get("comments"):
        print(f"  note: {d['comments']}")
    for key, value in d.get("storage", {}).items():
        print(f"  {'cache storage' if key == 'per_mtok_hour' else key}: {value}"
              + (" USD per 1M tokens per hour" if key == "per_mtok_hour" else ""))


def cmd_prices(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.model == "update":
        try:
            path, providers, models = fetch_catalog(settings.home, url=args.url, timeout=args.timeout)
        except CatalogUpdateError as e:
            print(f"error: {e}", file=__import__("sys").stderr)
            return EXIT_FAILED
        print(f"Saved the current genai-prices catalog ({providers} providers, {models} models) to {path}. "
              "Restart the gateway to use it.")
        return 0
    config = load_config(settings)
    prices = PriceBook(config.models, snapshot=install_catalog(settings.home))
    requested = args.model
    adapter = get_provider(args.provider) if args.provider else None
    declared = prices.custom.get(requested)
    if adapter is None and declared is not None:
        adapter = get_provider(declared.provider)
    model = requested
    if adapter is None:
        adapter = provider_for_model(requested)
    if adapter is None and "/" in requested:
        prefix, rest = requested.split("/", 1)
        adapter, model = get_provider(prefix), rest
    if adapter is None:
        print(f"error: no provider serves `{requested}`; name one with --provider or as provider/model",
              file=__import__("sys").stderr)
        return EXIT_FAILED
    media = _media_description(model)
    description = describe_price(prices, adapter.prices_id, model)
    if description is None:
        description = media
    elif media is not None:  # a catalog model with a rate of the media table too (context-cache storage)
        description["storage"] = media["media"]
    if description is None:
        message = (f"{model}: unpriced. No price is known ({prices.catalog_origin}, TokenSense overrides, "
                   "config.toml): calls are recorded with no cost. Declare its prices under "
                   f"[models.\"{model}\"] in config.toml, or `free = true`.")
        print(json.dumps({"model": model, "provider": adapter.name, "source": "unpriced"}) if args.json else message)
        return EXIT_FAILED
    description["provider"] = adapter.name
    if description.get("source") != "media":
        from tokensense.metering.batch_prices import batch_source

        # The lines of batch jobs (`tokensense batches`) are booked at this rate.
        description["batch"] = batch_source(prices, adapter.prices_id, model)
    if args.json:
        print(json.dumps(description, indent=2))
    else:
        _print_description(description)
    return 0


def add_prices_command(commands: Any, parents: list[argparse.ArgumentParser], formatter: Any) -> None:
    """Register `tokensense prices` on the CLI's subcommands."""
    from genai_prices.update_prices import DEFAULT_UPDATE_URL

    prices = commands.add_parser(
        "prices", parents=parents, help="the price in force for a model, and where it comes from; or update the catalog",
        formatter_class=formatter,
        description="Show the price TokenSense charges a model at: every rate (long-context tiers, cache reads and "
        "writes, audio and image tokens, tool fees, service tiers) and its source (config.toml, TokenSense's "
        "override table, or the genai-prices catalog). `tokensense prices update` downloads genai-prices' current "
        f"catalog into {catalog_path(get_settings().home)} (used from the next start; the bundled one stays "
        "the fallback).",
        epilog="examples:\n  tokensense prices claude-sonnet-4-5\n  tokensense prices mistral-large-latest --json\n"
        "  tokensense prices update",
    )
    prices.add_argument("model", metavar="MODEL|update", help="a model name (or provider/model), or `update`")
    prices.add_argument("--provider", help="the provider, when the model name does not say")
    prices.add_argument("--url", default=DEFAULT_UPDATE_URL, help="where `update` fetches the catalog from")
    prices.add_argument("--timeout", type=float, default=15.0, help="seconds `update` waits for the download")
    prices.set_defaults(handler=cmd_prices)

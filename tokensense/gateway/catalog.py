"""The models a key may use, for `GET /v1/models` (OpenAI list format)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from genai_prices import data_snapshot

from tokensense.core.model_price import ModelPrice
from tokensense.providers import PROVIDERS, ProviderAdapter, get_provider


def catalog_models(adapter: ProviderAdapter) -> list[str]:
    """Models of the price catalog that TokenSense routes to `adapter` by name."""
    snapshot = data_snapshot.get_snapshot()
    ids: list[str] = []
    for provider in snapshot.providers:
        if provider.id == adapter.prices_id:
            ids = [m.id for m in provider.models if not m.deprecated]
            break
    listed = getattr(adapter, "listed_models", None)  # providers addressed as `name/model` list their own names
    if listed is not None:
        return listed(ids)
    return sorted(m for m in ids if adapter.owns_model(m))


def list_models(providers: Iterable[str], *, custom: dict[str, ModelPrice], extra: dict[str, list[str]] | None = None,
                allowed: Callable[[str, str], bool] = lambda provider, model: True,
                pricing: Callable[[str, str], str] | None = None) -> dict:
    """`{"object": "list", "data": [...]}` for the providers that have a key configured.

    `pricing(provider, model)` says where each model's price comes from (`catalog`, `override`, `config`,
    `free`, `media`, or `unpriced`: its calls are recorded without a cost); it becomes the entry's `pricing`.
    """
    data: list[dict] = []
    seen: set[str] = set()
    for name in providers:
        adapter = PROVIDERS[name]
        models = catalog_models(adapter) + list((extra or {}).get(name, []))
        models += [m for m, price in custom.items() if get_provider(price.provider) is adapter]
        for model in models:
            if model in seen or not allowed(name, model):
                continue
            seen.add(model)
            entry = {"id": model, "object": "model", "created": 0, "owned_by": name}
            if pricing is not None:
                entry["pricing"] = pricing(name, model)
            data.append(entry)
    return {"object": "list", "data": data}

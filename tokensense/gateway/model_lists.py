"""The model list and single models in the asking SDK's shape, the shapes contributed by the providers.

`GET /v1/models` (and `/v1/models/{id}`, `/v1beta/...`) is one path for every SDK. Each provider whose
SDKs read models in a shape of their own contributes it (`Provider.model_list_shape`); the request is
answered in the shape that claims it (by a path prefix only its SDKs call, else by a header only they
send), and in the fallback shape (the catalog's own list) otherwise. A single model the key may not use
is a 404 in that shape's error format. Input is the list that `catalog.list_models` builds for the key
(already filtered by its policy).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from genai_prices import data_snapshot

from tokensense.providers import PROVIDERS, get_provider
from tokensense.providers.model_lists import ListedModel, ModelListShape

__all__ = ["ListedModel", "ModelListShape", "describe", "find", "listed", "served_in", "shape_for", "shapes"]


def shapes() -> list[ModelListShape]:
    """The registered providers' list shapes, each once, in registry order."""
    out: list[ModelListShape] = []
    for provider in PROVIDERS.values():
        shape = provider.model_list_shape()
        if shape is not None and shape not in out:
            out.append(shape)
    return out


def shape_for(path: str, headers: Mapping[str, str]) -> ModelListShape:
    """The shape of the SDK asking: the one whose path it calls, else whose header it sends, else the fallback."""
    known = shapes()
    for shape in known:
        if shape.claims_path(path):
            return shape
    for shape in known:
        if shape.claims_headers(headers):
            return shape
    return next(shape for shape in known if shape.fallback)


@lru_cache(maxsize=4096)
def describe(provider: str, model: str) -> tuple[str, int | None]:
    """The catalog's display name and context window of `model` (its id and None when the catalog lacks it)."""
    adapter = get_provider(provider)
    if adapter is not None:
        try:
            _, info = data_snapshot.get_snapshot().find_provider_model(model, None, adapter.prices_id, None)
        except LookupError:
            info = None
        if info is not None:
            return info.name or model, info.context_window
    return model, None


def listed(catalog_list: dict) -> list[ListedModel]:
    """The entries of the catalog's model list (`catalog.list_models`), described from the price catalog."""
    out = []
    for entry in catalog_list.get("data") or []:
        name, window = describe(entry["owned_by"], entry["id"])
        out.append(ListedModel(entry["id"], entry["owned_by"], name, window, entry.get("pricing")))
    return out


def served_in(shape: ModelListShape, models: list[ListedModel]) -> list[ListedModel]:
    """The models a client of `shape`'s API can call on it: those of providers that serve that API natively."""
    api = shape.api
    if api is None:
        return models
    return [m for m in models if (p := get_provider(m.provider)) is not None and api in p.native]


def find(models: list[ListedModel], model_id: str) -> ListedModel | None:
    """`model_id` among the key's models; a `models/` prefix (resource names) and `provider/` prefixes are accepted."""
    wanted = model_id.removeprefix("models/")
    for model in models:
        if wanted in (model.id, f"{model.provider}/{model.id}"):
            return model
    return None

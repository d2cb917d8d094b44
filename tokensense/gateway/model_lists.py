"""The model list and single models in the asking SDK's shape: OpenAI's, Anthropic's or Google's.

`GET /v1/models` answers OpenAI's list, or Anthropic's when the request has `anthropic-version` (every
Anthropic SDK sends it); `GET /v1beta/models` (and `/v1/models` from google-genai, which sends
`x-goog-api-client`) answers Google's. `GET /v1/models/{id}` and `/v1beta/models/{id}` answer one model in
the same shapes, 404 in that shape when the key may not use it. Input is the OpenAI list that
`catalog.list_models` builds for the key (already filtered by its policy).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple

from genai_prices import data_snapshot

from tokensense.core.endpoints import Endpoint
from tokensense.providers import get_provider

ANTHROPIC_DEFAULT_LIMIT = 20
ANTHROPIC_MAX_LIMIT = 1000
GOOGLE_DEFAULT_PAGE_SIZE = 50
GOOGLE_MAX_PAGE_SIZE = 1000
_GOOGLE_METHODS = {
    "embedding": ["embedContent", "batchEmbedContents", "countTokens"],
    "imagen": ["predict"],
    "default": ["generateContent", "streamGenerateContent", "countTokens"],
}


class ListShape(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GOOGLE = "google"


class ListedModel(NamedTuple):
    id: str
    provider: str
    display_name: str
    context_window: int | None


def shape_for(path: str, headers: Mapping[str, str]) -> ListShape:
    """Which SDK is asking: `/v1beta/...` or google-genai's client header → Google; `anthropic-version` → Anthropic."""
    if path.startswith(("/v1beta/", "/v1alpha/")) or "x-goog-api-client" in headers:
        return ListShape.GOOGLE
    if "anthropic-version" in headers:
        return ListShape.ANTHROPIC
    return ListShape.OPENAI


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


def listed(openai_list: dict) -> list[ListedModel]:
    """The entries of an OpenAI model list (from `catalog.list_models`), described from the catalog."""
    out = []
    for entry in openai_list.get("data") or []:
        name, window = describe(entry["owned_by"], entry["id"])
        out.append(ListedModel(entry["id"], entry["owned_by"], name, window))
    return out


# The API each shape belongs to: a list in Anthropic's (Google's) shape names only the models that API serves,
# the models of providers whose native API it is; OpenAI's list names every model (chat translation).
_SHAPE_API = {ListShape.ANTHROPIC: Endpoint.MESSAGES, ListShape.GOOGLE: Endpoint.GEMINI}


def served_in(shape: ListShape, models: list[ListedModel]) -> list[ListedModel]:
    """The models a client of `shape`'s API can call on it (`/v1/messages` serves no GPT model)."""
    api = _SHAPE_API.get(shape)
    if api is None:
        return models
    return [m for m in models if (p := get_provider(m.provider)) is not None and api in p.native]


def find(models: list[ListedModel], model_id: str) -> ListedModel | None:
    """`model_id` among the key's models; Google's `models/` prefix and `provider/` prefixes are accepted."""
    wanted = model_id.removeprefix("models/")
    for model in models:
        if wanted in (model.id, f"{model.provider}/{model.id}"):
            return model
    return None


# --- OpenAI ------------------------------------------------------------------------------------


def openai_model(model: ListedModel) -> dict:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.provider}


def openai_list(models: list[ListedModel]) -> dict:
    return {"object": "list", "data": [openai_model(m) for m in models]}


# --- Anthropic ---------------------------------------------------------------------------------


def anthropic_model(model: ListedModel) -> dict:
    return {"type": "model", "id": model.id, "display_name": model.display_name, "created_at": "1970-01-01T00:00:00Z"}


def anthropic_list(models: list[ListedModel], query: Mapping[str, str]) -> dict:
    """Anthropic's page: `limit` (1-1000, default 20), `after_id` / `before_id` cursors, `has_more`."""
    limit = _bounded_int(query.get("limit"), ANTHROPIC_DEFAULT_LIMIT, ANTHROPIC_MAX_LIMIT)
    ids = [m.id for m in models]
    start, stop = 0, len(models)
    if query.get("after_id") in ids:
        start = ids.index(query["after_id"]) + 1
    if query.get("before_id") in ids:
        stop = ids.index(query["before_id"])
        start = max(start, stop - limit)
    page = models[start:stop][:limit]
    return {
        "data": [anthropic_model(m) for m in page],
        "has_more": start + len(page) < stop if "before_id" not in query else start > 0,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }


# --- Google ------------------------------------------------------------------------------------


def google_model(model: ListedModel) -> dict:
    kind = "embedding" if "embedding" in model.id else "imagen" if model.id.startswith("imagen") else "default"
    out: dict[str, Any] = {
        "name": f"models/{model.id}",
        "baseModelId": model.id,
        "version": "001",
        "displayName": model.display_name,
        "description": f"{model.display_name} through TokenSense ({model.provider}).",
        "supportedGenerationMethods": _GOOGLE_METHODS[kind],
    }
    if model.context_window:
        out["inputTokenLimit"] = model.context_window
    return out


def google_list(models: list[ListedModel], query: Mapping[str, str]) -> dict:
    """Google's page: `pageSize` (default 50, at most 1000) and an opaque `pageToken` / `nextPageToken`."""
    size = _bounded_int(query.get("pageSize"), GOOGLE_DEFAULT_PAGE_SIZE, GOOGLE_MAX_PAGE_SIZE)
    start = _page_start(query.get("pageToken"))
    page = models[start : start + size]
    out: dict[str, Any] = {"models": [google_model(m) for m in page]}
    if start + size < len(models):
        out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
    return out


def _page_start(token: str | None) -> int:
    if not token:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(token.encode()).decode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return 0


def _bounded_int(raw: str | None, default: int, maximum: int) -> int:
    try:
        value = int(raw) if raw is not None else default
    except ValueError:
        return default
    return min(max(value, 1), maximum)


# --- one place for the addon -------------------------------------------------------------------


def model_list(shape: ListShape, models: list[ListedModel], query: Mapping[str, str]) -> dict:
    if shape is ListShape.ANTHROPIC:
        return anthropic_list(models, query)
    if shape is ListShape.GOOGLE:
        return google_list(models, query)
    return openai_list(models)


def single_model(shape: ListShape, model: ListedModel) -> dict:
    if shape is ListShape.ANTHROPIC:
        return anthropic_model(model)
    if shape is ListShape.GOOGLE:
        return google_model(model)
    return openai_model(model)

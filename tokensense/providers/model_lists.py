"""Model lists in the shape an SDK expects: the pieces every provider's list shape shares.

A provider whose SDKs read `GET /v1/models` (and `/v1/models/{id}`) in a shape of
their own contributes a `ModelListShape` (`Provider.model_list_shape`): how to tell
its SDKs' requests (a path prefix only they call, a header only they send), the
error format of its 404s, the API whose models its list names, and the list and
single-model bodies. The gateway answers every request in the shape that claims
it, and in the `fallback` shape (the OpenAI-format catalog list) otherwise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar, NamedTuple

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape


class ListedModel(NamedTuple):
    id: str
    provider: str
    display_name: str
    context_window: int | None
    pricing: str | None = None  # where its price comes from (the catalog list's `pricing`), when known


class ModelListShape(ABC):
    """The model list and single model in one SDK family's shape."""

    error_format: ClassVar[ErrorShape]  # the asking SDK's error shape (404 of an unknown model, 401, ...)
    # The endpoint a client of this shape calls the listed models on: its list names only the models of
    # providers that serve that endpoint natively. None: every model (chat translation serves them all).
    api: ClassVar[Endpoint | None] = None
    path_prefixes: ClassVar[tuple[str, ...]] = ()  # paths only this shape's SDKs call
    marker_headers: ClassVar[tuple[str, ...]] = ()  # request headers only this shape's SDKs send
    fallback: ClassVar[bool] = False  # the shape of every client that no other shape claims

    def claims_path(self, path: str) -> bool:
        return bool(self.path_prefixes) and path.startswith(self.path_prefixes)

    def claims_headers(self, headers: Mapping[str, str]) -> bool:
        return any(name in headers for name in self.marker_headers)

    @abstractmethod
    def listing(self, models: list[ListedModel], query: Mapping[str, str]) -> dict:
        """The list body (one page of it, where the shape pages) of `models`."""

    @abstractmethod
    def entry(self, model: ListedModel) -> dict:
        """One model's body."""


def bounded_int(raw: str | None, default: int, maximum: int) -> int:
    """A paging size from the query: `default` when absent or not a number, else clamped to 1..`maximum`."""
    try:
        value = int(raw) if raw is not None else default
    except ValueError:
        return default
    return min(max(value, 1), maximum)

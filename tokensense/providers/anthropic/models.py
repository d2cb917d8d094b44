"""The model list and single model in the Anthropic SDK's shape (`client.models.list()` / `retrieve()`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape
from tokensense.providers.anthropic import ANTHROPIC_ERRORS
from tokensense.providers.model_lists import ListedModel, ModelListShape, bounded_int

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


class AnthropicModelList(ModelListShape):
    """Every Anthropic SDK sends `anthropic-version`; its list names the models `/v1/messages` serves."""

    error_format: ClassVar[ErrorShape] = ANTHROPIC_ERRORS
    api: ClassVar[Endpoint | None] = Endpoint.MESSAGES
    marker_headers: ClassVar[tuple[str, ...]] = ("anthropic-version",)

    def entry(self, model: ListedModel) -> dict:
        return {"type": "model", "id": model.id, "display_name": model.display_name,
                "created_at": "1970-01-01T00:00:00Z"}

    def listing(self, models: list[ListedModel], query: Mapping[str, str]) -> dict:
        """Anthropic's page: `limit` (1-1000, default 20), `after_id` / `before_id` cursors, `has_more`."""
        limit = bounded_int(query.get("limit"), DEFAULT_LIMIT, MAX_LIMIT)
        ids = [m.id for m in models]
        start, stop = 0, len(models)
        if query.get("after_id") in ids:
            start = ids.index(query["after_id"]) + 1
        if query.get("before_id") in ids:
            stop = ids.index(query["before_id"])
            start = max(start, stop - limit)
        page = models[start:stop][:limit]
        return {
            "data": [self.entry(m) for m in page],
            "has_more": start + len(page) < stop if "before_id" not in query else start > 0,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }


MODEL_LIST = AnthropicModelList()

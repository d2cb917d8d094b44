"""The model list and single model in google-genai's shape (`client.models.list()` / `get()`)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, ClassVar

from tokensense.core.endpoints import Endpoint
from tokensense.core.errors import ErrorShape
from tokensense.providers.gemini import GOOGLE_ERRORS, NATIVE
from tokensense.providers.model_lists import ListedModel, ModelListShape, bounded_int

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_METHODS = {
    "embedding": ["embedContent", "batchEmbedContents", "countTokens"],
    "imagen": ["predict"],
    "default": ["generateContent", "streamGenerateContent", "countTokens"],
}


class GeminiModelList(ModelListShape):
    """`/v1beta/...` (and `/v1alpha/...`) paths, or google-genai's `x-goog-api-client` on `/v1/models`;
    the list names the models the Gemini API (`/v1beta/models/{model}:{action}`) serves."""

    error_format: ClassVar[ErrorShape] = GOOGLE_ERRORS
    api: ClassVar[Endpoint | None] = NATIVE
    path_prefixes: ClassVar[tuple[str, ...]] = ("/v1beta/", "/v1alpha/")
    marker_headers: ClassVar[tuple[str, ...]] = ("x-goog-api-client",)

    def entry(self, model: ListedModel) -> dict:
        kind = "embedding" if "embedding" in model.id else "imagen" if model.id.startswith("imagen") else "default"
        out: dict[str, Any] = {
            "name": f"models/{model.id}",
            "baseModelId": model.id,
            "version": "001",
            "displayName": model.display_name,
            "description": f"{model.display_name} through TokenSense ({model.provider}).",
            "supportedGenerationMethods": _METHODS[kind],
        }
        if model.context_window:
            out["inputTokenLimit"] = model.context_window
        return out

    def listing(self, models: list[ListedModel], query: Mapping[str, str]) -> dict:
        """Google's page: `pageSize` (default 50, at most 1000) and an opaque `pageToken` / `nextPageToken`."""
        size = bounded_int(query.get("pageSize"), DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        start = _page_start(query.get("pageToken"))
        page = models[start : start + size]
        out: dict[str, Any] = {"models": [self.entry(m) for m in page]}
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


MODEL_LIST = GeminiModelList()

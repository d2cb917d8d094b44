"""fal.ai (fal.run), for Flux image models."""

from __future__ import annotations

from typing import Any, ClassVar

from tokensense.providers.base import ProviderAdapter, StreamUsage
from tokensense.metering.usage import TokenUsage


class FalStreamUsage(StreamUsage):
    def __init__(self) -> None:
        self._images = 0

    def feed(self, event: str | None, data: dict) -> None:
        images = data.get("images")
        if isinstance(images, list):
            self._images = len(images)

    def result(self) -> TokenUsage:
        return TokenUsage(images=self._images)


class FalAdapter(ProviderAdapter):
    name: ClassVar[str] = "fal"
    display_name: ClassVar[str] = "fal"
    default_base_url: ClassVar[str] = "https://fal.run"
    env_key: ClassVar[str] = "FAL_KEY"
    prices_id: ClassVar[str] = "fal"
    model_prefixes: ClassVar[tuple[str, ...]] = ("fal-ai/",)
    auth_header: ClassVar[str] = "authorization"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        # fal's documented scheme is "Key", not "Bearer".
        return {"authorization": f"Key {api_key}"}

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        if isinstance(body, dict) and isinstance(body.get("images"), list):
            return TokenUsage(images=len(body["images"]))
        return None

    def stream_usage(self) -> StreamUsage:
        return FalStreamUsage()

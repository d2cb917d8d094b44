"""fal.ai (fal.run), for Flux image models."""

from __future__ import annotations

from typing import Any, ClassVar

from tokensense.core.endpoints import Endpoint
from tokensense.core.paths import path_segments
from tokensense.core.usage import TokenUsage
from tokensense.providers.base import MediaRoute, ProviderAdapter, StreamUsage
from tokensense.providers.openai import OPENAI_ERRORS
from tokensense.providers.routes import Route


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
    aliases: ClassVar[tuple[str, ...]] = ("fal-ai",)
    hosts: ClassVar[tuple[str, ...]] = ("fal.run",)

    def media_route(self, endpoint: Endpoint, model: str, *, declared: bool) -> MediaRoute | None:
        # fal.run serves each app at its own path: POST /fal-ai/flux/dev. The app is the model.
        if endpoint is not Endpoint.IMAGES:
            return None
        from tokensense.providers.fal_images import FAL_IMAGES

        return MediaRoute("images", "/" + path_segments(model), FAL_IMAGES)

    def media_models(self, endpoint: Endpoint) -> str | None:
        return "fal-ai/*" if endpoint is Endpoint.IMAGES else None

    def intercept_route(self, method: str, path: str) -> Route | None:
        # fal's own clients call the app's path: an image generation in OpenAI's error shape (as the gateway's).
        if method == "POST" and path.startswith("/fal-ai/"):
            return Route(Endpoint.IMAGES, OPENAI_ERRORS, model=path.strip("/"))
        return None

    def auth_headers(self, api_key: str) -> dict[str, str]:
        # fal's documented scheme is "Key", not "Bearer".
        return {"authorization": f"Key {api_key}"}

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        if isinstance(body, dict) and isinstance(body.get("images"), list):
            return TokenUsage(images=len(body["images"]))
        return None

    def stream_usage(self) -> StreamUsage:
        return FalStreamUsage()

"""OpenAI images requests for fal's Flux apps (`fal.run/fal-ai/...`), translated both ways."""

from __future__ import annotations

import json
import time
from typing import Any

from tokensense.core.errors import GatewayError
from tokensense.providers.base import ImageTranslator
from tokensense.providers.images_format import (
    _MAX_SIDE,
    _SIZE,
    ImagesAnswer,
    check_default_params,
    image_count,
    image_prompt,
    native_params,
    unsupported_image_param,
)

# fal's named sizes; any other WIDTHxHEIGHT goes as `{"width", "height"}`.
FAL_IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
FAL_MAX_IMAGES = 4
def fal_image_size(size: Any) -> str | dict[str, int] | None:
    """OpenAI `size` → fal `image_size`: a preset when one matches, else `{"width", "height"}`."""
    if size is None or size == "auto":
        return None
    if isinstance(size, str):
        if size in FAL_IMAGE_SIZES:
            return size
        if m := _SIZE.match(size):
            width, height = int(m[1]), int(m[2])
            if 0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE:
                for name, dims in FAL_IMAGE_SIZES.items():
                    if dims == (width, height):
                        return name
                return {"width": width, "height": height}
    raise GatewayError(400, f"`size`={size!r} is not a size fal understands; use WIDTHxHEIGHT (for example "
                       f"1024x768) or one of {', '.join(FAL_IMAGE_SIZES)}.", code="invalid_value", param="size")


def fal_request(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI images request → fal's body for a Flux app (`fal.run/fal-ai/flux/dev`).

    fal answers with image URLs, so `response_format` must be `url` (the
    default); TokenSense does not download images to turn them into base64.
    """
    request: dict[str, Any] = {"prompt": image_prompt(body), "num_images": image_count(body, FAL_MAX_IMAGES)}
    image_size = fal_image_size(body.get("size"))
    if image_size is not None:
        request["image_size"] = image_size
    if body.get("response_format") not in (None, "url"):
        raise unsupported_image_param("response_format", body.get("response_format"), "fal.ai Flux",
                           ": fal returns image URLs; use url")
    output_format = body.get("output_format")
    if output_format is not None:
        if output_format not in ("png", "jpeg"):
            raise unsupported_image_param("output_format", output_format, "fal.ai Flux", ": use png or jpeg")
        request["output_format"] = output_format
    check_default_params(body, "fal.ai Flux")
    request.update(native_params(body))
    return request


def fal_answer(answer: Any, *, created: int | None = None) -> ImagesAnswer:
    """fal `{"images": [{"url", "width", "height", "content_type"}], "seed", ...}` → OpenAI `data[].url`."""
    images = answer.get("images") if isinstance(answer, dict) else None
    data: list[dict[str, Any]] = []
    pixels: list[tuple[int, int]] = []
    for image in images or []:
        if not isinstance(image, dict) or not isinstance(image.get("url"), str):
            continue
        data.append({"url": image["url"]})
        width, height = image.get("width"), image.get("height")
        if isinstance(width, int) and isinstance(height, int):
            pixels.append((width, height))
    return ImagesAnswer({"created": created or int(time.time()), "data": data}, pixels)


_FAL_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 422: "invalid_request_error", 429: "rate_limit_error"}


def fal_error(status: int, content: bytes) -> dict[str, Any]:
    """A fal error answer (`{"detail": "..."}` or FastAPI's `[{"loc", "msg"}]`) as an OpenAI error body."""
    try:
        detail = json.loads(content).get("detail")
    except (ValueError, UnicodeDecodeError, AttributeError):
        detail = content.decode("utf-8", errors="replace").strip()[:2000] or None
    param = None
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc") or [] if p != "body"]
                param = param or (loc[-1] if loc else None)
                parts.append(f"{'.'.join(loc)}: {item.get('msg')}" if loc else str(item.get("msg")))
        message = "; ".join(parts)
    else:
        message = str(detail) if detail else ""
    return {"error": {"message": message or f"fal answered HTTP {status}",
                      "type": _FAL_ERROR_TYPES.get(status, "api_error"), "param": param, "code": None}}



FAL_IMAGES = ImageTranslator(request=fal_request, answer=fal_answer, error=fal_error)

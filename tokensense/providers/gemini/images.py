"""OpenAI images requests for Imagen models: the Gemini API's `:predict`, translated both ways."""

from __future__ import annotations

import time
from typing import Any

from tokensense.core.errors import GatewayError
from tokensense.providers.base import ImageTranslator
from tokensense.providers.images_format import (
    ImagesAnswer,
    check_default_params,
    image_count,
    image_prompt,
    native_params,
    unsupported_image_param,
)

# Imagen takes an aspect ratio, not pixels. The pixel sizes are the ones Imagen
# produces for each ratio, plus dall-e-3's wide and tall sizes (1.75 ≈ 16:9).
IMAGEN_ASPECT_RATIOS: dict[str, str] = {
    "1024x1024": "1:1", "896x1280": "3:4", "1280x896": "4:3", "768x1408": "9:16", "1408x768": "16:9",
    "1792x1024": "16:9", "1024x1792": "9:16",
    **{ratio: ratio for ratio in ("1:1", "3:4", "4:3", "9:16", "16:9")},
}
IMAGEN_MAX_IMAGES = 4

def imagen_request(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI images request → the Gemini API's Imagen `:predict` body.

    Imagen answers base64 only, so `response_format` must be `b64_json` (the
    default here, as for gpt-image); it makes PNGs only. Imagen's own default is
    four images: TokenSense always sends `sampleCount` (OpenAI's default is one).
    `user` (an abuse-monitoring id) has no Imagen equivalent and is not sent.
    """
    prompt = image_prompt(body)
    parameters: dict[str, Any] = {"sampleCount": image_count(body, IMAGEN_MAX_IMAGES)}
    size = body.get("size")
    if size is not None and size != "auto":
        ratio = IMAGEN_ASPECT_RATIOS.get(size) if isinstance(size, str) else None
        if ratio is None:
            raise GatewayError(400, f"`size`={size!r} is not a size Imagen makes; use one of "
                               f"{', '.join(IMAGEN_ASPECT_RATIOS)} (or auto).", code="invalid_value", param="size")
        parameters["aspectRatio"] = ratio
    if body.get("response_format") not in (None, "b64_json"):
        raise unsupported_image_param("response_format", body.get("response_format"), "Imagen",
                           ": Imagen returns the image bytes only; use b64_json")
    if body.get("output_format") not in (None, "png"):
        raise unsupported_image_param("output_format", body.get("output_format"), "Imagen", ": Imagen makes png")
    check_default_params(body, "Imagen")
    parameters.update(native_params(body))
    return {"instances": [{"prompt": prompt}], "parameters": parameters}


def imagen_answer(answer: Any, *, created: int | None = None) -> ImagesAnswer:
    """Imagen `{"predictions": [{"bytesBase64Encoded", "mimeType"}]}` → OpenAI `{"created", "data": [{"b64_json"}]}`.

    Predictions without image bytes (Imagen's safety filter, `raiFilteredReason`)
    are left out, as Imagen leaves out filtered images itself.
    """
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    data = [{"b64_json": p["bytesBase64Encoded"]} for p in predictions or []
            if isinstance(p, dict) and isinstance(p.get("bytesBase64Encoded"), str)]
    body: dict[str, Any] = {"created": created or int(time.time()), "data": data}
    mime = next((p.get("mimeType") for p in predictions or [] if isinstance(p, dict) and p.get("mimeType")), None)
    if isinstance(mime, str) and mime.startswith("image/"):
        body["output_format"] = mime.removeprefix("image/")
    return ImagesAnswer(body, [])




def _imagen_error(status: int, content: bytes) -> dict:
    from tokensense.providers.gemini.chat import error_from_provider

    return error_from_provider(status, content)


IMAGEN = ImageTranslator(request=imagen_request, answer=imagen_answer, error=_imagen_error)

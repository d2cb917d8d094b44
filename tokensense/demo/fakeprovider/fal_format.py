"""fal's synchronous `fal.run` answer for image apps (`/fal-ai/flux/dev` and any other `/fal-ai/...`)."""

from __future__ import annotations

import zlib
from typing import Any

from tokensense.demo.fakeprovider.replies import BodyReply, FakeError, FakeRequest, Reply, json_reply
from tokensense.demo.fakeprovider.textgen import new_id

NAME = "fal"

IMAGE_SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_IMAGE_SIZE = "landscape_4_3"
MAX_IMAGES = 4

MISSING_KEY = "Missing authorization header. Send 'Authorization: Key <FAL_KEY>'."


def authenticated(req: FakeRequest) -> bool:
    auth = req.headers.get("authorization", "")
    return auth[:4].lower() == "key " and bool(auth[4:].strip())


def error(status: int, message: str, param: str | None = None) -> BodyReply:
    if status == 422 and param:
        detail: Any = [{"loc": ["body", param], "msg": message, "type": "value_error"}]
    else:
        detail = message
    headers = {"retry-after": "1"} if status == 429 else {}
    return json_reply({"detail": detail}, status=status, headers=headers)


def image_size(value: Any) -> tuple[int, int]:
    if value is None:
        return IMAGE_SIZES[DEFAULT_IMAGE_SIZE]
    if isinstance(value, str):
        if value not in IMAGE_SIZES:
            raise FakeError(
                422, f"image_size must be one of {', '.join(IMAGE_SIZES)} or {{width, height}}, got {value!r}", param="image_size"
            )
        return IMAGE_SIZES[value]
    if isinstance(value, dict) and isinstance(value.get("width"), int) and isinstance(value.get("height"), int):
        return value["width"], value["height"]
    raise FakeError(422, "image_size must be a preset name or an object with integer width and height", param="image_size")


def generate(req: FakeRequest) -> Reply:
    body = req.body
    if not isinstance(body, dict):
        raise FakeError(422, "the request body must be a JSON object", param="body")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise FakeError(422, "field required", param="prompt")
    count = body.get("num_images", 1)
    if not isinstance(count, int) or not 1 <= count <= MAX_IMAGES:
        raise FakeError(422, f"num_images must be an integer from 1 to {MAX_IMAGES}, got {count!r}", param="num_images")
    width, height = image_size(body.get("image_size"))
    seed = body.get("seed")
    if not isinstance(seed, int):
        seed = zlib.crc32(prompt.encode())
    images = [
        {
            "url": f"{req.origin}/_fake/images/{new_id('fal-', 16)}-{width}x{height}.png",
            "width": width,
            "height": height,
            "content_type": "image/png",
        }
        for _ in range(count)
    ]
    return json_reply(
        {
            "images": images,
            "timings": {"inference": 0.35 * count},
            "seed": seed,
            "has_nsfw_concepts": [False] * count,
            "prompt": prompt,
        },
        headers={"x-fal-request-id": new_id("", 32)},
    )

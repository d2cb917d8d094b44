"""OpenAI's images format, the pieces every image translation shares: reading the request, the answer shape."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from tokensense.core.errors import GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.providers.openai_usage import usage_from_openai

# The image models whose requests TokenSense checks before sending (sizes, `n`).
OPENAI_IMAGE_MODEL_PREFIXES = ("dall-e-", "gpt-image-", "chatgpt-image")

# Sizes OpenAI accepts per model; other gpt-image models are passed through unchecked
# (newer ones take more sizes), and OpenAI answers for those itself.
OPENAI_IMAGE_SIZES: dict[str, frozenset[str]] = {
    "dall-e-2": frozenset({"256x256", "512x512", "1024x1024"}),
    "dall-e-3": frozenset({"1024x1024", "1792x1024", "1024x1792"}),
    "gpt-image-1": frozenset({"auto", "1024x1024", "1536x1024", "1024x1536"}),
    "gpt-image-1-mini": frozenset({"auto", "1024x1024", "1536x1024", "1024x1536"}),
}

_MAX_SIDE = 16384

# OpenAI images parameters TokenSense understands; any other key in the body is a
# provider-native parameter (the SDK's `extra_body`) and goes to Imagen or fal as is.
_OPENAI_IMAGE_KEYS = frozenset({
    "model", "prompt", "n", "size", "quality", "response_format", "style", "user", "background",
    "moderation", "output_format", "output_compression", "partial_images", "stream",
})
# Values of the parameters that mean "the provider's default" and so map to nothing.
_DEFAULT_VALUES: dict[str, frozenset[Any]] = {
    "quality": frozenset({None, "auto", "standard"}),
    "style": frozenset({None}),
    "background": frozenset({None, "auto"}),
    "moderation": frozenset({None, "auto"}),
    "output_compression": frozenset({None}),
    "partial_images": frozenset({None, 0}),
    "stream": frozenset({None, False}),
}
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def unsupported_image_param(param: str, value: Any, provider: str, hint: str = "") -> GatewayError:
    return GatewayError(400, f"`{param}`={value!r} is not supported for {provider} image models{hint}.",
                        code="unsupported_parameter", param=param)


def image_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise GatewayError(400, "The request must have a `prompt` (a non-empty string).", code="missing_parameter",
                           param="prompt")
    return prompt


def image_count(body: dict[str, Any], maximum: int | None = None) -> int:
    """`n`, 1 when absent; a 400 naming `n` when it is not a whole number in range."""
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or (maximum is not None and n > maximum):
        limit = f" from 1 to {maximum}" if maximum else " of 1 or more"
        raise GatewayError(400, f"`n` must be a whole number{limit} for this model, not {n!r}.",
                           code="invalid_value", param="n")
    return n


def check_openai_image_request(model: str, body: dict[str, Any]) -> None:
    """Reject a `size` OpenAI's image model does not make, before it costs a round trip."""
    image_count(body)
    size = body.get("size")
    allowed = OPENAI_IMAGE_SIZES.get(model)
    if size is not None and allowed is not None and size not in allowed:
        raise GatewayError(400, f"`size`={size!r} is not a size {model} makes; use one of "
                           f"{', '.join(sorted(allowed))}.", code="invalid_value", param="size")


def check_image_request(model: str, body: dict[str, Any]) -> None:
    """The check of an images request sent as asked: OpenAI's own image models' sizes and `n` (others: unchecked)."""
    if model.startswith(OPENAI_IMAGE_MODEL_PREFIXES):
        check_openai_image_request(model, body)


def image_count_in(answer: Any) -> int:
    data = answer.get("data") if isinstance(answer, dict) else None
    return len(data) if isinstance(data, list) else 0


def image_usage(answer: Any) -> tuple[TokenUsage, int, int]:
    """An OpenAI images answer's usage: (tokens and image count, input image tokens, output image tokens).

    gpt-image answers carry token `usage` (read like every OpenAI usage, so the
    image tokens are in its `units`); when the answer does not split its output
    tokens, all of them are image tokens. dall-e answers carry none: only the image count.
    """
    images = image_count_in(answer)
    tokens = usage_from_openai(answer.get("usage") if isinstance(answer, dict) else None)
    if tokens is None:
        return TokenUsage(images=images), 0, 0
    units = dict(tokens.units)
    if tokens.output_tokens and "output_image_tokens" not in units and not tokens.counters.get("output_text_tokens"):
        units["output_image_tokens"] = tokens.output_tokens
    tokens = tokens.model_copy(update={"images": images, "units": units})
    return tokens, units.get("input_image_tokens", 0), units.get("output_image_tokens", 0)


def images_answer_usage(answer: Any) -> TokenUsage:
    """The usage of an OpenAI images answer (`image_usage` without the image-token split)."""
    return image_usage(answer)[0]


def check_default_params(body: dict[str, Any], provider: str) -> None:
    for param, defaults in _DEFAULT_VALUES.items():
        value = body.get(param)
        if value not in defaults:
            raise unsupported_image_param(param, value, provider)


def native_params(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _OPENAI_IMAGE_KEYS}


class ImagesAnswer(NamedTuple):
    body: dict[str, Any]  # in OpenAI's images format
    pixels: list[tuple[int, int]]  # (width, height) of each image, where the provider says

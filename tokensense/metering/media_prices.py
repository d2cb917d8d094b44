"""The media price table (images, speech, transcription, fal megapixels, document pages, video seconds, context-cache
storage), overridable from config.toml."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache

from genai_prices import Usage as PricesUsage
from genai_prices import data_snapshot
from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

# fal bills "per megapixel, rounding each image up to the nearest megapixel", and
# prices a 1024x1024 image as one megapixel: its megapixel is 2**20 pixels.
MEGAPIXEL = 1024 * 1024
# A speaking rate for models priced per minute of audio when the audio's length
# cannot be measured from the stream (opus, aac, flac): about 150 words a minute.
SPEECH_CHARACTERS_PER_SECOND = 15.0

_SIZE_KEY = re.compile(r"^\d{2,5}x\d{2,5}(/[a-z]+)?$")
_UNIT_KEYS = ("per_image", "per_megapixel", "per_million_characters", "per_minute", "per_thousand_pages",
              "per_second", "per_mtok_hour")
_SECOND_KEY = re.compile(r"^per_second/\d{2,5}x\d{2,5}$")


class MediaPrice(BaseModel):
    """How one media model is priced, in USD; only the units that apply are set."""

    model_config = ConfigDict(frozen=True)

    per_image: float | None = None
    # "WIDTHxHEIGHT" or "WIDTHxHEIGHT/QUALITY" -> USD per image.
    per_image_by_size: dict[str, float] = {}
    per_megapixel: float | None = None
    per_million_characters: float | None = None
    per_minute: float | None = None
    # What OpenAI uses when the request leaves `size` / `quality` out (or says "auto").
    default_size: str | None = None
    default_quality: str | None = None
    per_thousand_pages: float | None = None  # document OCR, per page processed
    per_second: float | None = None  # video, per second of the requested duration
    per_second_by_size: dict[str, float] = {}  # "WIDTHxHEIGHT" -> USD per second (video)
    per_mtok_hour: float | None = None  # context-cache storage, per 1M tokens per hour stored
    source: str | None = None  # where the rate is published (shown by `tokensense prices MODEL`)

    @property
    def storage_only(self) -> bool:
        """Only a context-cache storage rate: the model itself is priced elsewhere (the catalog)."""
        return self.per_mtok_hour is not None and not any((
            self.per_image, self.per_image_by_size, self.per_megapixel, self.per_million_characters,
            self.per_minute, self.per_thousand_pages, self.per_second, self.per_second_by_size))


def _sizes(prices: Mapping[tuple[str, str], float]) -> dict[str, float]:
    return {f"{size}/{quality}": usd for (size, quality), usd in prices.items()}


# Each price: where it is published, and when it was entered here. Prices change;
# override them in config.toml (see `parse_overrides`) rather than editing this table.
DEFAULT_MEDIA_PRICES: dict[str, MediaPrice] = {
    # OpenAI images, per image by size and quality.
    # Source: https://platform.openai.com/docs/pricing ("Image generation"), entered 2026-11-25.
    "dall-e-2": MediaPrice(
        per_image_by_size={"256x256": 0.016, "512x512": 0.018, "1024x1024": 0.020},
        default_size="1024x1024", default_quality="standard",
    ),
    "dall-e-3": MediaPrice(
        per_image_by_size=_sizes({
            ("1024x1024", "standard"): 0.040, ("1024x1792", "standard"): 0.080, ("1792x1024", "standard"): 0.080,
            ("1024x1024", "hd"): 0.080, ("1024x1792", "hd"): 0.120, ("1792x1024", "hd"): 0.120,
        }),
        default_size="1024x1024", default_quality="standard",
    ),
    # gpt-image models are priced by tokens (genai-prices) from the `usage` in their
    # answer; these per-image prices are used only when an answer has no usage.
    # Source: https://platform.openai.com/docs/guides/image-generation ("Cost and latency"), entered 2026-11-25.
    "gpt-image-1": MediaPrice(
        per_image_by_size=_sizes({
            ("1024x1024", "low"): 0.011, ("1024x1536", "low"): 0.016, ("1536x1024", "low"): 0.016,
            ("1024x1024", "medium"): 0.042, ("1024x1536", "medium"): 0.063, ("1536x1024", "medium"): 0.063,
            ("1024x1024", "high"): 0.167, ("1024x1536", "high"): 0.250, ("1536x1024", "high"): 0.250,
        }),
        default_size="1024x1024", default_quality="medium",
    ),
    "gpt-image-1-mini": MediaPrice(
        per_image_by_size=_sizes({
            ("1024x1024", "low"): 0.005, ("1024x1536", "low"): 0.006, ("1536x1024", "low"): 0.006,
            ("1024x1024", "medium"): 0.011, ("1024x1536", "medium"): 0.015, ("1536x1024", "medium"): 0.015,
            ("1024x1024", "high"): 0.036, ("1024x1536", "high"): 0.052, ("1536x1024", "high"): 0.052,
        }),
        default_size="1024x1024", default_quality="medium",
    ),
    # Google Imagen through the Gemini API, per image (any aspect ratio).
    # Source: https://ai.google.dev/gemini-api/docs/pricing ("Imagen"), entered 2026-11-25.
    "imagen-3.0-generate-002": MediaPrice(per_image=0.03),
    "imagen-4.0-fast-generate-001": MediaPrice(per_image=0.02),
    "imagen-4.0-generate-001": MediaPrice(per_image=0.04),
    "imagen-4.0-ultra-generate-001": MediaPrice(per_image=0.06),
    # fal Flux, per megapixel (each image rounded up) or per image.
    # Source: https://fal.ai/models/fal-ai/flux/dev and .../flux/schnell, .../flux-pro/v1.1,
    # .../flux-pro/v1.1-ultra ("Your request will cost ..."), entered 2026-11-25.
    "fal-ai/flux/dev": MediaPrice(per_megapixel=0.025),
    "fal-ai/flux/schnell": MediaPrice(per_megapixel=0.003),
    "fal-ai/flux-pro/v1.1": MediaPrice(per_megapixel=0.04),
    "fal-ai/flux-pro/v1.1-ultra": MediaPrice(per_image=0.06),
    # OpenAI text to speech. tts-1 and tts-1-hd: per 1M input characters.
    # gpt-4o-mini-tts is billed by tokens (text in $0.60/1M, audio out $12/1M); the
    # audio endpoint reports no tokens, so TokenSense uses OpenAI's own estimate per
    # minute of audio produced (its SSE stream does report tokens: those are used then).
    # Source: https://platform.openai.com/docs/pricing ("Transcription and speech generation"), entered 2026-11-25.
    "tts-1": MediaPrice(per_million_characters=15.0),
    "tts-1-hd": MediaPrice(per_million_characters=30.0),
    "gpt-4o-mini-tts": MediaPrice(per_minute=0.015),
    # OpenAI transcription, per minute of audio. The gpt-4o transcribe models are
    # billed by tokens when their answer carries `usage` (json, verbose_json, SSE);
    # the per-minute estimate is used when it does not (text, srt, vtt).
    # Source: https://platform.openai.com/docs/pricing ("Transcription and speech generation"), entered 2026-11-25.
    "whisper-1": MediaPrice(per_minute=0.006),
    "gpt-4o-transcribe": MediaPrice(per_minute=0.006),
    "gpt-4o-mini-transcribe": MediaPrice(per_minute=0.003),
    # Document OCR (Mistral's `mistral-ocr-*`) is priced per page by the genai-prices catalog
    # (`input_document_kpages`, with Mistral's sources); `per_thousand_pages` here is for models it lacks.
    # OpenAI Sora 2 videos, per second of the requested duration, by output size.
    # Source: https://platform.openai.com/docs/pricing ("Video": sora-2 $0.10/s at 720x1280 and 1280x720;
    # sora-2-pro $0.30/s at 720x1280 and 1280x720, $0.50/s at 1024x1792 and 1792x1024), entered 2026-12-06.
    "sora-2": MediaPrice(per_second_by_size={"720x1280": 0.10, "1280x720": 0.10}, default_size="720x1280",
                         source="https://platform.openai.com/docs/pricing (Video: sora-2 $0.10 per second)"),
    "sora-2-pro": MediaPrice(
        per_second_by_size={"720x1280": 0.30, "1280x720": 0.30, "1024x1792": 0.50, "1792x1024": 0.50},
        default_size="720x1280",
        source="https://platform.openai.com/docs/pricing (Video: sora-2-pro $0.30 per second at 720p, "
               "$0.50 at 1024x1792 and 1792x1024)"),
    # Gemini context caches: storage per 1M cached tokens per hour of their TTL. genai-prices has the cache
    # read rates but no storage rate. Source: https://ai.google.dev/gemini-api/docs/pricing ("Context caching
    # price ... storage price": Pro models $4.50, Flash and Flash-Lite $1.00 / 1,000,000 tokens per hour),
    # entered 2026-12-06.
    **{model: MediaPrice(per_mtok_hour=usd, source="https://ai.google.dev/gemini-api/docs/pricing (context caching "
                         f"storage: ${usd:.2f} / 1,000,000 tokens per hour)") for model, usd in (
        ("gemini-3-pro-preview", 4.50), ("gemini-2.5-pro", 4.50), ("gemini-2.5-flash", 1.00),
        ("gemini-2.5-flash-lite", 1.00), ("gemini-2.0-flash", 1.00), ("gemini-2.0-flash-001", 1.00),
        ("gemini-1.5-pro", 4.50), ("gemini-1.5-flash", 1.00),
    )},
}


class MediaPriceError(ValueError):
    """`[media_prices]` in config.toml is not a price table TokenSense can read."""


def parse_overrides(raw: Mapping[str, Mapping[str, float]]) -> dict[str, MediaPrice]:
    """`[media_prices."MODEL"]` tables from config.toml as partial `MediaPrice`s.

    Each table may set `per_image`, `per_megapixel`, `per_million_characters`,
    `per_minute` and per-size image prices as `"1024x1024" = 0.04` or
    `"1024x1024/hd" = 0.08`. Anything else is an error naming the key.
    """
    parsed: dict[str, MediaPrice] = {}
    for model, table in raw.items():
        if not isinstance(table, Mapping):
            raise MediaPriceError(f'[media_prices."{model}"] must be a table of prices')
        fields: dict[str, object] = {}
        sizes: dict[str, float] = {}
        seconds: dict[str, float] = {}
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise MediaPriceError(f'[media_prices."{model}"] {key} must be a price in USD (a number >= 0), '
                                      f"not {value!r}")
            if key in _UNIT_KEYS:
                fields[key] = float(value)
            elif _SECOND_KEY.match(key):
                seconds[key.removeprefix("per_second/")] = float(value)
            elif _SIZE_KEY.match(key):
                sizes[key] = float(value)
            else:
                raise MediaPriceError(
                    f'[media_prices."{model}"] has an unknown key {key!r}: use {", ".join(_UNIT_KEYS)}, '
                    '"WIDTHxHEIGHT", "WIDTHxHEIGHT/QUALITY" or "per_second/WIDTHxHEIGHT"')
        if sizes:
            fields["per_image_by_size"] = sizes
        if seconds:
            fields["per_second_by_size"] = seconds
        parsed[model] = MediaPrice(**fields)  # type: ignore[arg-type]
    return parsed


class MediaPriceTable:
    """The built-in prices with the config.toml overrides laid over them."""

    def __init__(self, overrides: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.prices = dict(DEFAULT_MEDIA_PRICES)
        for model, override in parse_overrides(overrides or {}).items():
            base = self.prices.get(model)
            if base is None:
                self.prices[model] = override
                continue
            update = override.model_dump(exclude_unset=True)
            if "per_image_by_size" in update:
                update["per_image_by_size"] = {**base.per_image_by_size, **update["per_image_by_size"]}
            if "per_second_by_size" in update:
                update["per_second_by_size"] = {**base.per_second_by_size, **update["per_second_by_size"]}
            update.setdefault("source", "config.toml [media_prices]")
            self.prices[model] = base.model_copy(update=update)
        # The media models (listed by /v1/models as `media`, resolved by the media routes): every model but those
        # whose only price is context-cache storage (chat models the catalog prices; storage is their side cost).
        self.models = frozenset(m for m, p in self.prices.items() if not p.storage_only)
        self.declared = self.models - DEFAULT_MEDIA_PRICES.keys()  # models only config.toml knows

    def get(self, model: str) -> MediaPrice | None:
        return self.prices.get(model)

    def image_cost(self, model: str, *, count: int, size: str | None = None, quality: str | None = None,
                   pixels: Iterable[tuple[int, int]] = ()) -> float:
        """USD for `count` images; `pixels` are the (width, height) of each image when the answer says."""
        price = self.prices.get(model)
        if price is None or count <= 0:
            return 0.0
        if price.per_megapixel is not None:
            dims = list(pixels)
            megapixels = sum(max(1, math.ceil(w * h / MEGAPIXEL)) for w, h in dims) + max(count - len(dims), 0)
            return megapixels * price.per_megapixel
        if price.per_image_by_size:
            each = _price_for_size(price, size, quality)
            if each is not None:
                return count * each
            if price.per_image is None:
                log.warning("no image price for %s at size %s, quality %s", model, size, quality)
                return 0.0
        return count * (price.per_image or 0.0)

    def speech_cost(self, model: str, *, characters: int, seconds: float | None) -> float:
        """USD for speech of `characters` input characters lasting `seconds` (None: not measured)."""
        price = self.prices.get(model)
        if price is None:
            return 0.0
        cost = 0.0
        if price.per_million_characters is not None:
            cost += characters * price.per_million_characters / 1_000_000
        if price.per_minute is not None:
            if seconds is None:
                seconds = characters / SPEECH_CHARACTERS_PER_SECOND
            cost += seconds / 60 * price.per_minute
        return cost

    def minute_cost(self, model: str, seconds: float) -> float:
        """USD for `seconds` of audio at the model's per-minute price (0.0 without one)."""
        price = self.prices.get(model)
        if price is None or price.per_minute is None:
            return 0.0
        return seconds / 60 * price.per_minute


    def page_cost(self, model: str, pages: int) -> float | None:
        """USD for `pages` pages of document OCR (None: the model has no page price)."""
        price = self.prices.get(model)
        if price is None or price.per_thousand_pages is None:
            return None
        return max(pages, 0) * price.per_thousand_pages / 1000

    def video_cost(self, model: str, *, seconds: float, size: str | None) -> float | None:
        """USD for a video of `seconds` at `size` (None: no per-second price for that model and size)."""
        price = self.prices.get(model)
        if price is None:
            return None
        rate = price.per_second_by_size.get(size or price.default_size or "") if price.per_second_by_size else None
        if rate is None:
            rate = price.per_second
        return None if rate is None else max(seconds, 0.0) * rate

    def storage_cost(self, model: str, *, tokens: int, seconds: float) -> float | None:
        """USD for storing `tokens` for `seconds` (context caches; None: the model has no storage price)."""
        price = self.prices.get(model)
        if price is None or price.per_mtok_hour is None:
            return None
        return max(tokens, 0) / 1_000_000 * max(seconds, 0.0) / 3600 * price.per_mtok_hour


def load_media_prices(overrides: Mapping[str, Mapping[str, float]] | None) -> tuple[MediaPriceTable, str | None]:
    """The price table with config.toml's overrides, or the built-in one and the reason the overrides were refused."""
    try:
        return MediaPriceTable(overrides), None
    except MediaPriceError as e:
        return MediaPriceTable(), f"config.toml: {e}"


def _price_for_size(price: MediaPrice, size: str | None, quality: str | None) -> float | None:
    if not size or size == "auto":
        size = price.default_size
    if not quality or quality == "auto":
        quality = price.default_quality
    table = price.per_image_by_size
    for key in (f"{size}/{quality}", f"{size}"):
        if key in table:
            return table[key]
    return None


@lru_cache(maxsize=256)
def _catalog_model(prices_id: str, model: str):  # type: ignore[no-untyped-def]
    try:
        return data_snapshot.get_snapshot().find_provider_model(model, None, prices_id, None)
    except LookupError:
        return None


def _catalog_price(prices_id: str, model: str, **usage: int) -> float | None:
    found = _catalog_model(prices_id, model)
    if found is None:
        return None
    provider, model_info = found
    try:
        calc = model_info.calc_price(PricesUsage(**{k: v for k, v in usage.items() if v}), provider,
                                     genai_request_timestamp=datetime.now(UTC))
    except Exception:  # a catalog entry we cannot price must not fail the request
        log.warning("could not price %s/%s", prices_id, model, exc_info=True)
        return None
    return float(calc.total_price)


def catalog_media_cost(prices_id: str, model: str, *, characters: int = 0, seconds: float = 0.0) -> float:
    """USD from the genai-prices catalog for characters or audio seconds, for media models not in the table."""
    whole = math.ceil(seconds)  # the catalog counts whole seconds
    cost = _catalog_price(prices_id, model, input_characters=characters, audio_seconds=whole,
                          input_audio_seconds=whole)
    return cost or 0.0

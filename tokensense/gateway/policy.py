"""Key policies as pure functions: plan defaults, model/provider access, budget windows, cost estimates."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from tokensense.core.errors import GatewayError
from tokensense.core.usage import TokenUsage
from tokensense.gateway.keys import KeyInfo
from tokensense.gateway.reservation import reservation_usage  # noqa: F401  (the budget's reservation: see there)
from tokensense.metering.pricing import PriceBook
from tokensense.providers import ProviderAdapter, get_provider


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None  # requests per minute, None = unlimited
    tpm: int | None  # tokens per minute, None = unlimited


# Defaults a plan gives a key that sets no limit of its own (documented in the README).
PLAN_LIMITS: dict[str, Limits] = {
    "free": Limits(rpm=20, tpm=40_000),
    "pro": Limits(rpm=600, tpm=2_000_000),
    "enterprise": Limits(rpm=None, tpm=None),
}

# When a request does not say how much it may generate, its reservation assumes this many output tokens.
DEFAULT_OUTPUT_ESTIMATE = 1024
WINDOW_SECONDS = 60


def limits_for(key: KeyInfo) -> Limits:
    """The key's own RPM/TPM, else its plan's."""
    plan = PLAN_LIMITS.get(key.plan or "", Limits(None, None))
    return Limits(rpm=key.rpm if key.rpm is not None else plan.rpm,
                  tpm=key.tpm if key.tpm is not None else plan.tpm)


def check_access(key: KeyInfo, adapter: ProviderAdapter, model: str, requested: str | None = None, *,
                 model_named: bool = True) -> None:
    """403 if the key may not use this provider or model; the message names what was refused.

    `model_named=False`: a passed-through call that names no model (model rules then do not apply; endpoint
    rules do, `gateway/passthrough.py`)."""
    if key.allowed_providers:
        allowed = {(found.name if (found := get_provider(p)) else p) for p in key.allowed_providers}
        if adapter.name not in allowed:
            raise GatewayError(403, f"The key `{key.name}` may not use the provider `{adapter.name}` "
                               f"(allowed: {', '.join(sorted(allowed))}).", code="provider_not_allowed")
    if key.allowed_models and model_named:
        names = {model, requested or model, f"{adapter.name}/{model}"}
        if not any(fnmatchcase(n, pattern) for n in names for pattern in key.allowed_models):
            raise GatewayError(403, f"The key `{key.name}` may not use the model `{requested or model}` "
                               f"(allowed: {', '.join(key.allowed_models)}).", code="model_not_allowed", param="model")


def model_allowed(key: KeyInfo, provider: str, model: str) -> bool:
    adapter = get_provider(provider)
    if adapter is None:
        return False
    try:
        check_access(key, adapter, model)
    except GatewayError:
        return False
    return True


def budget_window(period: str, now: datetime | None = None) -> tuple[str, datetime | None, float | None]:
    """(window id, start, seconds until it resets) for a budget period; `total` never resets."""
    now = now or datetime.now(UTC)
    if period == "daily":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        nxt = datetime.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)
        return f"daily:{start:%Y-%m-%d}", start, (nxt - now).total_seconds()
    if period == "monthly":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
        return f"monthly:{start:%Y-%m}", start, (nxt - now).total_seconds()
    return "total", None, None


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        if value.get("type") in ("image_url", "image", "input_image") or "inlineData" in value:
            return 3000  # about 765 tokens: a 1024px image at high detail
        return sum(_text_chars(v) for k, v in value.items() if k not in ("type", "role", "model"))
    return 0


def estimate_usage(body: dict[str, Any]) -> TokenUsage:
    """A generous guess of a request's tokens before it runs: prompt characters / 3, plus the output cap."""
    prompt = body.get("messages") or body.get("contents") or body.get("input") or body.get("prompt") or ""
    chars = _text_chars(prompt) + _text_chars(body.get("system") or body.get("systemInstruction") or "")
    if body.get("tools"):
        chars += len(json.dumps(body["tools"]))
    input_tokens = math.ceil(chars / 3) + 8
    config: dict[str, Any] = body["generationConfig"] if isinstance(body.get("generationConfig"), dict) else {}
    cap = (body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
           or config.get("maxOutputTokens"))
    output_tokens = cap if isinstance(cap, int) and cap > 0 else DEFAULT_OUTPUT_ESTIMATE
    if "input" in body and "messages" not in body:  # embeddings produce no output tokens
        output_tokens = 0
    return TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)


def estimate_cost(prices: PriceBook, adapter: ProviderAdapter, model: str, usage: TokenUsage) -> float:
    return prices.token_cost(adapter.prices_id, model, usage)

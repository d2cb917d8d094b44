"""Optional configuration file: models, prices, retries, fallbacks, timeouts, budget alerts (`config.toml`)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tokensense.settings import Settings


class ModelPrice(BaseModel):
    """USD per million tokens for a model the catalog lacks, or overrides it.

    A declared model must give its prices (`input_per_mtok` and
    `output_per_mtok`) or say `free = true` (a local server): a model without a
    price would otherwise be recorded as costing $0, indistinguishable from free.
    Cached reads and cache writes default to the input price.
    """

    provider: str
    input_per_mtok: float | None = Field(default=None, ge=0)
    output_per_mtok: float | None = Field(default=None, ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_per_mtok: float | None = Field(default=None, ge=0)
    free: bool = False

    @model_validator(mode="after")
    def _priced_or_free(self) -> ModelPrice:
        missing = [name for name in ("input_per_mtok", "output_per_mtok") if getattr(self, name) is None]
        if self.free:
            if len(missing) < 2:
                raise ValueError("a model with `free = true` takes no prices; remove one or the other")
        elif missing:
            raise ValueError(f"gives no {' or '.join(missing)}: set its prices in USD per million tokens, "
                             "or `free = true` if calls to it cost nothing (a local server)")
        return self


class Timeouts(BaseModel):
    """Seconds an upstream attempt may take: until the answer's first byte (headers), and in all."""

    model_config = ConfigDict(extra="forbid")

    first_byte: float | None = Field(default=None, gt=0)
    total: float | None = Field(default=None, gt=0)


class RoutingConfig(BaseModel):
    """`[routing]`: retries before the first byte, and the provider-key pools' cool-downs.

    `[routing.timeouts]` maps a provider name, a model name or a model pattern
    (`gpt-4o*`) to its `Timeouts`; a model's entry wins over its provider's, field by field.
    """

    model_config = ConfigDict(extra="forbid")

    retries: int = Field(default=1, ge=0, le=10)  # retries of one model after its first attempt
    max_retry_wait: float = Field(default=30.0, ge=0)  # a longer Retry-After moves on to the next fallback
    backoff: float = Field(default=0.5, gt=0)  # the first retry's wait (doubled for each next one, with jitter)
    max_backoff: float = Field(default=8.0, gt=0)
    key_cooldown: float = Field(default=60.0, gt=0)  # a key answered 429 without Retry-After rests this long
    breaker_failures: int = Field(default=5, ge=1)  # 5xx or connection failures in a row that open a key's circuit
    breaker_cooldown: float = Field(default=30.0, gt=0)  # seconds before the half-open probe
    timeouts: dict[str, Timeouts] = Field(default_factory=dict)


class AlertsConfig(BaseModel):
    """`[alerts]`: a webhook POSTed when a key's spend crosses a fraction of its budget (once per period)."""

    webhook_url: str | None = None
    thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0])
    format: Literal["json", "slack"] = "json"

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("webhook_url must start with http:// or https://")
        return value or None

    @field_validator("thresholds")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < t <= 10 for t in value):
            raise ValueError("thresholds are fractions of the budget, e.g. [0.5, 0.8, 1.0] (each above 0)")
        return sorted(set(value))


class FileConfig(BaseModel):
    models: dict[str, ModelPrice] = Field(default_factory=dict)
    media_prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    intercept_hosts: dict[str, str] = Field(default_factory=dict)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    # `"gpt-4o-mini" = ["claude-haiku-4-5", "gemini-2.5-flash"]`: tried in order once a model's retries are used up.
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("fallbacks")
    @classmethod
    def _fallbacks_are_model_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        cleaned: dict[str, list[str]] = {}
        for model, chain in value.items():
            names = [name.strip() for name in chain]
            if not model.strip() or any(not name for name in names):
                raise ValueError(f"[fallbacks] {model!r}: model names cannot be empty")
            cleaned[model.strip()] = [n for n in dict.fromkeys(names) if n != model.strip()]
        return cleaned


class ConfigError(ValueError):
    pass


def config_path(settings: Settings) -> Path:
    return settings.config_file or settings.home / "config.toml"


def load_config(settings: Settings) -> FileConfig:
    """Read `config.toml` (missing file: defaults). A bad file is a clear error."""
    path = config_path(settings)
    if not path.exists():
        return FileConfig()
    try:
        data = tomllib.loads(path.read_text())
        return FileConfig.model_validate(data)
    except (tomllib.TOMLDecodeError, ValidationError) as e:
        raise ConfigError(f"{path}: {e}") from e

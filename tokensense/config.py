"""Optional configuration file: custom models and price overrides (`config.toml`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, model_validator

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


class FileConfig(BaseModel):
    models: dict[str, ModelPrice] = Field(default_factory=dict)
    media_prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    intercept_hosts: dict[str, str] = Field(default_factory=dict)


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

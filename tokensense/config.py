"""Optional configuration file: custom models and price overrides (`config.toml`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from tokensense.settings import Settings


class ModelPrice(BaseModel):
    """USD per million tokens for a model the catalog lacks, or overrides it."""

    provider: str
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None


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

"""A model's price as config.toml declares it (shared by the configuration and the price book)."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


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

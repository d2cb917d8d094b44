"""Two more rollup cuts: `tokensense usage --by status` (endpoint, model pairs) reads a few rows per day, not the `all` cut

Revision ID: 0014_usage_rollup_cuts
Revises: 0013_usage_rollup_days
Created: 2026-12-06

A report by a field no small cut had (status, endpoint) or by a pair across cuts (model and project,
workflow and model) summed the `all` cut: about one row per combination of every field and day, 330,000
rows for 30 days at 10 million records (1.2 s on PostgreSQL). Two cuts with hour and day rows now answer
them (`tokensense.storage.cuts.CUTS`): 6 `outcome` (source, provider, model, endpoint, status) and 7
`attribution` (project, workflow, step, provider, model). Back-filled here from the `all` cut's hour and
day rows, which are exact and kept for ever (no record is read, pruned ones count). No table or column
changes. Stop the gateways that write (or run `tokensense db upgrade` before starting the new version):
an older gateway writing while this runs would add no rows to the new cuts.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_usage_rollup_cuts"
down_revision: str | None = "0013_usage_rollup_days"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ALL_CUT = 9  # tokensense.storage.cuts.CUTS' `all` at this revision
NEW_CUTS = (  # (id, fields), as tokensense.storage.cuts.CUTS at this revision: hour and day rows
    (6, ("source", "provider", "model", "endpoint", "status")),
    (7, ("project", "workflow", "step", "provider", "model")),
)
GRAINS = (3600, 86_400)
MEASURES = ("requests", "errors", "unpriced", "input_tokens", "output_tokens", "cached_input_tokens",
            "cache_write_tokens", "reasoning_tokens", "images", "characters", "seconds_us", "cost_units",
            "latency_count", "latency_us", "ttft_count", "ttft_us")


def _dims_key(fields: tuple[str, ...]) -> str:
    """`rollups.dims_key` in SQL: `len:value` per field, `~` for NULL (as migration 0006 spells it)."""
    return " || ".join(f"COALESCE(CAST(LENGTH(CAST({f} AS TEXT)) AS TEXT) || ':' || CAST({f} AS TEXT), '~')"
                       for f in fields)


def _execute(statement: str) -> None:
    op.execute(sa.text(statement.replace(":", "\\:")))  # ':' in SQL literals is not a bind parameter


def upgrade() -> None:
    for cut, fields in NEW_CUTS:
        _execute(f"DELETE FROM usage_rollup WHERE cut = {cut}")
        for grain in GRAINS:
            columns = ", ".join(("cut", "grain", "bucket", "dims_key", *fields, *MEASURES))
            _execute(
                f"INSERT INTO usage_rollup ({columns}) "
                f"SELECT {cut}, {grain}, bucket, {_dims_key(fields)}, {', '.join(fields)}, "
                f"{', '.join(f'SUM({m})' for m in MEASURES)} "
                f"FROM usage_rollup WHERE cut = {ALL_CUT} AND grain = {grain} "
                f"GROUP BY bucket, {', '.join(fields)}"
            )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ANALYZE usage_rollup")


def downgrade() -> None:
    for cut, _fields in NEW_CUTS:
        op.execute(f"DELETE FROM usage_rollup WHERE cut = {cut}")

"""Day rows of the `all` rollup cut: a report by fields no small cut has reads a row per day, not per hour

Revision ID: 0013_usage_rollup_days
Revises: 0012_videos
Created: 2026-12-06

`tokensense usage --by model,project --since 7d` (any grouping or filter only the `all` cut has) summed
one row per hour and combination of fields: about as many rows as records when combinations vary.
The `all` cut now also has day rows (`grain` 86400, UTC days), written with the hour rows from now on
(`rollups.rollup_deltas`); a window reads hour rows up to the next UTC midnight and day rows from there
(`cuts.window_parts`). Back-filled here from the cut's hour rows, which are exact and kept for ever (no
record is read). No table or column changes. Stop the gateways that write (or run `tokensense db upgrade`
before starting the new version): an older gateway writing while this runs would add no day rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013_usage_rollup_days"
down_revision: str | None = "0012_videos"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ALL_CUT = 9  # tokensense.storage.rollups.CUTS' `all` at this revision
HOUR = 3600
DAY = 86_400
DIMS = ("key_id", "key_name", "project", "workflow", "step", "source", "provider", "model", "endpoint", "status")
MEASURES = ("requests", "errors", "unpriced", "input_tokens", "output_tokens", "cached_input_tokens",
            "cache_write_tokens", "reasoning_tokens", "images", "characters", "seconds_us", "cost_units",
            "latency_count", "latency_us", "ttft_count", "ttft_us")


def upgrade() -> None:
    columns = ", ".join(("cut", "grain", "bucket", "dims_key", *DIMS, *MEASURES))
    day = f"bucket - bucket % {DAY}"
    op.execute(f"DELETE FROM usage_rollup WHERE cut = {ALL_CUT} AND grain = {DAY}")
    op.execute(
        f"INSERT INTO usage_rollup ({columns}) "
        f"SELECT cut, {DAY}, {day}, dims_key, {', '.join(DIMS)}, {', '.join(f'SUM({m})' for m in MEASURES)} "
        f"FROM usage_rollup WHERE cut = {ALL_CUT} AND grain = {HOUR} "
        f"GROUP BY cut, {day}, dims_key, {', '.join(DIMS)}"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ANALYZE usage_rollup")


def downgrade() -> None:
    op.execute(f"DELETE FROM usage_rollup WHERE cut = {ALL_CUT} AND grain = {DAY}")

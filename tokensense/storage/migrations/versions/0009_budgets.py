"""Budgets on attribution: table `budgets`, and index `ix_usage_execution_id_created_at`

Revision ID: 0009_budgets
Revises: 0008_max_call_usd
Created: 2026-12-06

`tokensense budgets set --project|--workflow|--source NAME --usd X [--period day|week|month|total]`
and `--each-execution [--workflow NAME]`: one row per (level, name, period). The index reads an
execution's spend (no rollup has execution ids) when its budget counter is seeded.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_budgets"
down_revision: str | None = "0008_max_call_usd"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("level", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("usd", sa.Float(), nullable=False),
        sa.Column("period", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_budgets_level", "budgets", ["level"], unique=False)
    op.create_index("ix_usage_execution_id_created_at", "usage", ["execution_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_usage_execution_id_created_at", table_name="usage")
    op.drop_index("ix_budgets_level", table_name="budgets")
    op.drop_table("budgets")

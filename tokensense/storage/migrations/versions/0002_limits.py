"""Budgets and rate limits: indexes for spend per key per period and for the dashboard; api_keys.updated_at

Revision ID: 0002_limits
Revises: 0001_initial
Created: 2026-11-25

`ix_usage_key_id_created_at` serves the budget check (the sum of a key's cost since
the start of its period); `ix_usage_created_at_workflow` the dashboard's time-window
queries grouped by workflow. `api_keys.updated_at` records when a key's limits were
last changed (`tokensense keys update`); existing keys keep NULL (never changed).
Building the indexes reads the whole usage table once, at the first start after the upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_limits"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch operations: SQLite cannot ALTER most things, so Alembic rebuilds a table there
    # when it must; adding a nullable column and indexes needs no rebuild.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("usage") as batch:
        batch.create_index("ix_usage_key_id_created_at", ["key_id", "created_at"])
        batch.create_index("ix_usage_created_at_workflow", ["created_at", "workflow"])


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_index("ix_usage_created_at_workflow")
        batch.drop_index("ix_usage_key_id_created_at")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("updated_at")

"""Endpoint access rules: `api_keys.allowed_endpoints`, the endpoints a key may call (empty: any)

Revision ID: 0011_key_endpoints
Revises: 0010_batch_jobs
Created: 2026-12-06

`tokensense keys create NAME --allow-endpoint chat.completions --allow-endpoint vector_stores` limits a key to
those endpoints (patterns, like `--allow-model`); `keys update --allow-any-endpoint` lifts it. Existing keys may
call any endpoint (an empty list).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_key_endpoints"
down_revision: str | None = "0010_batch_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("allowed_endpoints", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("allowed_endpoints")

"""Owned resources: `owned_resources`, the owner key of each video job and context cache made through TokenSense

Revision ID: 0012_videos
Revises: 0011_key_endpoints
Created: 2026-12-06

A video (`/v1/videos`) or context cache (`cachedContents`) is visible only to the key that made it; a video job
is booked once, when it is seen completed (`booked_at`, set by one conditional update whoever sees it).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_videos"
down_revision: str | None = "0011_key_endpoints"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "owned_resources",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("attribution", sa.JSON(), nullable=True),
        sa.Column("state", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("booked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_owned_resources_key_id", "owned_resources", ["key_id"])
    op.create_index("ix_owned_resources_created_at", "owned_resources", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_owned_resources_created_at", table_name="owned_resources")
    op.drop_index("ix_owned_resources_key_id", table_name="owned_resources")
    op.drop_table("owned_resources")

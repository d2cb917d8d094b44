"""Resumable upload sessions in the database, so that any gateway process can take an upload's next request

Revision ID: 0015_batches2
Revises: 0014_usage_rollup_cuts
Created: 2026-12-06

`upload_sessions`: a resumable upload (Gemini's files API) started through TokenSense. The token handed to the
client in the session URL stands for the key that started it; the row holds the provider's upload id, the
create call's attribution, when it expires, and the input scanner's state (the lines summed so far, the bytes
seen, an unfinished line), so the next request of the upload may land on another worker or instance.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_batches2"
down_revision: str | None = "0014_usage_rollup_cuts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "upload_sessions",
        sa.Column("token", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("upload_id", sa.String(), nullable=False),
        sa.Column("attribution", sa.JSON(), nullable=True),
        sa.Column("size_limit", sa.BigInteger(), nullable=True),
        sa.Column("scanner", sa.JSON(), nullable=True),
        sa.Column("partial", sa.LargeBinary(), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("token"),
    )
    op.create_index("ix_upload_sessions_expires_at", "upload_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_upload_sessions_expires_at", table_name="upload_sessions")
    op.drop_table("upload_sessions")

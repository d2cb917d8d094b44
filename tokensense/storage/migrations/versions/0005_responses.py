"""Stored responses: the owner key of every Responses API response id, and translated conversations

Revision ID: 0005_responses
Revises: 0004_provider_key_pools
Created: 2026-12-01

`stored_responses` maps a response id to the TokenSense key that created it (all keys share one
provider key, so the provider cannot tell them apart), with the provider, the model, the
`previous_response_id` it continued and, for responses TokenSense translated for Claude and Gemini,
the turn's input and output items (JSON) from which a later `previous_response_id` is served, and the
answer itself (served again by `GET /v1/responses/{id}`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_responses"
down_revision: str | None = "0004_provider_key_pools"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("previous_response_id", sa.String(), nullable=True),
        sa.Column("items", sa.JSON(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_stored_responses_key_id", "stored_responses", ["key_id"])
    op.create_index("ix_stored_responses_created_at", "stored_responses", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_stored_responses_created_at", table_name="stored_responses")
    op.drop_index("ix_stored_responses_key_id", table_name="stored_responses")
    op.drop_table("stored_responses")

"""Usage records: the full usage breakdown, unpriced calls, attempts, and one record per (request, attempt)

Revision ID: 0003_usage_details
Revises: 0002_limits
Created: 2026-12-01

- `usage.details` (JSON, nullable): every billable counter the provider reported
  (cache writes by TTL, audio tokens, server-tool calls, service tier, ...), so that
  `tokensense reprice` prices exactly what live metering priced.
- `usage.cost_usd` becomes nullable: NULL means the catalog could not price the call
  (recorded as unpriced), never a silent $0.
- `usage.attempt` (default 1): a retried or fallen-back call writes one record per
  upstream attempt, all with the call's request id.
- A unique index on (request_id, attempt) replaces the plain request_id index, so a
  record written twice (a spool replayed after an outage) is stored once.
  Existing duplicates, if any, keep their lowest id and the others are renumbered.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_usage_details"
down_revision: str | None = "0002_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("details", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
        batch.alter_column("cost_usd", existing_type=sa.Float(), nullable=True)
    # Records from before this revision could share a request id only by accident; number them apart.
    op.execute(
        "UPDATE usage SET attempt = 1 + (SELECT COUNT(*) FROM usage AS earlier "
        "WHERE earlier.request_id = usage.request_id AND earlier.id < usage.id)"
    )
    with op.batch_alter_table("usage") as batch:
        batch.drop_index("ix_usage_request_id")
        batch.create_index("ux_usage_request_id_attempt", ["request_id", "attempt"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_index("ux_usage_request_id_attempt")
        batch.create_index("ix_usage_request_id", ["request_id"])
        batch.alter_column("cost_usd", existing_type=sa.Float(), nullable=False)
        batch.drop_column("attempt")
        batch.drop_column("details")

"""Per-call cost caps: `api_keys.max_call_usd`, the largest cost one call of the key may have

Revision ID: 0008_max_call_usd
Revises: 0007_admin_keys
Created: 2026-12-06

`tokensense keys create NAME --max-call-usd X` (and `keys update --max-call-usd X / --no-max-call-usd`):
a call whose largest cost (its budget reservation) is above X is refused 402 before the provider.
Existing keys have no cap (NULL).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_max_call_usd"
down_revision: str | None = "0007_admin_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("max_call_usd", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("max_call_usd")

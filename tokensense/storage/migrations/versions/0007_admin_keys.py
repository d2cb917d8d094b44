"""Admin keys: `api_keys.admin`, the keys that open the browser dashboard

Revision ID: 0007_admin_keys
Revises: 0006_usage_rollups
Created: 2026-12-06

`tokensense keys create NAME --admin` makes a key that may read every record: it opens
`tokensense dashboard --web`. Existing keys are not admin keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_admin_keys"
down_revision: str | None = "0006_usage_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("admin")

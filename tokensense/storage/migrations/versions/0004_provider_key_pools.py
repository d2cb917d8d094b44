"""Provider-key pools: several named keys per provider, and keys taken out after a 401/403

Revision ID: 0004_provider_key_pools
Revises: 0003_usage_details
Created: 2026-12-02

- `provider_credentials.name` (default `default`): a provider has a pool of keys,
  told apart by name; the primary key becomes (provider, name). Existing keys are
  named `default`.
- `provider_credentials.disabled_at`, `disabled_reason` (nullable): a key the
  provider refused (401/403) is taken out of its pool until an operator restores it.

SQLite cannot change a primary key in place: the table is rebuilt (batch mode,
`recreate="always"`), rows included. Downgrading keeps one key per provider, the one
named `default` if there is one, else the first by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0004_provider_key_pools"
down_revision: str | None = "0003_usage_details"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "provider_credentials"


def _primary_key_name() -> str | None:
    return sa.inspect(op.get_bind()).get_pk_constraint(TABLE).get("name")


def _rebuild() -> Literal["always", "auto"]:
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    old_name = _primary_key_name()
    with warnings.catch_warnings(), op.batch_alter_table(TABLE, recreate=_rebuild()) as batch:
        # SQLite's primary key has no name to drop: the new one replaces it, and SQLAlchemy
        # says so in a warning about the copied `provider` column's primary-key flag.
        warnings.filterwarnings("ignore", message=".*specifies columns 'provider' as primary_key=True")
        batch.add_column(sa.Column("name", sa.String(), nullable=False, server_default="default"))
        batch.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("disabled_reason", sa.String(), nullable=True))
        if old_name:
            batch.drop_constraint(old_name, type_="primary")
        batch.create_primary_key(old_name or f"{TABLE}_pkey", ["provider", "name"])


def downgrade() -> None:
    # One key per provider survives: `default`, else the first by name.
    rank = "CASE WHEN {t}.name = 'default' THEN '' ELSE {t}.name END"
    op.execute(
        f"DELETE FROM {TABLE} WHERE {rank.format(t=TABLE)} <> "
        f"(SELECT MIN({rank.format(t='kept')}) FROM {TABLE} AS kept WHERE kept.provider = {TABLE}.provider)"
    )
    old_name = _primary_key_name()
    with op.batch_alter_table(TABLE, recreate=_rebuild()) as batch:
        if old_name:
            batch.drop_constraint(old_name, type_="primary")
        batch.create_primary_key(old_name or f"{TABLE}_pkey", ["provider"])
        batch.drop_column("disabled_reason")
        batch.drop_column("disabled_at")
        batch.drop_column("name")

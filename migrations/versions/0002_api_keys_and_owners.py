"""API keys, and an owner on every search and dataset

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)

# Rows made before keys existed belong to the admin key that `darts-service up` creates first.
LEGACY_OWNER = "admin"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("last_used_at", Timestamp, nullable=True),
        sa.Column("revoked_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    for table in ("searches", "datasets"):
        # The server default fills the rows already there, then goes: new rows always name their owner.
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("owner", sa.String(length=64), server_default=LEGACY_OWNER, nullable=False)
            )
        with op.batch_alter_table(table) as batch:
            batch.alter_column("owner", server_default=None, existing_type=sa.String(length=64))
    op.create_index("ix_searches_owner_created_at_id", "searches", ["owner", "created_at", "id"])
    op.create_index("ix_searches_owner_status", "searches", ["owner", "status"])
    op.create_index("ix_datasets_owner_created_at_id", "datasets", ["owner", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_datasets_owner_created_at_id", table_name="datasets")
    op.drop_index("ix_searches_owner_status", table_name="searches")
    op.drop_index("ix_searches_owner_created_at_id", table_name="searches")
    for table in ("datasets", "searches"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner")
    op.drop_table("api_keys")

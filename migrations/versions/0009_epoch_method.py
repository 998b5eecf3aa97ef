"""the search method and its schedule values in every epoch record

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: epochs recorded before, and methods without schedules (DARTS), have none.
    with op.batch_alter_table("search_epochs") as batch:
        batch.add_column(sa.Column("method", sa.String(32), nullable=True))
        batch.add_column(sa.Column("schedule", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("search_epochs") as batch:
        batch.drop_column("schedule")
        batch.drop_column("method")

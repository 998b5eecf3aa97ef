"""class names of datasets, and of the searches and trainings that use them

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: built-ins, .npz uploads without names and everything created before have none.
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("class_names", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("class_counts", sa.JSON(), nullable=True))
    for table in ("searches", "trainings"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("class_names", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in ("trainings", "searches"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("class_names")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("class_counts")
        batch.drop_column("class_names")

"""the genotype's cost per epoch, in searches with constraints

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: searches without constraints, and epochs recorded before this migration, have none.
    with op.batch_alter_table("search_epochs") as batch:
        batch.add_column(sa.Column("cost", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("search_epochs") as batch:
        batch.drop_column("cost")

"""collapse metrics per epoch, and the reason a search stopped early

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: epochs recorded before this migration (and epochs without a Hessian measurement) have none.
    with op.batch_alter_table("search_epochs") as batch:
        batch.add_column(sa.Column("skip_connections", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("parameter_free_ops", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("alpha_entropy", sa.Float(), nullable=True))
        batch.add_column(sa.Column("hessian_eigenvalue", sa.Float(), nullable=True))
    with op.batch_alter_table("searches") as batch:
        batch.add_column(sa.Column("stop_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("searches") as batch:
        batch.drop_column("stop_reason")
    with op.batch_alter_table("search_epochs") as batch:
        batch.drop_column("hessian_eigenvalue")
        batch.drop_column("alpha_entropy")
        batch.drop_column("parameter_free_ops")
        batch.drop_column("skip_connections")

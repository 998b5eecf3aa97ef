"""study arms: a study's searches and trainings per method (and its random baseline), the chosen arm

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHILD_TABLES = ("searches", "trainings")


def upgrade() -> None:
    for table in CHILD_TABLES:
        with op.batch_alter_table(table) as batch:
            # "0": the first (before this migration, the only) method of a study; existing rows are that.
            batch.add_column(sa.Column("study_arm", sa.String(length=16), server_default="0", nullable=False))
            batch.drop_constraint(op.f(f"uq_{table}_study_id_study_stage_study_seed"), type_="unique")
            # One child per (study, stage, arm, seed): of two orchestrators creating it at once, one wins.
            batch.create_unique_constraint(
                op.f(f"uq_{table}_study_id_study_stage_study_arm_study_seed"),
                ["study_id", "study_stage", "study_arm", "study_seed"],
            )
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("chosen_arm", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("chosen_arm")
    for table in CHILD_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(
                op.f(f"uq_{table}_study_id_study_stage_study_arm_study_seed"), type_="unique"
            )
            batch.create_unique_constraint(
                op.f(f"uq_{table}_study_id_study_stage_study_seed"), ["study_id", "study_stage", "study_seed"]
            )
            batch.drop_column("study_arm")

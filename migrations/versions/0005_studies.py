"""studies (the DARTS paper's protocol as one job), and the link of searches and trainings to theirs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
# The jobs a study creates.
CHILD_TABLES = ("searches", "trainings")


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("chosen_search_id", sa.String(length=36), nullable=True),
        sa.Column("chosen_seed", sa.Integer(), nullable=True),
        sa.Column("chosen_genotype", sa.JSON(), nullable=True),
        sa.Column("selection", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    op.create_index("ix_studies_owner_created_at_id", "studies", ["owner", "created_at", "id"])
    op.create_index("ix_studies_created_at_id", "studies", ["created_at", "id"])
    op.create_index("ix_studies_status", "studies", ["status"])
    for table in CHILD_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("study_id", sa.String(length=36), nullable=True))
            batch.add_column(sa.Column("study_stage", sa.String(length=16), nullable=True))
            batch.add_column(sa.Column("study_seed", sa.Integer(), nullable=True))
            batch.create_foreign_key(
                op.f(f"fk_{table}_study_id_studies"), "studies", ["study_id"], ["id"], ondelete="CASCADE"
            )
            # One child per (study, stage, seed): of two orchestrators creating it at once, one wins.
            batch.create_unique_constraint(
                op.f(f"uq_{table}_study_id_study_stage_study_seed"), ["study_id", "study_stage", "study_seed"]
            )


def downgrade() -> None:
    for table in CHILD_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f"uq_{table}_study_id_study_stage_study_seed"), type_="unique")
            batch.drop_constraint(op.f(f"fk_{table}_study_id_studies"), type_="foreignkey")
            batch.drop_column("study_seed")
            batch.drop_column("study_stage")
            batch.drop_column("study_id")
    op.drop_index("ix_studies_status", table_name="studies")
    op.drop_index("ix_studies_created_at_id", table_name="studies")
    op.drop_index("ix_studies_owner_created_at_id", table_name="studies")
    op.drop_table("studies")

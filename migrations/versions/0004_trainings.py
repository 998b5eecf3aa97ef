"""trainings and training_epochs: retraining a genotype as a service job

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the model's column type (migrations never import app.models): timezone-aware UTC.
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "trainings",
        # The lifecycle's columns, as in `searches`.
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("dataset_ref", sa.String(length=200), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("epoch", sa.Integer(), server_default="0", nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("genotype", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", Timestamp, nullable=True),
        sa.Column("celery_task_id", sa.String(length=64), nullable=True),
        # Where the genotype came from (no foreign key: deleting the search keeps its trainings).
        sa.Column("search_id", sa.String(length=36), nullable=True),
        sa.Column("search_epoch", sa.Integer(), nullable=True),
        # The final figures, set when it succeeded.
        sa.Column("test_accuracy", sa.Float(), nullable=True),
        sa.Column("test_loss", sa.Float(), nullable=True),
        sa.Column("valid_accuracy", sa.Float(), nullable=True),
        sa.Column("parameters", sa.BigInteger(), nullable=True),
        sa.Column("multiply_adds", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trainings")),
    )
    op.create_index("ix_trainings_created_at_id", "trainings", ["created_at", "id"])
    op.create_index("ix_trainings_owner_created_at_id", "trainings", ["owner", "created_at", "id"])
    op.create_index("ix_trainings_owner_status", "trainings", ["owner", "status"])

    op.create_table(
        "training_epochs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("training_id", sa.String(length=36), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=False),
        sa.Column("train_acc", sa.Float(), nullable=False),
        sa.Column("valid_loss", sa.Float(), nullable=True),
        sa.Column("valid_acc", sa.Float(), nullable=True),
        sa.Column("test_loss", sa.Float(), nullable=False),
        sa.Column("test_acc", sa.Float(), nullable=False),
        sa.Column("lr", sa.Float(), nullable=False),
        sa.Column("drop_path_prob", sa.Float(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("stream_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["training_id"],
            ["trainings.id"],
            name=op.f("fk_training_epochs_training_id_trainings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_epochs")),
        sa.UniqueConstraint("training_id", "epoch", name=op.f("uq_training_epochs_training_id_epoch")),
    )


def downgrade() -> None:
    op.drop_table("training_epochs")
    op.drop_index("ix_trainings_owner_status", table_name="trainings")
    op.drop_index("ix_trainings_owner_created_at_id", table_name="trainings")
    op.drop_index("ix_trainings_created_at_id", table_name="trainings")
    op.drop_table("trainings")

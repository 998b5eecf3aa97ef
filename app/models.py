"""SQL models (SQLAlchemy 2). The schema itself is made only by the Alembic migrations.

Shared by the API, the event ingester and the workers: keep this module free of torch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, relationship

from app.db import utcnow
from app.lifecycle.status import TERMINAL, Status

# Deterministic constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so values are stored as UTC and marked
    UTC again when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store timezone-aware UTC times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class LifecycleColumns:
    """The columns every job the lifecycle drives has (searches, trainings): status, progress, lease.

    `app.lifecycle` reads and writes only these, whatever the job's kind (`app.lifecycle.kinds`).
    """

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # The name of the API key that created it (app.auth); only that owner and admins see it.
    owner: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=Status.queued)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What the worker loads: "builtin:<name>" or "upload:<dataset id>".
    dataset_ref: Mapped[str] = mapped_column(String(200))
    # The dataset's class names when it names them (an image-folder upload): label i is class_names[i].
    # Copied when the job is created, so they outlive the dataset.
    class_names: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The last finished epoch (1-based); 0 before the first.
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    epochs: Mapped[int] = mapped_column(Integer)  # total planned
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    genotype: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    celery_task_id: Mapped[str | None] = mapped_column(String(64))

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL


class StudyChildColumns:
    """Set on the searches and trainings a study created (`app.services.study_advance`): its study, the
    stage, the arm (`app.schemas.studies.StudyArm`: a method's index, or `random`) and the seed (a
    random genotype's index in the random arm). Each table has a unique (study_id, study_stage,
    study_arm, study_seed): a child is created once, however many orchestrators try at once."""

    @declared_attr
    def study_id(cls) -> Mapped[str | None]:
        return mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))

    study_stage: Mapped[str | None] = mapped_column(String(16))
    study_arm: Mapped[str] = mapped_column(String(16), default="0", server_default="0")
    study_seed: Mapped[int | None] = mapped_column(Integer)


class Search(LifecycleColumns, StudyChildColumns, Base):
    """One architecture search: its accepted spec, its state, and a summary of its last epoch."""

    __tablename__ = "searches"
    __table_args__ = (
        # Newest-first listing and keyset pagination, with and without a status filter.
        Index("ix_searches_created_at_id", "created_at", "id"),
        Index("ix_searches_status_created_at_id", "status", "created_at", "id"),
        # An owner's own list, and the count of its active searches (the quota).
        Index("ix_searches_owner_created_at_id", "owner", "created_at", "id"),
        Index("ix_searches_owner_status", "owner", "status"),
        UniqueConstraint("study_id", "study_stage", "study_arm", "study_seed"),
    )

    best_valid_acc: Mapped[float | None] = mapped_column(Float)
    # Set when the spec's training.early_stop rule ended the search (it then succeeded): the rule's reason.
    stop_reason: Mapped[str | None] = mapped_column(Text)

    epoch_records: Mapped[list[SearchEpoch]] = relationship(
        back_populates="search",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="SearchEpoch.epoch",
    )

    @property
    def stopped_early(self) -> bool:
        """Whether the spec's early-stop rule ended the search (``stop_reason`` says why)."""
        return self.stop_reason is not None


class SearchEpoch(Base):
    """The record of one finished epoch of a search, written once by the event ingester."""

    __tablename__ = "search_epochs"
    __table_args__ = (UniqueConstraint("search_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[str] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)  # 1-based
    train_loss: Mapped[float] = mapped_column(Float)
    train_acc: Mapped[float] = mapped_column(Float)
    valid_loss: Mapped[float] = mapped_column(Float)
    valid_acc: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    genotype: Mapped[dict[str, Any]] = mapped_column(JSON)
    alphas: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Collapse metrics (darts_core.search.collapse); null for epochs recorded before they existed, and the
    # eigenvalue in the epochs that did not measure it.
    skip_connections: Mapped[int | None] = mapped_column(Integer)
    parameter_free_ops: Mapped[int | None] = mapped_column(Integer)
    alpha_entropy: Mapped[float | None] = mapped_column(Float)
    hessian_eigenvalue: Mapped[float | None] = mapped_column(Float)
    # The genotype's cost against the search's constraints (darts_core.spec.records.EpochCost); null in
    # searches without constraints.
    cost: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The search method that ran the epoch and its schedule values then (GDAS's tau, ...); null before
    # they were recorded, and the schedule for methods without one.
    method: Mapped[str | None] = mapped_column(String(32))
    schedule: Mapped[dict[str, float] | None] = mapped_column(JSON)
    # The Redis Stream entry id the epoch came from ("1700000000000-0"); the SSE event id.
    stream_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    search: Mapped[Search] = relationship(back_populates="epoch_records")


class Training(LifecycleColumns, StudyChildColumns, Base):
    """One retraining of a genotype from scratch (`POST /trainings`): spec, state, final figures.

    `genotype` is the genotype trained (fixed at creation). `search_id`/`search_epoch` name the search
    it came from, when it came from one (no foreign key: deleting the search keeps the training).
    The weights live in storage (`app.storage.training_weights_path`), written when it succeeded.
    """

    __tablename__ = "trainings"
    __table_args__ = (
        Index("ix_trainings_created_at_id", "created_at", "id"),
        Index("ix_trainings_owner_created_at_id", "owner", "created_at", "id"),
        Index("ix_trainings_owner_status", "owner", "status"),
        UniqueConstraint("study_id", "study_stage", "study_arm", "study_seed"),
    )

    search_id: Mapped[str | None] = mapped_column(String(36))
    search_epoch: Mapped[int | None] = mapped_column(Integer)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    valid_accuracy: Mapped[float | None] = mapped_column(Float)
    parameters: Mapped[int | None] = mapped_column(BigInteger)
    multiply_adds: Mapped[int | None] = mapped_column(BigInteger)

    epoch_records: Mapped[list[TrainingEpoch]] = relationship(
        back_populates="training",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="TrainingEpoch.epoch",
    )


class TrainingEpoch(Base):
    """One finished epoch of a training (darts_core.train.records.TrainEpoch), written once by the
    ingester."""

    __tablename__ = "training_epochs"
    __table_args__ = (UniqueConstraint("training_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    training_id: Mapped[str] = mapped_column(ForeignKey("trainings.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)  # 1-based
    train_loss: Mapped[float] = mapped_column(Float)
    train_acc: Mapped[float] = mapped_column(Float)
    # Null when the training holds out no validation split (training.valid_fraction 0).
    valid_loss: Mapped[float | None] = mapped_column(Float)
    valid_acc: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float] = mapped_column(Float)
    test_acc: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    drop_path_prob: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    stream_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    training: Mapped[Training] = relationship(back_populates="epoch_records")


class Study(Base):
    """The DARTS paper's protocol as one job: a search per seed, a short training of each found
    genotype (the selection), and the final training of the best one.

    Its children (searches, trainings) point at it (`StudyChildColumns`); the orchestrator
    (`app.services.study_advance`) moves it on from their statuses, all read from SQL.
    """

    __tablename__ = "studies"
    __table_args__ = (
        Index("ix_studies_created_at_id", "created_at", "id"),
        Index("ix_studies_owner_created_at_id", "owner", "created_at", "id"),
        Index("ix_studies_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(64))  # as Search.owner
    # The lifecycle's statuses (app.lifecycle.status), and the stage (app.lifecycle.studies.Stage).
    status: Mapped[str] = mapped_column(String(16), default=Status.queued)
    stage: Mapped[str] = mapped_column(String(16))
    # The accepted request: search spec, seeds, selection, final, min_successful_seeds.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    chosen_search_id: Mapped[str | None] = mapped_column(String(36))
    chosen_seed: Mapped[int | None] = mapped_column(Integer)
    # The arm of the chosen genotype: a method's index, or "random" (then chosen_search_id is None).
    chosen_arm: Mapped[str | None] = mapped_column(String(16))
    chosen_genotype: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Why that one: every seed's selection accuracy, side by side.
    selection: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL


class Dataset(Base):
    """An uploaded dataset (an `.npz`, or an archive of an image folder decoded into one), stored at `path`
    and validated when it arrived."""

    __tablename__ = "datasets"
    __table_args__ = (
        Index("ix_datasets_created_at_id", "created_at", "id"),
        Index("ix_datasets_owner_created_at_id", "owner", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(64))  # as Search.owner
    filename: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    num_samples: Mapped[int] = mapped_column(Integer)
    num_classes: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Label i is class_names[i]; null for an .npz without names. Images per class (archives).
    class_names: Mapped[list[str] | None] = mapped_column(JSON)
    class_counts: Mapped[dict[str, int] | None] = mapped_column(JSON)


class ApiKey(Base):
    """An API key: its owner name and the SHA-256 of the key (the key itself is never stored)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The owner name of everything created with the key (Search.owner, Dataset.owner).
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex SHA-256
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

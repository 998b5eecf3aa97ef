"""Pydantic schemas of `/trainings`: a genotype retrained from scratch (the spec's sections are
darts_core.spec.training_spec's)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from app.lifecycle.status import Status
from app.schemas.common import SearchName, StrictModel
from app.schemas.searches import DatasetSpec
from darts_core.spec.search_spec import (
    ResourcesConfig,
    reject_nul,
)
from darts_core.spec.training_spec import TrainingNetworkConfig, TrainingScheduleConfig

#: A genotype in its JSON form (`normal`, `normal_concat`, `reduce`, `reduce_concat`) or the DARTS string
#: ("Genotype(normal=[('sep_conv_3x3', 0), ...], ...)"); at most this many characters for the string.
MAX_GENOTYPE_TEXT = 20_000
GenotypeText = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_GENOTYPE_TEXT), AfterValidator(reject_nul)
]
JobId = Annotated[str, StringConstraints(min_length=1, max_length=36), AfterValidator(reject_nul)]


class TrainingSpec(StrictModel):
    """A training as `POST /trainings` accepts it: the genotype source (`genotype`, or `search_id` with
    an optional `epoch`) and, with defaults, the rest."""

    name: SearchName | None = Field(default=None, description="Defaults to '<genotype source> training'.")
    genotype: dict[str, Any] | GenotypeText | None = Field(
        default=None,
        description="The genotype to train: its JSON form or the DARTS string. Or give search_id.",
    )
    search_id: JobId | None = Field(
        default=None, description="Train the genotype of this (own) search: its final one, or `epoch`'s."
    )
    epoch: int | None = Field(
        default=None, ge=1, le=1000, description="With search_id: the genotype derived after this epoch."
    )
    dataset: DatasetSpec | None = Field(
        default=None, description="Required with genotype; defaults to the search's with search_id."
    )
    network: TrainingNetworkConfig = Field(default_factory=TrainingNetworkConfig)
    training: TrainingScheduleConfig = Field(default_factory=TrainingScheduleConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)


class TrainingPublic(StrictModel):
    model_config = ConfigDict(extra="forbid", from_attributes=True)

    id: str
    name: str
    owner: str = Field(description="The name of the API key that created it.")
    status: Status
    spec: dict[str, Any] = Field(description="The spec as accepted, every default filled in.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    epoch: int = Field(description="The last finished epoch (1-based); 0 before the first.")
    epochs: int = Field(description="Epochs planned in total.")
    metrics: dict[str, Any] | None = Field(description="The last epoch's metrics.")
    genotype: dict[str, Any] = Field(description="The genotype trained (DARTS JSON form).")
    search_id: str | None = Field(description="The search the genotype came from, if any.")
    search_epoch: int | None = Field(
        description="The search epoch whose genotype it is; null: the final one."
    )
    test_accuracy: float | None = Field(description="Held-out test accuracy after the last epoch.")
    test_loss: float | None
    valid_accuracy: float | None = Field(
        description="Validation accuracy after the last epoch (null without a validation split)."
    )
    parameters: int | None = Field(description="Weights of the network (auxiliary head excluded).")
    multiply_adds: int | None = Field(description="Multiply-adds of one forward pass of one image.")
    error: str | None
    class_names: list[str] | None = Field(
        default=None, description="The dataset's class names (label i is class_names[i]), when it names them."
    )


class TrainingEpochPublic(StrictModel):
    """One finished training epoch (the fields of darts_core.train.train_genotype.TrainEpoch)."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    epoch: int
    train_loss: float
    train_acc: float
    valid_loss: float | None
    valid_acc: float | None
    test_loss: float
    test_acc: float
    lr: float
    drop_path_prob: float
    seconds: float
    created_at: datetime


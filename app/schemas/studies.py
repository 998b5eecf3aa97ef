"""Pydantic schemas of `/studies` (the search spec is `app.schemas.searches`', the shared bases
`app.schemas.common`'s).

A study request names a search spec, the seeds to run it with, the short training of each found
genotype (`selection`) and optionally the full training of the best one (`final`). The training
bodies are darts_core's training sections (`darts_core.spec.training_spec`): the same fields, defaults
and bounds as `POST /trainings`, without a genotype source (the study supplies it). Every child's spec
is validated here, before anything is created, so a bad one is a 422 naming its field
(`selection.training.epochs`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, Strict, ValidationInfo, field_validator

from app.lifecycle.status import Status
from app.schemas.common import SearchName, StrictModel
from app.schemas.searches import DatasetSpec, SearchSpec
from darts_core.spec.search_spec import ResourcesConfig
from darts_core.spec.training_spec import TrainingNetworkConfig, TrainingScheduleConfig

#: The most seeds one study may run (each is one search, all queued at once).
MAX_SEEDS = 16

StudySeed = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)]


class StudyTrainingSpec(StrictModel):
    """A training of the study's genotype(s): everything of `POST /trainings` but the genotype source."""

    dataset: DatasetSpec | None = Field(default=None, description="Defaults to the search's dataset.")
    network: TrainingNetworkConfig = Field(default_factory=TrainingNetworkConfig)
    training: TrainingScheduleConfig = Field(default_factory=TrainingScheduleConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)


class SelectionSchedule(TrainingScheduleConfig):
    """`selection.training`: as any training's, but its validation split cannot be empty."""

    valid_fraction: Annotated[float, Strict()] = Field(
        default=0.1,
        gt=0.0,
        lt=1.0,
        description="Share of the training split held out for validation: the study picks the genotype "
        "by its accuracy there, so it must be above 0.",
    )


class StudySelectionSpec(StudyTrainingSpec):
    """`selection`: the short training of each found genotype (the study selects by its validation
    accuracy)."""

    training: SelectionSchedule = Field(default_factory=SelectionSchedule)


class StudySpec(StrictModel):
    """`POST /studies`: a search per seed, a selection training per genotype, then the final training."""

    name: SearchName | None = Field(default=None, description="Defaults to '<search name> study'.")
    search: SearchSpec
    seeds: list[StudySeed] = Field(
        min_length=1,
        max_length=MAX_SEEDS,
        description="One search per seed (its training.seed).",
        json_schema_extra={"uniqueItems": True},
    )
    selection: StudySelectionSpec = Field(default_factory=StudySelectionSpec)
    final: StudyTrainingSpec | None = Field(
        default=None, description="The full training of the chosen genotype; without it the study ends "
        "after the selection."
    )
    min_successful_seeds: int | None = Field(
        default=None,
        ge=1,
        description="How many seeds must get through search and selection for the study to go on "
        "(default: all of them).",
    )

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            raise ValueError(f"seeds must be distinct; repeated: {repeated}")
        return seeds

    @field_validator("min_successful_seeds")
    @classmethod
    def _at_most_seeds(cls, value: int | None, info: ValidationInfo) -> int | None:
        seeds = info.data.get("seeds")
        if value is not None and seeds is not None and value > len(seeds):
            raise ValueError(f"min_successful_seeds ({value}) exceeds the number of seeds ({len(seeds)})")
        return value

    def required_successes(self) -> int:
        return self.min_successful_seeds if self.min_successful_seeds is not None else len(self.seeds)


class StudyChildPublic(StrictModel):
    """One search or training of a study, as its stage shows it."""

    kind: Literal["search", "training"]
    id: str
    seed: int | None
    status: Status
    epoch: int = Field(description="The last finished epoch; 0 before the first.")
    epochs: int
    valid_acc: float | None = Field(description="Searches: the best validation accuracy; trainings: "
                                    "the validation accuracy that selects between genotypes.")
    test_accuracy: float | None = Field(default=None, description="Trainings: on the held-out split.")
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


class SelectionEntry(StrictModel):
    """One seed's line of the selection: why the chosen genotype was chosen."""

    seed: int
    search_id: str
    training_id: str | None
    valid_acc: float | None
    status: Status = Field(description="The selection training's status (the search's when it failed).")
    chosen: bool


class StudyStages(StrictModel):
    search: list[StudyChildPublic]
    selection: list[StudyChildPublic]
    final: StudyChildPublic | None


class StudySummaryPublic(StrictModel):
    """A study in lists."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    id: str
    name: str
    owner: str
    status: Status
    stage: str = Field(description="searching, selecting, final or done")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    chosen_seed: int | None
    chosen_search_id: str | None


class StudyPublic(StudySummaryPublic):
    """A study with its stages, the chosen genotype and why, and the final result."""

    spec: dict[str, Any] = Field(description="The request as accepted, every default filled in.")
    chosen_genotype: dict[str, Any] | None
    selection: list[SelectionEntry] | None = Field(description="Every seed's selection accuracy.")
    stages: StudyStages
    wall_seconds: float | None = Field(description="From creation to the end (or now).")
    child_seconds: float = Field(description="The children's run times added up: the study's length "
                                 "had they run one after another.")

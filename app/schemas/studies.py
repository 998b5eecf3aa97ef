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

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, Strict, ValidationError, ValidationInfo, field_validator

from app.lifecycle.status import Status
from app.schemas.common import SearchName, StrictModel
from app.schemas.searches import DatasetSpec, SearchSpec
from darts_core.spec.genotype import Genotype
from darts_core.spec.method_spec import MethodConfig
from darts_core.spec.random_genotype import random_genotype
from darts_core.spec.search_spec import ResourcesConfig
from darts_core.spec.training_spec import TrainingNetworkConfig, TrainingScheduleConfig

#: The most seeds one study may run (each is one search per method, all queued at once).
MAX_SEEDS = 16
#: The most methods one study compares: every method the service knows, with room to repeat one with
#: other hyperparameters.
MAX_METHODS = 16
#: The most random genotypes of a study's baseline.
MAX_RANDOM_BASELINE = 32
#: The arm of the random baseline (a method's arm is its index in `methods`: "0", "1", ...).
RANDOM_ARM = "random"


@dataclass(frozen=True)
class StudyArm:
    """One line of a study's comparison: a method (its searches, one per seed) or the random baseline."""

    key: str  # the children's `study_arm`: the method's index, or RANDOM_ARM
    label: str  # the method's name ("darts", ...), or "random"
    search: SearchSpec | None  # the search every seed of a method arm runs (seed and name aside)

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
        description="How many seeds of each method must get through search and selection for the study "
        "to go on (default: all of them).",
    )
    methods: list[MethodConfig] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_METHODS,
        description="The search methods to compare, each a `method` section of the search spec (each "
        "runs with every seed); default: the search's own method alone.",
    )
    random_baseline: int = Field(
        default=0,
        ge=0,
        le=MAX_RANDOM_BASELINE,
        strict=True,
        description="How many genotypes to draw uniformly from the search space (as Li & Talwalkar "
        "sample them) and train in the selection beside the searched ones, with the same selection body.",
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

    @field_validator("methods")
    @classmethod
    def _each_method_makes_a_search(
        cls, methods: list[MethodConfig] | None, info: ValidationInfo
    ) -> list[MethodConfig] | None:
        search = info.data.get("search")
        if methods is None or search is None:
            return methods
        for index, method in enumerate(methods):
            try:
                _with_method(search, method)
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ValueError(f"methods[{index}]: {where}: {first['msg']}") from None
        return methods

    def required_successes(self) -> int:
        return self.min_successful_seeds if self.min_successful_seeds is not None else len(self.seeds)

    def method_arms(self) -> list[StudyArm]:
        """The methods compared, in order: each runs a search per seed."""
        if self.methods is None:
            return [StudyArm("0", self.search.method.name, self.search)]
        return [
            StudyArm(str(index), method.name, _with_method(self.search, method))
            for index, method in enumerate(self.methods)
        ]

    def arms(self) -> list[StudyArm]:
        """Every line of the comparison: the methods, then the random baseline when there is one."""
        random_arm = [StudyArm(RANDOM_ARM, "random", None)] if self.random_baseline else []
        return [*self.method_arms(), *random_arm]

    def random_genotypes(self, accept: Callable[[Genotype], bool] | None = None) -> list[Genotype]:
        """The random baseline's genotypes, drawn from the search space (the same for the same spec), and
        among the genotypes `accept` takes when given (the search's budget: `app.services.random_baseline`).

        Raises:
            ValueError: `accept` took none of a draw's genotypes.
        """
        space = self.search.search_space
        base = min(self.seeds)
        return [
            random_genotype(space.primitives, space.internal_nodes, seed=f"{base}:{index}", accept=accept)
            for index in range(self.random_baseline)
        ]


def _with_method(search: SearchSpec, method: MethodConfig) -> SearchSpec:
    """The search with its `method` section replaced (validated as `POST /searches` would: a method
    that does not compose with the search's other sections is refused there)."""
    section = method.model_dump(mode="json")
    return SearchSpec.model_validate({**search.model_dump(mode="json"), "method": section})


class StudyChildPublic(StrictModel):
    """One search or training of a study, as its stage shows it."""

    kind: Literal["search", "training"]
    id: str
    arm: str = Field(description="The method's index in `methods` (\"0\" with one), or \"random\".")
    seed: int | None = Field(description="The search's seed; in the random arm, the genotype's index.")
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

    # Defaults: a study chosen before studies had arms ran one method, DARTS.
    arm: str = Field(default="0", description="The method's index in `methods`, or \"random\".")
    method: str = Field(default="darts", description="The method's name, or \"random\".")
    seed: int = Field(description="The search's seed; in the random arm, the genotype's index.")
    search_id: str | None = Field(description="None in the random arm (no search).")
    training_id: str | None
    valid_acc: float | None
    status: Status = Field(description="The selection training's status (the search's when it failed).")
    chosen: bool


class ComparisonRow(StrictModel):
    """One method (or the random baseline) over its seeds: what the selection trainings reached."""

    arm: str
    method: str
    runs: int = Field(description="Seeds (the random arm: genotypes) it ran.")
    succeeded: int = Field(description="Of them, selection trainings that succeeded.")
    valid_acc_mean: float | None = Field(description="Selection validation accuracy, mean over successes.")
    valid_acc_std: float | None = Field(description="Its sample standard deviation (two successes or more).")
    test_accuracy_mean: float | None
    parameters_mean: float | None = Field(description="Of the selection networks (the auxiliary head aside).")
    multiply_adds_mean: float | None
    search_seconds_mean: float | None = Field(description="Run time of its searches; None for random.")
    best_valid_acc: float | None
    chosen: bool = Field(description="The study's chosen genotype is this arm's.")


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
    chosen_arm: str | None = Field(description="The chosen genotype's arm (\"random\": a drawn one).")
    chosen_search_id: str | None


class StudyPublic(StudySummaryPublic):
    """A study with its stages, the chosen genotype and why, and the final result."""

    spec: dict[str, Any] = Field(description="The request as accepted, every default filled in.")
    chosen_genotype: dict[str, Any] | None
    selection: list[SelectionEntry] | None = Field(description="Every seed's selection accuracy.")
    comparison: list[ComparisonRow] = Field(
        description="Per method (and the random baseline): the selection accuracy over seeds, the size "
        "and the search time. Filled in as the children finish."
    )
    stages: StudyStages
    wall_seconds: float | None = Field(description="From creation to the end (or now).")
    child_seconds: float = Field(description="The children's run times added up: the study's length "
                                 "had they run one after another.")

"""Pydantic schemas of the REST API (separate from the SQL models in app/models.py).

`SearchSpec` is the search spec both the API and the worker validate: unknown fields are rejected
everywhere, and `SearchSpec.model_dump()` is the spec as accepted, every default filled in, with the same
nesting and names `darts_core.search.SearchConfig.from_spec` reads (it ignores `dataset`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from darts_core.genotype import DARTS_OP_NAMES

# The API validates primitive names against the library's list: one source for the search space.
DARTS_PRIMITIVES: tuple[str, ...] = DARTS_OP_NAMES

ItemT = TypeVar("ItemT")

SearchStatusName = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]


class StrictModel(BaseModel):
    """Base of every schema: unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------------
# The search spec


# The parameters (and defaults) of darts_core.data.load_dataset for each kind the service offers.
# cifar10 is not offered: it reads a directory on the server, which a client has no business naming.


TestFraction = Annotated[float, Field(gt=0.0, lt=1.0, description="Held-out part, never searched on")]
SplitSeed = Annotated[int, Field(ge=0, le=2**32 - 1, description="Seed of the train/test split")]


class BuiltinDatasetSpec(StrictModel):
    """scikit-learn's handwritten digits (1797 grey 8x8 images, 10 classes), bundled."""

    name: Literal["digits"]
    test_fraction: TestFraction = 0.2
    seed: SplitSeed = 0


# darts_core.data's ceiling on generated pixels (256 MiB of float32).
SYNTHETIC_MAX_VALUES = 2**26


class SyntheticDatasetSpec(StrictModel):
    """Generated images (a smooth random template per class plus noise): for smoke tests and demos."""

    name: Literal["synthetic"]
    num_samples: int = Field(default=512, ge=4, le=200_000)
    num_classes: int = Field(default=4, ge=2, le=1000)
    channels: int = Field(default=3, ge=1, le=16)
    image_size: int | tuple[int, int] = Field(default=16, description="H = W, or [H, W]")
    noise: float = Field(default=0.5, ge=0.0, description="Standard deviation of the added noise")
    test_fraction: TestFraction = 0.2
    seed: SplitSeed = 0

    @field_validator("image_size")
    @classmethod
    def _sizes_in_range(cls, size: int | tuple[int, int]) -> int | tuple[int, int]:
        sizes = size if isinstance(size, tuple) else (size,)
        if any(not 1 <= s <= 512 for s in sizes):
            raise ValueError(f"image_size must lie in [1, 512], got {size}")
        return size

    @model_validator(mode="after")
    def _size_fits(self) -> SyntheticDatasetSpec:
        if self.num_samples < 2 * self.num_classes:
            raise ValueError(
                f"num_samples ({self.num_samples}) must be at least 2 x num_classes ({self.num_classes})"
            )
        height, width = self.image_size if isinstance(self.image_size, tuple) else (self.image_size,) * 2
        values = self.num_samples * self.channels * height * width
        if values > SYNTHETIC_MAX_VALUES:
            raise ValueError(
                f"num_samples x channels x height x width = {values} exceeds {SYNTHETIC_MAX_VALUES}; "
                "make the dataset smaller"
            )
        return self


class UploadedDatasetSpec(StrictModel):
    """A dataset uploaded with `POST /datasets`, by its id."""

    id: str = Field(min_length=1, max_length=64)
    layout: Literal["NCHW", "NHWC"] | None = Field(
        default=None, description="Axis order of 4-d images; guessed from the channel axis when null"
    )
    test_fraction: TestFraction = 0.2
    seed: SplitSeed = 0


def _dataset_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "id" in value:
            return "upload"
        return "synthetic" if value.get("name") == "synthetic" else "builtin"
    if isinstance(value, BaseModel):
        return {
            BuiltinDatasetSpec: "builtin",
            SyntheticDatasetSpec: "synthetic",
            UploadedDatasetSpec: "upload",
        }.get(type(value))
    return None


DatasetSpec = Annotated[
    Annotated[BuiltinDatasetSpec, Tag("builtin")]
    | Annotated[SyntheticDatasetSpec, Tag("synthetic")]
    | Annotated[UploadedDatasetSpec, Tag("upload")],
    Discriminator(
        _dataset_kind,
        custom_error_type="invalid_dataset",
        custom_error_message=(
            'dataset must be {"name": "digits"}, {"name": "synthetic", ...} or {"id": "<uploaded id>"}'
        ),
    ),
]


class SearchSpaceSpec(StrictModel):
    primitives: list[str] = Field(default_factory=lambda: list(DARTS_PRIMITIVES), min_length=2)
    internal_nodes: int = Field(default=4, ge=1, le=8)

    @field_validator("primitives")
    @classmethod
    def _known_and_unique(cls, primitives: list[str]) -> list[str]:
        unknown = [name for name in primitives if name not in DARTS_PRIMITIVES]
        if unknown:
            raise ValueError(f"unknown primitive(s) {unknown}; choose from {list(DARTS_PRIMITIVES)}")
        repeated = sorted({name for name in primitives if primitives.count(name) > 1})
        if repeated:
            raise ValueError(f"primitives must be unique; repeated: {repeated}")
        return primitives


class NetworkSpec(StrictModel):
    cells: int = Field(default=8, ge=1, le=64)
    init_channels: int = Field(default=16, ge=1, le=512)
    stem_multiplier: int = Field(default=3, ge=1, le=16)


class TrainingSpec(StrictModel):
    epochs: int = Field(default=50, ge=1, le=1000)
    batch_size: int = Field(default=64, ge=1, le=4096)
    train_portion: float = Field(default=0.5, gt=0.0, lt=1.0)
    order: Literal["first", "second"] = "first"
    weight_lr: float = Field(default=0.025, gt=0.0)
    weight_lr_min: float = Field(default=0.001, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=3e-4, ge=0.0)
    arch_lr: float = Field(default=3e-4, gt=0.0)
    arch_weight_decay: float = Field(default=1e-3, ge=0.0)
    grad_clip: float = Field(default=5.0, gt=0.0)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _lr_min_not_above_lr(self) -> TrainingSpec:
        if self.weight_lr_min > self.weight_lr:
            raise ValueError(
                f"weight_lr_min ({self.weight_lr_min}) must not exceed weight_lr ({self.weight_lr})"
            )
        return self


class ResourcesSpec(StrictModel):
    device: Literal["auto", "cpu", "cuda"] = "auto"


class SearchSpec(StrictModel):
    """A DARTS search as `POST /searches` accepts it; every field but `dataset` has a default."""

    name: str | None = Field(
        default=None, min_length=1, max_length=200, description="Defaults to '<dataset name> search'."
    )
    dataset: DatasetSpec
    search_space: SearchSpaceSpec = Field(default_factory=SearchSpaceSpec)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @model_validator(mode="after")
    def _default_name(self) -> SearchSpec:
        # An uploaded dataset's name is known only to the database: the service fills that one in.
        if self.name is None and not isinstance(self.dataset, UploadedDatasetSpec):
            self.name = f"{self.dataset.name} search"
        return self


# ---------------------------------------------------------------------------------------------------
# Resources


class Page(StrictModel, Generic[ItemT]):
    """One page of a list; pass `next_cursor` back as `?cursor=` for the next (null on the last)."""

    items: list[ItemT]
    next_cursor: str | None = None


class SearchPublic(StrictModel):
    model_config = ConfigDict(extra="forbid", from_attributes=True)

    id: str
    name: str
    status: SearchStatusName
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    epoch: int = Field(description="The last finished epoch (1-based); 0 before the first.")
    epochs: int = Field(description="Epochs planned in total.")
    metrics: dict[str, Any] | None = Field(description="The last epoch's metrics.")
    best_valid_acc: float | None
    genotype: dict[str, Any] | None = Field(description="The latest genotype (DARTS format) or null.")
    error: str | None


class SearchEstimatePublic(StrictModel):
    """What a search would need (`POST /searches/estimate`) against what one worker has."""

    weights: int = Field(description="Trainable weights of the supernet, exactly (alphas excluded).")
    arch_weights: int = Field(description="Architecture parameters (the two alpha tensors).")
    peak_memory_bytes: int = Field(description="Estimated peak memory of the worker: one step + dataset.")
    step_memory_bytes: int = Field(
        description="One bilevel step: weights, gradients, optimizer states, saved activations, workspace."
    )
    dataset_bytes: int = Field(description="The training images the worker holds (float32, two copies).")
    limit_bytes: int = Field(description="WORKER_MEMORY_BYTES: what a worker may use.")
    fits: bool = Field(description="Whether POST /searches would accept this spec's size.")
    lower: list[str] = Field(description="When it does not fit: the spec fields to lower, most useful first.")


class EpochPublic(StrictModel):
    model_config = ConfigDict(extra="forbid", from_attributes=True)

    epoch: int
    train_loss: float
    train_acc: float
    valid_loss: float
    valid_acc: float
    lr: float
    seconds: float
    genotype: dict[str, Any]
    alphas: dict[str, Any] | None
    created_at: datetime


class StatusEvent(StrictModel):
    """The data of an SSE `status` event."""

    status: SearchStatusName
    error: str | None


class DatasetPublic(StrictModel):
    """A dataset the searches can use: built in (`kind` "builtin", id = its name) or uploaded."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    id: str
    kind: Literal["builtin", "upload"]
    name: str
    description: str | None = None
    filename: str | None = None
    num_samples: int | None = None
    num_classes: int | None = None
    channels: int | None = None
    height: int | None = None
    width: int | None = None
    size_bytes: int | None = None
    created_at: datetime | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="Built-ins: the spec parameters they take, with their defaults"
    )

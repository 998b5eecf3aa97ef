"""Pydantic schemas of the REST API (separate from the SQL models in app/models.py).

The search spec is defined once, in darts_core (`darts_core.spec.search_spec`,
`darts_core.spec.dataset_spec`): `SearchSpec` composes those models with what only the service knows
(uploaded datasets, the search's name), so the API, the worker (`SearchConfig.from_spec`) and the library's
`darts search` read the same fields, defaults and bounds. Unknown fields are rejected everywhere;
`SearchSpec.model_dump()` is the spec as accepted, every default filled in. Nothing here imports torch.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from app.lifecycle.status import Status
from app.schemas.common import MAX_SEARCH_NAME, SearchName, StrictModel, UploadId
from darts_core.spec.dataset_spec import DigitsDatasetSpec, SplitSeed, SyntheticDatasetSpec, TestFraction
from darts_core.spec.method_spec import DartsMethod, MethodConfig
from darts_core.spec.records import EpochRecord
from darts_core.spec.search_spec import (
    ConstraintsConfig,
    NetworkConfig,
    ResourcesConfig,
    SearchSpaceConfig,
    TrainingConfig,
)

# The search spec: darts_core's models plus what only the service knows

# cifar10 and npz are not offered as such: they read paths on the server, which a client has no business
# naming (an upload is read as npz by the worker).
BuiltinDatasetSpec = DigitsDatasetSpec


class UploadedDatasetSpec(StrictModel):
    """A dataset uploaded with `POST /datasets`, by its id."""

    id: UploadId
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


def default_search_name(dataset_name: str) -> str:
    """'<dataset name> search', the dataset name shortened so the whole fits in MAX_SEARCH_NAME."""
    suffix = " search"
    return f"{dataset_name[: MAX_SEARCH_NAME - len(suffix)]}{suffix}"


class SearchSpec(StrictModel):
    """A DARTS search as `POST /searches` accepts it; every field but `dataset` has a default."""

    name: SearchName | None = Field(default=None, description="Defaults to '<dataset name> search'.")
    dataset: DatasetSpec
    search_space: SearchSpaceConfig = Field(default_factory=SearchSpaceConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)
    method: MethodConfig = Field(default_factory=DartsMethod)

    @model_validator(mode="after")
    def _default_name(self) -> SearchSpec:
        # An uploaded dataset's name is known only to the database: the service fills that one in.
        if self.name is None and not isinstance(self.dataset, UploadedDatasetSpec):
            self.name = default_search_name(self.dataset.name)
        return self


class SearchPublic(StrictModel):
    model_config = ConfigDict(extra="forbid", from_attributes=True)

    id: str
    name: str
    owner: str = Field(description="The name of the API key that created it.")
    status: Status
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    epoch: int = Field(description="The last finished epoch (1-based); 0 before the first.")
    epochs: int = Field(description="Epochs planned in total.")
    metrics: dict[str, Any] | None = Field(description="The last epoch's metrics.")
    best_valid_acc: float | None
    genotype: dict[str, Any] | None = Field(
        description="The latest genotype (DARTS format) or null; for a search stopped early, the one its "
        "rule kept."
    )
    error: str | None
    stopped_early: bool = Field(
        default=False, description="True when the spec's training.early_stop rule ended the search."
    )
    stop_reason: str | None = Field(default=None, description="Why the early-stop rule stopped it.")
    class_names: list[str] | None = Field(
        default=None, description="The dataset's class names (label i is class_names[i]), when it names them."
    )


class SearchEstimatePublic(StrictModel):
    """What a search would need (`POST /searches/estimate`) against what one worker has."""

    weights: int = Field(description="Trainable weights of the supernet, exactly (alphas excluded).")
    arch_weights: int = Field(description="Architecture parameters (the two alpha tensors).")
    peak_memory_bytes: int = Field(description="Estimated peak memory of the worker: one step + dataset.")
    step_memory_bytes: int = Field(
        description="One bilevel step: weights, gradients, optimizer states, saved activations, workspace."
    )
    dataset_bytes: int = Field(description="The training images the worker holds (float32, two copies).")
    limit_bytes: int = Field(
        description="What a worker that can take the job may use: WORKER_MEMORY_BYTES for a CPU job; for "
        "a CUDA job the GPU memory its workers report (or WORKER_GPU_MEMORY_BYTES while none is up)."
    )
    limit_device: Literal["cpu", "cuda"] = Field(description="The device whose memory `limit_bytes` is.")
    limit_source: str = Field(description="Where `limit_bytes` comes from (a setting or a worker's GPU).")
    fits: bool = Field(description="Whether POST /searches would accept this spec's size.")
    lower: list[str] = Field(description="When it does not fit: the spec fields to lower, most useful first.")


class EpochPublic(EpochRecord):
    """An epoch record (darts_core.spec.records.EpochRecord, which names the fields) as the API serves it."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    alphas: dict[str, Any] | None = Field(  # type: ignore[assignment]
        description="Softmaxed alphas: {'normal': rows, 'reduce': rows}; null for records without them"
    )
    created_at: datetime


class StatusPayload(StrictModel):
    """The data of the `status` event of a search's or a training's Server-Sent Events (not the workers'
    `app.events.schema.StatusEvent`, which the ingester reads from the Redis stream)."""

    status: Status
    error: str | None

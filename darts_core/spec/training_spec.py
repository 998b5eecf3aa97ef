"""The training spec: the one definition of a retraining's fields, defaults and bounds (torch-free).

A training retrains one genotype from scratch (the DARTS evaluation protocol). Its spec is the JSON
object ``POST /trainings`` accepts and ``darts train --spec`` reads::

    {"name": ..., "genotype" | "search_id" (+ "epoch"), "dataset": ...,
     "network": {...}, "training": {...}, "resources": {...}}

:class:`TrainingJobConfig` is everything but the caller's keys (``name``, ``dataset`` and the genotype
source, which belong to whoever runs the training: the library's CLI or the service). As in
:mod:`darts_core.spec.search_spec`, unknown fields are errors, numbers must be finite and integers must be
integers; the upper bounds keep one spec from asking a worker for unbounded work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, Strict, StrictBool, ValidationError, model_validator

from darts_core.spec.search_spec import (
    AugmentationConfig,
    ResourcesConfig,
    _Section,
    format_validation_error,
)

__all__ = ["TrainingNetworkConfig", "TrainingScheduleConfig", "TrainingJobConfig"]

_Int = Annotated[int, Strict()]
_Seed = Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)]
# Strict: pydantic's lax float takes true/false and numeric strings; a spec's numbers are JSON numbers
# (an integer is still a number).
_Float = Annotated[float, Strict()]


class TrainingNetworkConfig(_Section):
    """``network``: the size of the :class:`~darts_core.nn.genotype_network.GenotypeNetwork` trained."""

    init_channels: _Int = Field(default=16, ge=1, le=512, description="Width of the first cells.")
    cells: _Int = Field(default=5, ge=1, le=64, description="Number of cells (reductions at 1/3 and 2/3).")
    auxiliary: StrictBool = Field(default=False, description="Add the auxiliary head and its loss.")
    auxiliary_weight: _Float = Field(
        default=0.4, ge=0.0, le=10.0, description="Weight of the auxiliary loss."
    )
    drop_path_prob: _Float = Field(
        default=0.2, ge=0.0, lt=1.0, description="Final drop-path probability (ramped linearly from 0)."
    )


class TrainingScheduleConfig(_Section):
    """``training``: length, optimiser, schedule, augmentation and seed of the retraining."""

    epochs: _Int = Field(default=10, ge=1, le=2000)
    batch_size: _Int = Field(default=64, ge=2, le=4096)
    lr: _Float = Field(default=0.025, gt=0.0, le=10.0, description="Initial SGD learning rate.")
    lr_min: _Float = Field(
        default=0.0, ge=0.0, description="Learning rate at the end of the cosine schedule."
    )
    momentum: _Float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: _Float = Field(default=3e-4, ge=0.0, le=1.0)
    grad_clip: _Float | None = Field(
        default=5.0, gt=0.0, description="Maximum gradient norm; null: no clipping."
    )
    augmentation: AugmentationConfig = Field(
        default_factory=AugmentationConfig,
        description="Random crop and flip of every training batch (never of validation or test batches)",
    )
    cutout: StrictBool = Field(default=False, description="Cutout augmentation (image data).")
    cutout_length: _Int | None = Field(
        default=None, ge=1, le=4096, description="Cutout side in pixels; null: half the image side."
    )
    valid_fraction: _Float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Share of the training split held out for validation (the selection metric of a "
        "study); 0: no validation split.",
    )
    seed: _Seed = 0

    @model_validator(mode="after")
    def _lr_min_below_lr(self) -> TrainingScheduleConfig:
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}) must not exceed lr ({self.lr})")
        return self


#: Top-level spec keys that belong to the caller (CLI or service), not to the training itself.
_CALLER_KEYS = ("name", "dataset", "genotype", "search_id", "epoch")


class TrainingJobConfig(_Section):
    """A validated training spec: the spec without ``name``, ``dataset`` and the genotype source.

    Build it with :meth:`from_spec`; :meth:`to_spec` gives it back with every default filled in.
    Invalid values raise ``ValueError`` naming the field, e.g.
    ``"training.epochs: Input should be greater than or equal to 1 (got 0)"``.
    """

    network: TrainingNetworkConfig = Field(default_factory=TrainingNetworkConfig)
    training: TrainingScheduleConfig = Field(default_factory=TrainingScheduleConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> TrainingJobConfig:
        """Validate a spec (the caller's keys are ignored; unknown keys are errors).

        Raises:
            ValueError: one line per bad field, each naming its path (``training.epochs: ...``).
        """
        if not isinstance(spec, Mapping):
            raise ValueError(f"spec must be a JSON object, got {type(spec).__name__}")
        sections = {key: value for key, value in spec.items() if key not in _CALLER_KEYS}
        try:
            return cls.model_validate(sections)
        except ValidationError as error:
            raise ValueError(format_validation_error(error)) from None

    def to_spec(self) -> dict[str, Any]:
        """The spec as JSON-ready dicts with every default filled in (same nesting as the REST spec)."""
        return self.model_dump(mode="json")

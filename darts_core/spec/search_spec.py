"""The search spec: the one definition of its fields, defaults and bounds (torch-free).

A spec is the JSON object ``darts search SPEC.json`` reads and ``POST /searches`` accepts::

    {"name": ..., "dataset": ..., "search_space": {...}, "network": {...}, "training": {...},
     "resources": {...}, "constraints": {...}, "method": {"name": "darts", ...}}

:class:`SearchConfig` is everything but ``name`` and ``dataset`` (which belong to whoever runs the
search: the library's CLI or the service, which composes these models with its own dataset kinds).
Unknown fields are errors everywhere; numbers must be finite; integers must be integers (not ``true``,
not ``2.5``, not ``"3"``). The upper bounds keep one spec from asking a worker for unbounded work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from darts_core.spec.method_spec import (
    ARCHITECTURE_FREE_METHODS,
    DIRICHLET_METHODS,
    OWN_DERIVATION_METHODS,
    PERTURBING_METHODS,
    SKIP_AUXILIARY_METHODS,
    SOFTMAX_METHODS,
    DartsMethod,
    MethodConfig,
)
from darts_core.spec.op_names import DARTS_OP_NAMES, MAX_INTERNAL_NODES, OpName

__all__ = [
    "AugmentationConfig",
    "SearchSpaceConfig",
    "NetworkConfig",
    "TrainingConfig",
    "ResourcesConfig",
    "ConstraintsConfig",
    "ConstraintsNetworkConfig",
    "SearchConfig",
    "NoNulStr",
    "reject_nul",
    "format_validation_error",
]


def reject_nul(value: str) -> str:
    """``value`` unchanged; ValueError when it holds a NUL character (an AfterValidator)."""
    # NUL ends C strings: PostgreSQL refuses it in text, and logs and file names truncate at it.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


#: A string without NUL characters (every free-text string of a spec is one).
NoNulStr = Annotated[str, AfterValidator(reject_nul)]

_Int = Annotated[int, Strict()]
_Seed = Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SearchSpaceConfig(_Section):
    """``search_space``: the candidate operations (DARTS names, in alpha column order) and nodes per cell."""

    primitives: tuple[OpName, ...] = Field(
        default=cast("tuple[OpName, ...]", DARTS_OP_NAMES), min_length=2, max_length=len(DARTS_OP_NAMES)
    )
    internal_nodes: _Int = Field(default=4, ge=1, le=MAX_INTERNAL_NODES)
    partial_channels: _Int = Field(
        default=1,
        ge=1,
        le=64,
        description="PC-DARTS K: each mixed operation sees 1/K of the channels (1: DARTS); must divide "
        "network.init_channels",
    )
    edge_normalization: StrictBool = Field(
        default=False, description="PC-DARTS edge normalization: a softmaxed weight per edge (betas)"
    )

    @field_validator("primitives")
    @classmethod
    def _unique(cls, primitives: tuple[str, ...]) -> tuple[str, ...]:
        # Linear (a set, not count() per name). Two distinct names always include one that is not 'none'.
        if len(set(primitives)) != len(primitives):
            raise ValueError(f"must not repeat an operation, got {list(primitives)}")
        return primitives


class NetworkConfig(_Section):
    """``network``: size of the supernet."""

    cells: _Int = Field(default=8, ge=1, le=64)
    init_channels: _Int = Field(default=16, ge=1, le=512)
    stem_multiplier: _Int = Field(default=3, ge=1, le=16)


class AugmentationConfig(_Section):
    """``augmentation``: the DARTS training augmentation (:mod:`darts_core.data.augment`), batched on
    the device. ``null`` fields take the dataset's default: on for ``cifar10`` and image folders (crop
    padding 4 at 32 x 32, scaled with the image side; flip), off for ``digits`` and ``synthetic``."""

    crop_padding: _Int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="Zero padding of the random crop, in pixels (0: no crop); null: the dataset's default",
    )
    horizontal_flip: StrictBool | None = Field(
        default=None, description="Random horizontal flip; null: the dataset's default"
    )


class TrainingConfig(_Section):
    """``training``: schedule, optimizers, data split and seed of the search."""

    epochs: _Int = Field(default=50, ge=1, le=1000)
    batch_size: _Int = Field(default=64, ge=1, le=4096)
    train_portion: float = Field(default=0.5, gt=0.0, lt=1.0)
    order: Literal["first", "second"] = "first"
    weight_lr: float = Field(default=0.025, gt=0.0)
    weight_lr_min: float = Field(default=0.001, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=3e-4, ge=0.0)
    arch_lr: float = Field(default=3e-4, gt=0.0)
    arch_weight_decay: float = Field(default=1e-3, ge=0.0)
    grad_clip: float = Field(default=5.0, gt=0.0)
    seed: _Seed = 0
    early_stop: Literal["darts_plus", "eigenvalue"] | None = Field(
        default=None,
        description="Stop against collapse: 'darts_plus' (too many skip connections in the normal cell, "
        "keeps the previous epoch's genotype) or 'eigenvalue' (RobustDARTS: the Hessian's dominant "
        "eigenvalue grows sharply; needs hessian_every)",
    )
    max_skip_connections: _Int = Field(
        default=2, ge=1, le=64, description="darts_plus: this many skip connections stop the search"
    )
    eigenvalue_window: _Int = Field(
        default=5, ge=1, le=100, description="eigenvalue: measurements averaged on each side of the ratio"
    )
    eigenvalue_threshold: float = Field(
        default=1.3, gt=1.0, le=100.0, description="eigenvalue: the recent / earlier mean ratio that stops"
    )
    hessian_every: _Int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Compute the dominant Hessian eigenvalue every this many epochs (null: never)",
    )
    augmentation: AugmentationConfig = Field(
        default_factory=AugmentationConfig,
        description="Random crop and flip of the weight-step batches (never of the architecture step's "
        "or the evaluation's)",
    )

    @field_validator(
        "train_portion",
        "weight_lr",
        "weight_lr_min",
        "momentum",
        "weight_decay",
        "arch_lr",
        "arch_weight_decay",
        "grad_clip",
        "eigenvalue_threshold",
        mode="before",
    )
    @classmethod
    def _a_json_number(cls, value: Any) -> Any:
        # pydantic's lax float takes true/false and numeric strings; a spec's numbers are JSON numbers.
        if isinstance(value, (bool, str)):
            raise ValueError(f"must be a finite number, got {value!r}")
        return value

    @model_validator(mode="after")
    def _lr_min_not_above_lr(self) -> TrainingConfig:
        if self.weight_lr_min > self.weight_lr:
            raise ValueError(
                f"weight_lr_min ({self.weight_lr_min:g}) must be <= weight_lr ({self.weight_lr:g})"
            )
        return self

    @model_validator(mode="after")
    def _eigenvalue_needs_measurements(self) -> TrainingConfig:
        if self.early_stop == "eigenvalue" and self.hessian_every is None:
            raise ValueError("hessian_every must be set (e.g. 1) when early_stop is 'eigenvalue'")
        return self


class ResourcesConfig(_Section):
    """``resources``: where the search runs. ``auto`` means CUDA when available, else CPU."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="Forward precision of the weight step: bf16 autocast (fp32 parameters and optimizer "
        "states) or plain fp32; auto = the measured default of the device (bf16 on CUDA, fp32 on CPU). "
        "The architecture step runs in fp32 either way (benchmarks/README.md).",
    )
    compile: Literal["off", "torch.compile"] = Field(
        default="off",
        description="off, or torch.compile the weight step's forward (search) and the training forward: "
        "the architecture, second-order and Hessian passes stay eager (functional calls and torch.func). "
        "The first steps pay the compilation (a C compiler is needed on CPU).",
    )
    time_limit_seconds: int | None = Field(
        default=None,
        ge=1,
        le=30 * 24 * 3600,
        description="Wall-clock limit of the search (the service's worker enforces it; its SEARCH_TIME_LIMIT "
        "setting is the most a spec may ask for). Past it the search ends failed, keeping its genotype.",
    )


#: Top-level spec keys that belong to the caller (CLI or service), not to the search itself.
_CALLER_KEYS = ("name", "dataset")


class ConstraintsNetworkConfig(_Section):
    """``constraints.network``: the network the budget is counted on (``null``: the training spec's
    default, as ``POST /trainings`` would build it)."""

    cells: _Int | None = Field(default=None, ge=1, le=64)
    init_channels: _Int | None = Field(default=None, ge=1, le=512)
    auxiliary: StrictBool | None = Field(
        default=None, description="Accepted for fidelity: the auxiliary head is never counted."
    )


class ConstraintsConfig(_Section):
    """``constraints``: a parameter and/or multiply-add budget for the genotype the search returns,
    counted on the network trained from it exactly as a training reports ``parameters`` and
    ``multiply_adds`` (:mod:`darts_core.search.budget`)."""

    max_parameters: _Int | None = Field(default=None, ge=1, le=10**12)
    max_multiply_adds: _Int | None = Field(default=None, ge=1, le=10**15)
    # 0.3 by measurement (benchmarks/README.md, digits): from 1 on the penalty drives the genotype onto
    # the cheapest one (all parameter-free) while the expected cost still lags; 0 to 0.3 use the budget.
    penalty_weight: Annotated[float, Strict()] = Field(
        default=0.3,
        ge=0.0,
        le=1000.0,
        description="Weight of the hinge on the expected cost's relative excess in the architecture loss",
    )
    network: ConstraintsNetworkConfig = Field(default_factory=ConstraintsNetworkConfig)

    @property
    def active(self) -> bool:
        return self.max_parameters is not None or self.max_multiply_adds is not None


class SearchConfig(_Section):
    """A validated search spec: the spec without ``name`` and ``dataset``.

    Build it with :meth:`from_spec` from the JSON spec (defaults fill what is missing) or directly from
    the section models; :meth:`to_spec` gives the spec back with every default filled in.
    Invalid values raise ``ValueError`` naming the field, e.g.
    ``"training.epochs: Input should be greater than or equal to 1 (got 0)"``.
    """

    search_space: SearchSpaceConfig = Field(default_factory=SearchSpaceConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)
    method: MethodConfig = Field(default_factory=DartsMethod)

    @model_validator(mode="after")
    def _method_composes(self) -> SearchConfig:
        # What only the softmax-mixed DARTS supernet supports; the message names the fields to change.
        name = self.method.name
        if name in SOFTMAX_METHODS:
            return self
        if name in SKIP_AUXILIARY_METHODS:
            return self._auxiliary_skip_composes()
        if name in DIRICHLET_METHODS:
            return self._dirichlet_composes()
        clashes = []
        if self.training.order != "first":
            clashes.append(f"training.order ({self.training.order!r})")
        if name in PERTURBING_METHODS:
            if clashes:
                raise ValueError(
                    f"method.name {name!r} does not compose with {clashes[0]}: SDARTS is first order"
                )
            return self
        if self.search_space.partial_channels != 1:
            clashes.append(f"search_space.partial_channels ({self.search_space.partial_channels})")
        if self.search_space.edge_normalization:
            clashes.append("search_space.edge_normalization (true)")
        if self.training.hessian_every is not None:
            clashes.append(f"training.hessian_every ({self.training.hessian_every})")
        if name in ARCHITECTURE_FREE_METHODS:
            if self.training.early_stop is not None:
                clashes.append(f"training.early_stop ({self.training.early_stop!r})")
            if self.constraints.active:
                clashes.append("constraints.max_parameters/max_multiply_adds")
            if clashes:
                raise ValueError(
                    f"method.name {name!r} does not compose with {', '.join(clashes)}: it trains no alphas "
                    f"(no second order, PC-DARTS, Hessian, collapse early stop or budget penalty)"
                )
            return self
        if clashes:
            raise ValueError(
                f"method.name {name!r} does not compose with {', '.join(clashes)}: second order, PC-DARTS "
                f"partial channels and edge normalization, and the Hessian measurement need a method.name "
                f"among {', '.join(repr(softmax) for softmax in SOFTMAX_METHODS)}"
            )
        if name in OWN_DERIVATION_METHODS and self.constraints.active:
            raise ValueError(
                f"method.name {name!r} does not compose with constraints.max_parameters/max_multiply_adds: "
                f"the budget's penalty and repair work on softmax weights and DARTS's derivation, "
                f"{name!r} derives its own genotype"
            )
        return self

    def _auxiliary_skip_composes(self) -> SearchConfig:
        name = self.method.name
        if "skip_connect" not in self.search_space.primitives:
            raise ValueError(
                f"method.name {name!r} needs 'skip_connect' among search_space.primitives: the auxiliary "
                f"skip of every edge is the edge's skip_connect operation"
            )
        if self.training.hessian_every is not None:
            raise ValueError(
                f"method.name {name!r} does not compose with training.hessian_every "
                f"({self.training.hessian_every}): the measurement sees the supernet without the "
                f"auxiliary skip"
            )
        return self

    def _dirichlet_composes(self) -> SearchConfig:
        clashes = []
        if self.training.order != "first":
            clashes.append(f"training.order ({self.training.order!r})")
        if self.training.hessian_every is not None:
            clashes.append(f"training.hessian_every ({self.training.hessian_every})")
        if clashes:
            raise ValueError(
                f"method.name {self.method.name!r} does not compose with {', '.join(clashes)}: it mixes "
                f"by Dirichlet samples (first order), while the unrolled step and the Hessian measurement "
                f"assume softmax weights"
            )
        return self

    @model_validator(mode="after")
    def _partial_channels_divide_the_width(self) -> SearchConfig:
        k, width = self.search_space.partial_channels, self.network.init_channels
        if width % k:
            # Raised here (the two sections meet); the message names the field to change.
            raise ValueError(
                f"search_space.partial_channels ({k}) must divide network.init_channels ({width})"
            )
        return self

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> SearchConfig:
        """Validate a spec (``name`` and ``dataset`` are ignored; unknown keys are errors).

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

    def replace(self, **overrides: Mapping[str, Any]) -> SearchConfig:
        """A copy with some fields of some sections changed, e.g. ``replace(training={"epochs": 3})``;
        ``replace(method={"name": "gdas"})`` switches the method (the new one's defaults fill the rest)."""
        spec = self.to_spec()
        for section, values in overrides.items():
            if section not in spec:
                raise ValueError(f"{section} is not a known field (known: {', '.join(spec)})")
            if section == "method" and values.get("name", spec[section]["name"]) != spec[section]["name"]:
                spec[section] = dict(values)  # another method: its own fields, not the old one's
            else:
                spec[section].update(values)
        return SearchConfig.from_spec(spec)


def format_validation_error(error: ValidationError) -> str:
    """pydantic's errors as ``"path: message (got value)"`` lines, the path dotted (``a.b[2]``)."""
    lines = []
    for item in error.errors(include_url=False):
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "is not a known field"
        elif item["type"] in ("model_type", "model_attributes_type", "dict_type"):
            message = "must be a JSON object"
        # Our own checks (value_error) say what they got; pydantic's do not.
        got = (
            f" (got {_short(item['input'])})"
            if item["type"] not in ("extra_forbidden", "value_error")
            else ""
        )
        lines.append(f"{path}: {message}{got}" if path else f"{message}{got}")
    return "; ".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: hostile input must not make a huge message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."

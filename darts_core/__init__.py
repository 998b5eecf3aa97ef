"""darts_core: DARTS (Differentiable ARchiTecture Search) in PyTorch.

The names of the ``trw.arch`` API come first, so ``import darts_core as arch`` works as a drop-in::

    import darts_core as arch
    cell = arch.Cell(arch.DARTS_PRIMITIVES_2D, cpp=16, cp=16, c=16, is_reduction=False,
                     is_reduction_prev=False)

The names are imported on first use (PEP 562): ``import darts_core.config`` (the search spec) does not
import torch, so a process that only validates specs never pays for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    # The trw.arch API (seed names).
    "ReLUConvBN2d": "ops",
    "ReduceChannels2d": "ops",
    "Identity": "ops",
    "Zero2d": "ops",
    "DilConv2d": "ops",
    "SepConv2d": "ops",
    "Cell": "cell",
    "default_cell_output": "cell",
    "SpecialParameter": "cell",
    "create_darts_optimizers_fn": "optim",
    "create_darts_adam_optimizers_fn": "optim",
    # Additions.
    "DARTS_PRIMITIVES_2D": "ops",
    "DARTS_OP_NAMES": "op_names",
    "MixedOp": "cell",
    # Search engine.
    "Genotype": "genotype",
    "derive_genotype": "genotype",
    "SearchNetwork": "networks",
    "GenotypeNetwork": "networks",
    "DartsSearch": "architect",
    "SearchConfig": "config",
    "EpochRecord": "records",
    "EpochResult": "search",
    "SearchResult": "search",
    "run_search": "search",
    "read_history": "checkpoint",
    "train_genotype": "train",
    "TrainResult": "train",
    "TrainEpoch": "train",
    "TrainingJobConfig": "training_config",
    "run_training_job": "training_job",
    "TrainingStopped": "training_job",
    "save_trained": "weights",
    "load_trained": "weights",
    "load_dataset": "data",
    "builtin_datasets": "data",
    "ImageDataset": "data",
    "DatasetError": "data",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'darts_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"darts_core.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see: the eager imports (re-exports, hence F401)
    # ruff: noqa: F401
    from darts_core.architect import DartsSearch
    from darts_core.cell import Cell, MixedOp, SpecialParameter, default_cell_output
    from darts_core.checkpoint import read_history
    from darts_core.config import SearchConfig
    from darts_core.data import DatasetError, ImageDataset, builtin_datasets, load_dataset
    from darts_core.genotype import Genotype, derive_genotype
    from darts_core.networks import GenotypeNetwork, SearchNetwork
    from darts_core.op_names import DARTS_OP_NAMES
    from darts_core.ops import (
        DARTS_PRIMITIVES_2D,
        DilConv2d,
        Identity,
        ReduceChannels2d,
        ReLUConvBN2d,
        SepConv2d,
        Zero2d,
    )
    from darts_core.optim import create_darts_adam_optimizers_fn, create_darts_optimizers_fn
    from darts_core.records import EpochRecord
    from darts_core.search import EpochResult, SearchResult, run_search
    from darts_core.train import TrainEpoch, TrainResult, train_genotype
    from darts_core.training_config import TrainingJobConfig
    from darts_core.training_job import TrainingStopped, run_training_job
    from darts_core.weights import load_trained, save_trained

"""darts_core: DARTS (Differentiable ARchiTecture Search) in PyTorch.

The names of the ``trw.arch`` API come first, so ``import darts_core as arch`` works as a drop-in::

    import darts_core as arch
    cell = arch.Cell(arch.DARTS_PRIMITIVES_2D, cpp=16, cp=16, c=16, is_reduction=False,
                     is_reduction_prev=False)

The names are imported on first use (PEP 562): ``import darts_core.spec`` (the specs) does not import
torch, so a process that only validates specs never pays for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    # The trw.arch API (seed names).
    "ReLUConvBN2d": "nn.ops",
    "ReduceChannels2d": "nn.ops",
    "Identity": "nn.ops",
    "Zero2d": "nn.ops",
    "DilConv2d": "nn.ops",
    "SepConv2d": "nn.ops",
    "Cell": "nn.cell",
    "default_cell_output": "nn.cell",
    "SpecialParameter": "nn.special_parameter",
    "create_darts_optimizers_fn": "search.optimizers",
    "create_darts_adam_optimizers_fn": "search.optimizers",
    # Additions.
    "DARTS_PRIMITIVES_2D": "nn.ops",
    "DARTS_OP_NAMES": "spec.op_names",
    "MixedOp": "nn.mixed_op",
    # Search engine.
    "Genotype": "spec.genotype",
    "derive_genotype": "search.derive",
    "SearchNetwork": "nn.search_network",
    "GenotypeNetwork": "nn.genotype_network",
    "DartsSearch": "search.bilevel",
    "SearchConfig": "spec.search_spec",
    "EpochRecord": "spec.records",
    "EpochResult": "search.loop",
    "SearchResult": "search.loop",
    "run_search": "search.loop",
    "read_history": "checkpoint",
    "train_genotype": "train.train_genotype",
    "TrainResult": "train.records",
    "TrainEpoch": "train.records",
    "TrainingJobConfig": "spec.training_spec",
    "run_training_job": "train.job",
    "TrainingStopped": "train.records",
    "save_trained": "train.weights",
    "load_trained": "train.weights",
    "export_onnx": "train.export",
    "export_torchscript": "train.export",
    "read_export_metadata": "train.export",
    "load_dataset": "data.registry",
    "builtin_datasets": "spec.dataset_spec",
    "ImageDataset": "data.registry",
    "DatasetError": "data.registry",
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
    from darts_core.checkpoint import read_history
    from darts_core.data.registry import DatasetError, ImageDataset, load_dataset
    from darts_core.nn.cell import Cell, default_cell_output
    from darts_core.nn.genotype_network import GenotypeNetwork
    from darts_core.nn.mixed_op import MixedOp
    from darts_core.nn.ops import (
        DARTS_PRIMITIVES_2D,
        DilConv2d,
        Identity,
        ReduceChannels2d,
        ReLUConvBN2d,
        SepConv2d,
        Zero2d,
    )
    from darts_core.nn.search_network import SearchNetwork
    from darts_core.nn.special_parameter import SpecialParameter
    from darts_core.search.bilevel import DartsSearch
    from darts_core.search.derive import derive_genotype
    from darts_core.search.loop import EpochResult, SearchResult, run_search
    from darts_core.search.optimizers import create_darts_adam_optimizers_fn, create_darts_optimizers_fn
    from darts_core.spec.dataset_spec import builtin_datasets
    from darts_core.spec.genotype import Genotype
    from darts_core.spec.op_names import DARTS_OP_NAMES
    from darts_core.spec.records import EpochRecord
    from darts_core.spec.search_spec import SearchConfig
    from darts_core.spec.training_spec import TrainingJobConfig
    from darts_core.train.export import export_onnx, export_torchscript, read_export_metadata
    from darts_core.train.job import run_training_job
    from darts_core.train.records import TrainEpoch, TrainingStopped, TrainResult
    from darts_core.train.train_genotype import train_genotype
    from darts_core.train.weights import load_trained, save_trained

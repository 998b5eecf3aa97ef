"""darts_core: DARTS (Differentiable ARchiTecture Search) in PyTorch.

The names of the ``trw.arch`` API come first, so ``import darts_core as arch`` works as a drop-in::

    import darts_core as arch
    cell = arch.Cell(arch.DARTS_PRIMITIVES_2D, cpp=16, cp=16, c=16, is_reduction=False,
                     is_reduction_prev=False)
"""

from darts_core.cell import Cell, MixedOp, SpecialParameter, default_cell_output

# The search engine around the seed API.
from darts_core.data import DatasetError, ImageDataset, builtin_datasets, load_dataset  # noqa: E402
from darts_core.genotype import Genotype, derive_genotype  # noqa: E402
from darts_core.networks import GenotypeNetwork, SearchNetwork  # noqa: E402
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
from darts_core.search import (  # noqa: E402
    DartsSearch,
    EpochResult,
    SearchConfig,
    SearchResult,
    run_search,
)
from darts_core.train import TrainResult, train_genotype  # noqa: E402

__all__ = [
    # The trw.arch API (seed names).
    "ReLUConvBN2d",
    "ReduceChannels2d",
    "Identity",
    "Zero2d",
    "DilConv2d",
    "SepConv2d",
    "Cell",
    "default_cell_output",
    "SpecialParameter",
    "create_darts_optimizers_fn",
    "create_darts_adam_optimizers_fn",
    # Additions.
    "DARTS_PRIMITIVES_2D",
    "MixedOp",
    # Search engine.
    "Genotype",
    "derive_genotype",
    "SearchNetwork",
    "GenotypeNetwork",
    "DartsSearch",
    "SearchConfig",
    "EpochResult",
    "SearchResult",
    "run_search",
    "train_genotype",
    "TrainResult",
    "load_dataset",
    "builtin_datasets",
    "ImageDataset",
    "DatasetError",
]

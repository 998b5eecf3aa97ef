"""The names of the DARTS candidate operations and the bound on a cell's nodes, importable without torch.

The search spec (:mod:`darts_core.spec.search_spec`) validates ``search_space.primitives`` against these
names, and a process that only validates specs (the service's API) should not pay for importing torch.
:mod:`darts_core.nn.ops` maps each name to its module.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["DARTS_OP_NAMES", "MAX_INTERNAL_NODES", "OpName"]

#: Most internal nodes a cell may have: the bound of ``search_space.internal_nodes`` and of any
#: :class:`~darts_core.spec.genotype.Genotype` (the network's size, and the time to build it, grow with it).
MAX_INTERNAL_NODES = 8

#: One operation name of the DARTS search space; a JSON schema shows it as an enum.
OpName = Literal[
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]

#: The eight operation names of the DARTS search space (``none`` included), in the paper's order.
DARTS_OP_NAMES: tuple[str, ...] = get_args(OpName)

"""The tag that marks a parameter as an architecture weight (the ``trw.arch`` seed's ``SpecialParameter``)."""

from __future__ import annotations

from typing import Any, Self, SupportsIndex

import torch
from torch import nn

__all__ = ["SpecialParameter"]


def _rebuild_special_parameter(data: torch.Tensor, requires_grad: bool) -> SpecialParameter:
    return SpecialParameter(data, requires_grad)


class SpecialParameter(nn.Parameter):
    """Tag a parameter as special, such as the DARTS architecture weights.

    Special parameters are handled differently depending on the phase: the architecture step optimizes
    only them, the weight step only the other parameters (see
    :func:`darts_core.search.optimizers.create_darts_optimizers_fn`). The type survives ``copy.deepcopy``,
    ``Module.to()``, a ``state_dict`` round trip and ``torch.save``/``torch.load`` of a whole module
    (``torch.load(..., weights_only=False)``). ``Module.to()`` keeps parameter objects for dtype and
    CPU/CUDA moves; torch itself rebuilds plain Parameters for ``.to("meta")`` or when
    ``torch.__future__.set_swap_module_params_on_conversion(True)`` is set.
    """

    def __new__(cls, data: torch.Tensor | None = None, requires_grad: bool = True) -> Self:
        return super().__new__(cls, data, requires_grad)

    def __reduce_ex__(self, proto: SupportsIndex) -> tuple[Any, ...]:
        # nn.Parameter pickles itself as a plain Parameter; rebuild the subclass instead.
        return _rebuild_special_parameter, (self.data, self.requires_grad)

    # Like nn.Parameter.__repr__, takes no arguments; torch's stub gives Tensor's keyword-only one.
    def __repr__(self) -> str:  # type: ignore[override]
        return "SpecialParameter containing:\n" + torch.Tensor.__repr__(self.data)

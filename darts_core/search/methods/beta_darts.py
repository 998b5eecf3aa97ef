"""beta-DARTS (Ye et al., CVPR 2022): the Beta regularizer on the architecture loss.

``lambda * sum over cell kinds of mean over edges of logsumexp(alpha_edge)``: its gradient on a cell
kind's alphas is ``lambda * softmax(alpha) / edges``, a pull on every edge's weights that grows with its
largest one (the paper's Beta-Decay), so no operation's alpha runs away. ``lambda`` grows linearly with
the epochs from ``lambda_start`` to ``lambda_end``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from darts_core.search.methods.base import SearchMethod

__all__ = ["BetaDarts", "beta_regularizer"]


def beta_regularizer(alphas: Tensor) -> Tensor:
    """The mean over edges of ``logsumexp`` over operations: ``(edges, ops) -> ()``."""
    if alphas.dim() != 2:
        raise ValueError(f"alphas: expected (edges, ops), got shape {tuple(alphas.shape)}")
    return torch.logsumexp(alphas, dim=-1).mean()


class BetaDarts(SearchMethod):
    """DARTS with the Beta regularizer (see the module docstring)."""

    name = "beta_darts"

    def __init__(self, lambda_start: float = 0.0, lambda_end: float = 50.0) -> None:
        if lambda_start < 0 or lambda_end < 0:
            raise ValueError(f"lambda_start, lambda_end: must be >= 0, got {lambda_start!r}, {lambda_end!r}")
        self.lambda_start, self.lambda_end = lambda_start, lambda_end
        self.weight = lambda_start

    def start_epoch(self, epoch: int, epochs: int) -> None:
        fraction = (epoch - 1) / (epochs - 1) if epochs > 1 else 0.0
        self.weight = self.lambda_start + (self.lambda_end - self.lambda_start) * fraction

    def schedule(self) -> dict[str, float]:
        return {"lambda": self.weight}

    def arch_regularizer(self, alphas: Sequence[Tensor]) -> Tensor:
        # The two alpha tensors (normal, reduce); PC-DARTS edge weights, if any, are not regularized.
        return self.weight * (beta_regularizer(alphas[0]) + beta_regularizer(alphas[1]))

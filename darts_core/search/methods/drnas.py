"""DrNAS (Chen et al., ICLR 2021): the mixing weights are a sample of a Dirichlet distribution.

Each edge's operation weights are drawn from ``Dirichlet(elu(alpha) + 1)`` (the concentration is
positive for any alpha) at every train-mode forward, of the weight step and of the architecture step
alike, one sample per cell kind (all the cells of a kind share it), as the authors' network does. The
sample is reparameterized (``torch.distributions.Dirichlet.rsample``: the pathwise, implicit
gradient), so the architecture step differentiates the valid loss through it. Draws come from torch's
global generator, which the checkpoint saves: a resumed search draws the same samples.

The architecture loss adds ``scale`` times a regularizer that anchors the Dirichlet at the uniform
``Dirichlet(1)`` (alpha = 0):

- ``"l2"``: ``sum(alpha ** 2) / 2`` over both cell kinds; its gradient ``scale * alpha`` is exactly what
  the authors' code applies as Adam's (coupled) weight decay ``reg_scale`` on the alphas. Here it comes
  on top of ``training.arch_weight_decay`` (0 reproduces the authors' setting);
- ``"kl"``: ``sum over edges of KL(Dirichlet(elu(alpha) + 1) || Dirichlet(1))`` over both kinds.

The eval-mode validation mixes by the Dirichlet mean ``concentration / sum(concentration)`` (the
authors' code samples there too: the mean gives a deterministic validation), and the reported alphas
and the genotype derive from that mean (:meth:`Drnas.operation_weights`; the authors rank by
``softmax(alpha)``: the same order within an edge, since both grow with alpha). The paper's progressive
variant (pruning to the strongest operations while widening the partial channels) is not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Dirichlet, kl_divergence

from darts_core.nn.edge_weights import EdgeMixing
from darts_core.search.methods.base import SearchMethod

__all__ = [
    "Drnas",
    "dirichlet_concentration",
    "dirichlet_kl_to_uniform",
    "dirichlet_mean",
    "dirichlet_sample",
]


def dirichlet_concentration(alphas: Tensor) -> Tensor:
    """``elu(alpha) + 1``, positive: ``(..., ops) -> (..., ops)``."""
    return F.elu(alphas) + 1.0


def dirichlet_sample(alphas: Tensor) -> Tensor:
    """One reparameterized sample of ``Dirichlet(elu(alpha) + 1)`` per row, from torch's global generator.

    ``(edges, ops) -> (edges, ops)``; every row sums to 1; differentiable in ``alphas`` (pathwise).
    """
    if alphas.dim() != 2:
        raise ValueError(f"alphas: expected (edges, ops), got shape {tuple(alphas.shape)}")
    return Dirichlet(dirichlet_concentration(alphas)).rsample()


def dirichlet_mean(alphas: Tensor) -> Tensor:
    """The mean of ``Dirichlet(elu(alpha) + 1)``: the concentration over its row's sum, ``(..., ops)``."""
    concentration = dirichlet_concentration(alphas)
    return concentration / concentration.sum(dim=-1, keepdim=True)


def dirichlet_kl_to_uniform(alphas: Tensor) -> Tensor:
    """``sum over rows of KL(Dirichlet(elu(alpha) + 1) || Dirichlet(1))``: ``(edges, ops) -> ()``."""
    concentration = dirichlet_concentration(alphas)
    return kl_divergence(Dirichlet(concentration), Dirichlet(torch.ones_like(concentration))).sum()


class Drnas(SearchMethod):
    """The DrNAS strategy (see the module docstring)."""

    name = "drnas"
    second_order = False

    def __init__(self, regularizer: str = "l2", scale: float = 1e-3) -> None:
        if regularizer not in ("l2", "kl"):
            raise ValueError(f"regularizer must be 'l2' or 'kl', got {regularizer!r}")
        if not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale!r}")
        self.regularizer, self.scale = regularizer, scale

    def mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing]:
        return EdgeMixing(dirichlet_sample(alphas[0])), EdgeMixing(dirichlet_sample(alphas[1]))

    def eval_mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing]:
        with torch.no_grad():
            return EdgeMixing(dirichlet_mean(alphas[0])), EdgeMixing(dirichlet_mean(alphas[1]))

    def operation_weights(self, alphas: Tensor) -> Tensor:
        return dirichlet_mean(alphas)

    def arch_regularizer(self, alphas: Sequence[Tensor]) -> Tensor | None:
        if self.scale == 0:
            return None
        # The two alpha tensors (normal, reduce); PC-DARTS edge weights, if any, are not regularized.
        if self.regularizer == "l2":
            term = (alphas[0].square().sum() + alphas[1].square().sum()) / 2
        else:
            term = dirichlet_kl_to_uniform(alphas[0]) + dirichlet_kl_to_uniform(alphas[1])
        return self.scale * term

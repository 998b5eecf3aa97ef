"""A textbook PC-DARTS search step, written the way the PC-DARTS reference code computes it.

The PC-DARTS baseline of ``benchmarks/search_step.py`` and of
``tests/core/test_pcdarts_equivalence.py``. Written from scratch after reading the reference
implementation (Xu et al., ICLR 2020; yuhuixu1993/PC-DARTS, ``model_search.py`` and ``train_search.py``;
its ``architect.py`` is the DARTS one, with the edge weights among the architecture parameters), on top
of the DARTS reference operations of ``benchmarks/reference.py``:

- every mixed edge builds its eight operations for ``C / K`` channels (pools followed by a non-affine
  BatchNorm, ``none`` computed as ``x * 0``, every operation applying its own ReLU);
- an edge slices its input: the first ``C / K`` channels go through ``sum(w * op(x))``, the other
  channels are passed on, max-pooled 2x2 when the operations halved the spatial size; the two parts are
  concatenated and channel-shuffled with ``K`` groups, for every edge;
- a node is ``sum(beta_e * edge_e)`` where the betas (one per edge) are softmaxed among the node's
  inputs, per cell kind, at every forward;
- alphas and betas are plain tensors with ``requires_grad`` held by the model, optimised together by
  Adam; the step itself (first order: ``loss.backward()`` into every weight; second order: a new model
  copy per step and the finite-difference Hessian-vector product) is
  :class:`benchmarks.reference.ReferenceSearch`.

Parameters and buffers are registered in the order :class:`darts_core.nn.search_network.SearchNetwork` (built
with ``partial_channels=K, edge_normalization=True``) registers them, so
:func:`benchmarks.reference.load_from_search_network` copies a darts_core network into this one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.reference import PRIMITIVES, FactorizedReduce, ReLUConvBN, build_operation

__all__ = ["PartialMixedOp", "PartialSearchCell", "PCDartsReferenceNetwork", "shuffle_channels"]


def shuffle_channels(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel ``g * (C / groups) + i`` of ``x`` becomes channel ``i * groups + g``.

    Shape: (N, C, H, W) -> (N, C, H, W), C divisible by ``groups``.
    """
    n, c, h, w = x.shape
    grouped = x.reshape(n, groups, c // groups, h, w)
    return grouped.transpose(1, 2).contiguous().reshape(n, c, h, w)


class PartialMixedOp(nn.Module):
    """One PC-DARTS edge: the operations on the first ``C / K`` channels, the rest passed on, shuffled."""

    def __init__(self, c: int, stride: int, k: int):
        super().__init__()
        self.k = k
        self.ops = nn.ModuleList(build_operation(name, c // k, stride, affine=False) for name in PRIMITIVES)
        self.bypass_pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        part = x.shape[1] // self.k
        through, passed = x[:, :part], x[:, part:]
        mixed = sum(w * op(through) for w, op in zip(weights, self.ops, strict=True))
        if mixed.shape[2] != x.shape[2]:  # a stride-2 edge of a reduction cell
            passed = self.bypass_pool(passed)
        return shuffle_channels(torch.cat([mixed, passed], dim=1), self.k)


class PartialSearchCell(nn.Module):
    """A PC-DARTS search cell: every node sums its edges weighted by the softmaxed edge weights."""

    def __init__(
        self, steps: int, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool, k: int
    ):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for node in range(steps):
            for source in range(2 + node):
                self.edges.append(PartialMixedOp(c, 2 if reduction and source < 2 else 1, k))

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, edge_weights: torch.Tensor
    ) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            node = sum(
                edge_weights[offset + j] * self.edges[offset + j](h, weights[offset + j])
                for j, h in enumerate(states)
            )
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self.steps :], dim=1)


class PCDartsReferenceNetwork(nn.Module):
    """The PC-DARTS supernet as the reference builds it.

    The four architecture tensors (alphas and betas of both cell kinds) are plain tensors with
    ``requires_grad``, so :meth:`parameters` yields only the operation weights.

    Shape: (N, in_channels, H, W) -> logits (N, num_classes); H and W even at every reduction.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        init_channels: int = 16,
        cells: int = 8,
        steps: int = 4,
        stem_multiplier: int = 3,
        k: int = 4,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        self.config = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            init_channels=init_channels,
            cells=cells,
            steps=steps,
            stem_multiplier=stem_multiplier,
            k=k,
        )
        self.steps = steps
        self.device = torch.device(device)
        c_curr = stem_multiplier * init_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, init_channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for index in range(cells):
            reduction = index in (cells // 3, 2 * cells // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(
                PartialSearchCell(steps, c_prev_prev, c_prev, c_curr, reduction, reduction_prev, k)
            )
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, steps * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        self.to(self.device)
        num_edges = sum(2 + node for node in range(steps))
        shape = (num_edges, len(PRIMITIVES))
        self.alphas_normal = (1e-3 * torch.randn(shape, device=self.device)).requires_grad_()
        self.alphas_reduce = (1e-3 * torch.randn(shape, device=self.device)).requires_grad_()
        self.betas_normal = (1e-3 * torch.randn(num_edges, device=self.device)).requires_grad_()
        self.betas_reduce = (1e-3 * torch.randn(num_edges, device=self.device)).requires_grad_()

    def new(self) -> PCDartsReferenceNetwork:
        """A freshly constructed network with the same architecture tensors (weights loaded by the caller)."""
        model = PCDartsReferenceNetwork(**self.config, device=self.device)
        for new_tensor, tensor in zip(model.arch_parameters(), self.arch_parameters(), strict=True):
            new_tensor.data.copy_(tensor.data)
        return model

    def arch_parameters(self) -> list[torch.Tensor]:
        return [self.alphas_normal, self.alphas_reduce, self.betas_normal, self.betas_reduce]

    def _node_softmax(self, betas: torch.Tensor) -> torch.Tensor:
        """Softmax of the betas among each node's inputs (2, 3, 4, ... edges), concatenated."""
        pieces, start = [], 0
        for node in range(self.steps):
            pieces.append(F.softmax(betas[start : start + 2 + node], dim=-1))
            start += 2 + node
        return torch.cat(pieces, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                weights, edge_weights = (
                    F.softmax(self.alphas_reduce, dim=-1),
                    self._node_softmax(self.betas_reduce),
                )
            else:
                weights, edge_weights = (
                    F.softmax(self.alphas_normal, dim=-1),
                    self._node_softmax(self.betas_normal),
                )
            s0, s1 = s1, cell(s0, s1, weights, edge_weights)
        pooled = self.global_pooling(s1)
        return self.classifier(pooled.view(pooled.size(0), -1))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)

"""Textbook reimplementations of the search methods' distinguishing math, written from the papers and
the way the authors' code computes them, for ``tests/core/test_methods.py``. Independent of
``darts_core.search.methods``: only the DARTS reference network of ``benchmarks/reference.py`` is shared.

- GDAS (Dong & Yang, CVPR 2019; D-X-Y/AutoDL-Projects): per cell kind one Gumbel sample per edge,
  ``probs = softmax((log_softmax(alpha) + g) / tau)``, the hard weights ``one_hot - probs.detach() +
  probs`` (the authors' straight-through form), and on every edge only ``op_index(x) * hard[index]``.
- SDARTS (Chen & Hsieh, ICML 2020): the Euclidean projection onto the probability simplex, found by
  bisection on the threshold ``theta`` of ``max(v - theta, 0)`` (in float64).
- beta-DARTS (Ye et al., CVPR 2022): the gradient of ``lambda * mean_e logsumexp(alpha_e)`` in closed
  form, ``lambda * softmax(alpha) / edges``.
- DrNAS (Chen et al., ICLR 2021; xiangning-chen/DrNAS): a Dirichlet sample as normalized Gamma draws
  ``G_k ~ Gamma(c_k, 1)``, ``w = G / sum(G)``, ``c = elu(alpha) + 1`` written piecewise (its pathwise
  gradient is the Gamma's); the second moments of a Dirichlet in closed form (for a Monte-Carlo check of
  the pathwise gradient); the L2 anchor (the authors' Adam weight decay) and the KL divergence to
  ``Dirichlet(1)`` in closed form (log-gamma and digamma, float64).
- DARTS- (Chu et al., ICLR 2021; Meituan-AutoML/DARTS-): every edge of the DARTS reference network
  outputs ``sum_k w_k op_k(x) + beta * skip(x)``, the skip run as an operation of its own.
- Random search with weight sharing (Li & Talwalkar, UAI 2019; liamcli/randomNAS_release): the size of
  one cell kind's DARTS genotype space counted in closed form, its every member listed, and the forward
  of one drawn architecture on the reference network (only the drawn edges and operations).
- FairDARTS (Chu et al., ECCV 2020; xiaomi-automl/FairDARTS): the reference forward with every edge
  ``sum_k sigmoid(alpha_k) * op_k(x)``, the zero-one loss ``-w * mean((sigmoid(alpha) - 0.5)^2)`` with its
  gradient written out, and the threshold parse (the edges above the threshold, at most two, the others
  of the two strongest listed as ``("none", j)``).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from benchmarks.reference import PRIMITIVES, ReferenceNetwork, SearchCell

__all__ = [
    "beta_regularizer_gradient",
    "darts_minus_forward",
    "dirichlet_kl_to_uniform_closed_form",
    "dirichlet_sample_by_gammas",
    "dirichlet_second_moments",
    "drnas_l2_anchor",
    "gdas_hard_weights",
    "gdas_forward",
    "simplex_projection_by_bisection",
    "random_ws_space_size",
    "random_ws_cells",
    "random_ws_forward",
    "fair_darts_forward",
    "zero_one_loss_and_gradient",
    "fair_darts_parse",
]


def simplex_projection_by_bisection(values: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """Each row of ``values`` (rows, n) projected onto the simplex: ``max(v - theta, 0)`` whose sum is 1,
    ``theta`` bisected between ``min(v) - 1`` (sum >= 1) and ``max(v)`` (sum 0)."""
    rows = values.to(torch.float64)
    low = rows.min(dim=1).values - 1.0
    high = rows.max(dim=1).values
    for _ in range(iterations):
        middle = (low + high) / 2
        total = (rows - middle[:, None]).clamp_min(0.0).sum(dim=1)
        low = torch.where(total > 1.0, middle, low)
        high = torch.where(total > 1.0, high, middle)
    return (rows - ((low + high) / 2)[:, None]).clamp_min(0.0).to(values.dtype)


def beta_regularizer_gradient(alphas: torch.Tensor, lam: float) -> torch.Tensor:
    """d/dalpha of ``lam * mean over edges of log(sum_k exp(alpha_ek))``, written out: ``(edges, ops)``."""
    exp = torch.exp(alphas - alphas.max(dim=1, keepdim=True).values)
    return lam * (exp / exp.sum(dim=1, keepdim=True)) / alphas.shape[0]


def gdas_hard_weights(
    alphas: torch.Tensor, gumbels: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' straight-through sample: ``(hard weights (edges, ops), sampled index (edges,))``."""
    logits = (alphas.log_softmax(dim=1) + gumbels) / tau
    probs = F.softmax(logits, dim=1)
    index = probs.max(-1, keepdim=True)[1]
    one_h = torch.zeros_like(logits).scatter_(-1, index, 1.0)
    return one_h - probs.detach() + probs, index.squeeze(-1)


def _gdas_cell(cell: SearchCell, s0: torch.Tensor, s1: torch.Tensor, hard: torch.Tensor, index: torch.Tensor):
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    offset = 0
    for _ in range(cell.steps):
        terms = []
        for j, h in enumerate(states):
            k = int(index[offset + j])
            terms.append(cell.edges[offset + j].ops[k](h) * hard[offset + j][k])
        offset += len(states)
        states.append(sum(terms))
    return torch.cat(states[-cell.steps :], dim=1)


def gdas_forward(
    model: ReferenceNetwork, x: torch.Tensor, gumbels: tuple[torch.Tensor, torch.Tensor], tau: float
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Logits of a GDAS forward with the given ``(normal, reduce)`` Gumbel noise, and the hard weights."""
    hard_normal, index_normal = gdas_hard_weights(model.alphas_normal, gumbels[0], tau)
    hard_reduce, index_reduce = gdas_hard_weights(model.alphas_reduce, gumbels[1], tau)
    s0 = s1 = model.stem(x)
    for cell in model.cells:
        if cell.reduction:
            s0, s1 = s1, _gdas_cell(cell, s0, s1, hard_reduce, index_reduce)
        else:
            s0, s1 = s1, _gdas_cell(cell, s0, s1, hard_normal, index_normal)
    pooled = model.global_pooling(s1)
    return model.classifier(pooled.view(pooled.size(0), -1)), (hard_normal, hard_reduce)


# --------------------------------------------------------------------------------------------- DrNAS


def _concentration(alphas: torch.Tensor) -> torch.Tensor:
    """``elu(alpha) + 1`` piecewise: ``alpha + 1`` for ``alpha > 0``, ``exp(alpha)`` otherwise."""
    return torch.where(alphas > 0, alphas + 1.0, torch.exp(alphas.clamp_max(0.0)))


def dirichlet_sample_by_gammas(alphas: torch.Tensor) -> torch.Tensor:
    """One sample of ``Dirichlet(elu(alpha) + 1)`` per row, as normalized ``Gamma(c, 1)`` draws from the
    global generator (reparameterized: the gradient flows through the Gamma's pathwise derivative)."""
    concentration = _concentration(alphas)
    gammas = torch.distributions.Gamma(concentration, torch.ones_like(concentration)).rsample()
    return gammas / gammas.sum(dim=-1, keepdim=True)


def dirichlet_second_moments(alphas: torch.Tensor) -> torch.Tensor:
    """``E[w_k ** 2]`` under ``Dirichlet(c)``, ``c = elu(alpha) + 1``: ``c_k (c_k + 1) / (c0 (c0 + 1))``."""
    concentration = _concentration(alphas)
    total = concentration.sum(dim=-1, keepdim=True)
    return concentration * (concentration + 1.0) / (total * (total + 1.0))


def drnas_l2_anchor(alphas: list[torch.Tensor], scale: float) -> torch.Tensor:
    """``scale / 2 * sum(alpha ** 2)`` over the tensors: the gradient ``scale * alpha`` is what Adam's
    (coupled) weight decay ``scale`` adds, the authors' L2 option."""
    return scale / 2 * sum((alpha**2).sum() for alpha in alphas)


def dirichlet_kl_to_uniform_closed_form(alphas: torch.Tensor) -> torch.Tensor:
    """``sum over rows of KL(Dirichlet(c) || Dirichlet(1))`` in float64, ``c = elu(alpha) + 1``:
    ``lgamma(c0) - sum lgamma(c_k) - lgamma(K) + sum (c_k - 1) (digamma(c_k) - digamma(c0))``."""
    c = _concentration(alphas.to(torch.float64))
    total = c.sum(dim=-1)
    ops = torch.tensor(float(c.shape[-1]), dtype=torch.float64)
    per_row = (
        torch.lgamma(total)
        - torch.lgamma(c).sum(dim=-1)
        - torch.lgamma(ops)
        + ((c - 1.0) * (torch.digamma(c) - torch.digamma(total)[..., None])).sum(dim=-1)
    )
    return per_row.sum()


# --------------------------------------------------------------------------------------------- DARTS-


def _darts_minus_cell(
    cell: SearchCell, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, beta: float
) -> torch.Tensor:
    skip = PRIMITIVES.index("skip_connect")
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    offset = 0
    for _ in range(cell.steps):
        terms = []
        for j, h in enumerate(states):
            edge = cell.edges[offset + j]
            mixed = sum(w * op(h) for w, op in zip(weights[offset + j], edge.ops, strict=True))
            terms.append(mixed + beta * edge.ops[skip](h))  # the edge's skip: identity or FactorizedReduce
        offset += len(states)
        states.append(sum(terms))
    return torch.cat(states[-cell.steps :], dim=1)


def darts_minus_forward(model: ReferenceNetwork, x: torch.Tensor, beta: float) -> torch.Tensor:
    """Logits of the DARTS reference network with the auxiliary skip ``beta * skip(x)`` on every edge."""
    s0 = s1 = model.stem(x)
    for cell in model.cells:
        alphas = model.alphas_reduce if cell.reduction else model.alphas_normal
        s0, s1 = s1, _darts_minus_cell(cell, s0, s1, F.softmax(alphas, dim=-1), beta)
    pooled = model.global_pooling(s1)
    return model.classifier(pooled.view(pooled.size(0), -1))
def random_ws_space_size(internal_nodes: int, operations: int) -> int:
    """How many cells the DARTS space holds: node ``i`` picks 2 of its ``i + 2`` inputs (unordered) and
    one of ``operations`` operations for each, independently of the other nodes."""
    return math.prod(math.comb(node + 2, 2) * operations**2 for node in range(internal_nodes))


def random_ws_cells(internal_nodes: int, operations: list[int]) -> list[tuple[tuple[int, int], ...]]:
    """Every cell of the space as ``((op, input), ...)``, two genes per node, the lower input first."""
    per_node = [
        [
            ((first_op, low), (second_op, high))
            for low, high in itertools.combinations(range(node + 2), 2)
            for first_op in operations
            for second_op in operations
        ]
        for node in range(internal_nodes)
    ]
    return [tuple(gene for pair in choice for gene in pair) for choice in itertools.product(*per_node)]


def _drawn_cell(cell: SearchCell, s0: torch.Tensor, s1: torch.Tensor, genes) -> torch.Tensor:
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    offset = 0
    for node in range(cell.steps):
        terms = [cell.edges[offset + j].ops[op](states[j]) for op, j in genes[2 * node : 2 * node + 2]]
        offset += len(states)
        states.append(terms[0] + terms[1])
    return torch.cat(states[-cell.steps :], dim=1)


def random_ws_forward(model: ReferenceNetwork, x: torch.Tensor, normal, reduce) -> torch.Tensor:
    """Logits of the reference supernet running only the drawn cells ``normal`` and ``reduce``."""
    s0 = s1 = model.stem(x)
    for cell in model.cells:
        s0, s1 = s1, _drawn_cell(cell, s0, s1, reduce if cell.reduction else normal)
    pooled = model.global_pooling(s1)
    return model.classifier(pooled.view(pooled.size(0), -1))


def fair_darts_forward(model: ReferenceNetwork, x: torch.Tensor) -> torch.Tensor:
    """Logits of the reference supernet with sigmoid operation weights instead of softmax."""
    s0 = s1 = model.stem(x)
    for cell in model.cells:
        alphas = model.alphas_reduce if cell.reduction else model.alphas_normal
        s0, s1 = s1, cell(s0, s1, torch.sigmoid(alphas))
    pooled = model.global_pooling(s1)
    return model.classifier(pooled.view(pooled.size(0), -1))


def zero_one_loss_and_gradient(
    alphas: list[torch.Tensor], weight: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``-weight * mean((s - 0.5)^2)`` over all entries, ``s = sigmoid(alpha)``, and its gradient on each
    tensor in closed form: ``-weight * 2 (s - 0.5) s (1 - s) / count``."""
    count = sum(alpha.numel() for alpha in alphas)
    squares = sum(((1 / (1 + torch.exp(-alpha)) - 0.5) ** 2).sum() for alpha in alphas)
    value = -weight * squares / count
    grads = []
    for alpha in alphas:
        s = 1 / (1 + torch.exp(-alpha))
        grads.append(-weight * 2 * (s - 0.5) * s * (1 - s) / count)
    return value, grads


def fair_darts_parse(
    weights: list[list[float]],
    primitives: list[str],
    steps: int,
    threshold: float,
    min_inputs: int = 0,
) -> list[tuple[str, int]]:
    """The threshold parse of one cell kind's sigmoid weights (rows = edges, node by node); the first
    ``min_inputs`` of a node's edges by strength are kept whatever their weights (0: the authors')."""
    genes: list[tuple[str, int]] = []
    start = 0
    for node in range(steps):
        rows = weights[start : start + node + 2]
        strength = []
        for j, row in enumerate(rows):
            value, op = max((row[k], -k) for k, name in enumerate(primitives) if name != "none")
            strength.append((value, -j, primitives[-op]))
        strength.sort(reverse=True)  # strongest first; the lower input on a tie
        kept = [
            (name, -negative)
            for rank, (value, negative, name) in enumerate(strength)
            if value > threshold or rank < min_inputs
        ][:2]
        dropped = [("none", -negative) for value, negative, _ in strength[len(kept) : 2]]
        genes.extend(kept + dropped)
        start += node + 2
    return genes

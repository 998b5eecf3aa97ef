"""Parameter and multiply-add budgets of a search: the cost of every operation on every edge, the
differentiable expected cost the architecture step is penalised by, and the repair that makes the
derived genotype fit.

Costs are those of the network that will be trained from the genotype
(:class:`~darts_core.nn.genotype_network.GenotypeNetwork` with the budget's ``cells`` and
``init_channels``), counted exactly as a training reports them: parameters without the auxiliary head,
multiply-adds of one eval-mode forward of one image
(:func:`~darts_core.nn.multiply_adds.count_multiply_adds`).
In a DARTS network every cell concatenates all its nodes, so the widths, the preprocessing, the stem
and the classifier do not depend on the genotype: a genotype costs a fixed ``base`` plus the sum of its
chosen operations, and each operation on each edge of each cell kind is counted once, on the ``meta``
device (shapes only), when the table is built.

The expected cost (:meth:`CostTable.expected`) weighs each edge's operations by their softmaxed alphas
(or the search method's operation weights, e.g. DrNAS's Dirichlet mean), renormalised without
``none`` (derivation never keeps it), and counts each node's incoming edges at ``2 / incoming`` (a
genotype keeps two of them). The penalty (:func:`budget_penalty`) is a hinge on the
relative excess, ``weight * sum(max(0, expected / budget - 1))``, zero inside the budget, as NNI's
"positive" cost mode; it pulls the alphas toward cheaper operations only while the expectation is over.

The repair (:func:`repair_genotype`) is the hard guarantee: while the genotype is over a budget, it makes
the single change of one kept ``(operation, input)`` of one node that loses the least architecture
weight per unit of cost saved (cost measured as the sum of both budgets' fractions), until the genotype
fits. Each change lowers that cost, so it ends, at worst at the cheapest genotype of the search space;
:meth:`CostTable.check_feasible` refuses beforehand a budget that not even that genotype meets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from darts_core.nn.genotype_network import GenotypeNetwork, _discrete_op
from darts_core.nn.layout import _is_reduction
from darts_core.nn.multiply_adds import count_multiply_adds
from darts_core.search.derive import _edge_weights, _operation_weights
from darts_core.spec.genotype import _NONE, Gene, Genotype, num_edges
from darts_core.spec.search_spec import ConstraintsConfig, SearchConfig
from darts_core.spec.training_spec import TrainingNetworkConfig

if TYPE_CHECKING:
    from darts_core.nn.search_network import SearchNetwork

__all__ = ["Budget", "CostTable", "SearchBudget", "budget_penalty", "cost_table_for", "repair_genotype"]

_KINDS = ("normal", "reduce")
#: A search method's operation weights of one cell kind's raw alphas ``(edges, ops) -> (edges, ops)``.
WeightsOf = Callable[[Tensor], Tensor]
#: The two costs, in the order of a cost tensor's last axis.
COSTS = ("parameters", "multiply_adds")


@dataclass(frozen=True)
class Budget:
    """At most ``parameters`` and ``multiply_adds`` (either may be ``None``: no limit)."""

    parameters: int | None = None
    multiply_adds: int | None = None

    @classmethod
    def of(cls, constraints: ConstraintsConfig) -> Budget:
        return cls(constraints.max_parameters, constraints.max_multiply_adds)

    def limits(self) -> tuple[float, float]:
        """The limits in :data:`COSTS` order, ``inf`` where there is none."""
        parameters, multiply_adds = (
            math.inf if limit is None else float(limit) for limit in (self.parameters, self.multiply_adds)
        )
        return parameters, multiply_adds

    def fits(self, cost: Sequence[float]) -> bool:
        return all(value <= limit for value, limit in zip(cost, self.limits(), strict=True))


def _halved(height: int, width: int) -> tuple[int, int]:
    """The size after a stride-2 operation (padding keeps ``ceil``)."""
    return -(-height // 2), -(-width // 2)


def _edge_index(node: int, source: int) -> int:
    """The edge of ``node`` from state ``source``, numbered node by node as the alphas' rows."""
    return num_edges(node) + source


def _op_cost(name: str, channels: int, stride: int, height: int, width: int) -> tuple[int, int]:
    """Parameters and multiply-adds of one chosen operation reading a ``channels x height x width`` state."""
    if name == _NONE:
        return 0, 0
    with torch.device("meta"):
        op = _discrete_op(name, channels, stride)
    parameters = sum(p.numel() for p in op.parameters())
    if parameters == 0:  # pools and the identity: nothing counted (no Conv2d or Linear)
        return 0, 0
    return parameters, count_multiply_adds(op, (channels, height, width))


@dataclass(frozen=True)
class CostTable:
    """Exact costs of the network trained from a genotype of this search space.

    Attributes:
        primitives: the search's op names, the columns of ``ops``.
        internal_nodes: nodes per cell.
        base: ``(parameters, multiply_adds)`` of everything but the edges' operations.
        ops: per cell kind, ``(num_edges, len(primitives), 2)`` float64: the cost of each operation on
            each edge, summed over every cell of that kind (``none`` costs nothing).
    """

    primitives: tuple[str, ...]
    internal_nodes: int
    base: tuple[int, int]
    ops: dict[str, Tensor]

    @classmethod
    def build(
        cls,
        primitives: Sequence[str],
        internal_nodes: int,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        init_channels: int,
        cells: int,
    ) -> CostTable:
        """The table for images of ``input_shape`` (C x H x W) in ``num_classes`` classes."""
        primitives = tuple(primitives)
        channels_in, height, width = (int(size) for size in input_shape)
        edges = num_edges(internal_nodes)
        ops = {kind: torch.zeros(edges, len(primitives), 2, dtype=torch.float64) for kind in _KINDS}
        cache: dict[tuple[str, int, int, int, int], tuple[int, int]] = {}
        channels = init_channels
        for index in range(cells):
            reduction = _is_reduction(index, cells)
            if reduction:
                channels *= 2
            kind = "reduce" if reduction else "normal"
            for node in range(internal_nodes):
                for source in range(node + 2):
                    stride = 2 if reduction and source < 2 else 1
                    # The cell's inputs have the size before its reduction, its nodes the size after.
                    size = (height, width) if source < 2 or not reduction else _halved(height, width)
                    for column, name in enumerate(primitives):
                        key = (name, channels, stride, *size)
                        if key not in cache:
                            cache[key] = _op_cost(name, channels, stride, *size)
                        edge = _edge_index(node, source)
                        ops[kind][edge, column] += torch.tensor(cache[key], dtype=torch.float64)
            if reduction:
                height, width = _halved(height, width)
        table = cls(primitives, internal_nodes, (0, 0), ops)
        reference = table.cheapest()
        with torch.device("meta"):
            network = GenotypeNetwork(
                reference, channels_in, num_classes, init_channels=init_channels, cells=cells
            )
        parameters = sum(p.numel() for p in network.parameters())
        shape = (channels_in, int(input_shape[1]), int(input_shape[2]))
        multiply_adds = count_multiply_adds(network, shape)
        chosen = table.cost(reference)
        base = (parameters - round(chosen[0]), multiply_adds - round(chosen[1]))
        return cls(primitives, internal_nodes, base, ops)

    def _column(self, name: str) -> int:
        return self.primitives.index(name)

    def cost(self, genotype: Genotype) -> tuple[float, float]:
        """The exact ``(parameters, multiply_adds)`` of the network trained from ``genotype``."""
        total = [float(self.base[0]), float(self.base[1])]
        for kind in _KINDS:
            genes: Sequence[Gene] = getattr(genotype, kind)
            for slot, (name, source) in enumerate(genes):
                if name == _NONE:  # a dropped input (FairDARTS): a zero, nothing to count
                    continue
                edge_cost = self.ops[kind][_edge_index(slot // 2, source), self._column(name)]
                total[0] += float(edge_cost[0])
                total[1] += float(edge_cost[1])
        return total[0], total[1]

    def expected(
        self, alphas_normal: Tensor, alphas_reduce: Tensor, weights_of: WeightsOf | None = None
    ) -> Tensor:
        """The expected ``(parameters, multiply_adds)`` under the alphas (raw, ``(edges, primitives)``),
        differentiable with respect to them; a ``(2,)`` tensor of the alphas' dtype and device.
        ``weights_of``: the operation weights of a cell kind's alphas (``None``: softmax)."""
        total = torch.tensor(self.base, dtype=alphas_normal.dtype, device=alphas_normal.device)
        keep = torch.tensor([name != _NONE for name in self.primitives], device=alphas_normal.device)
        nodes = range(self.internal_nodes)
        share = torch.cat([torch.full((node + 2,), 2.0 / (node + 2), dtype=torch.float64) for node in nodes])
        share = share.to(dtype=alphas_normal.dtype, device=alphas_normal.device)
        for kind, alphas in zip(_KINDS, (alphas_normal, alphas_reduce), strict=True):
            weights = (torch.softmax(alphas, dim=-1) if weights_of is None else weights_of(alphas)) * keep
            weights = weights / weights.sum(dim=-1, keepdim=True)
            costs = self.ops[kind].to(dtype=alphas.dtype, device=alphas.device)
            per_edge = torch.einsum("ep,epc->ec", weights, costs)
            total = total + (share[:, None] * per_edge).sum(dim=0)
        return total

    def cheapest(self, budget: Budget | None = None) -> Genotype:
        """The genotype of least cost: by the sum of ``budget``'s fractions, or by parameters when no
        budget (or one without limits) is given. Two distinct inputs per node, as derivation keeps."""
        scale = _scale(budget)
        genes: dict[str, list[Gene]] = {}
        for kind in _KINDS:
            costs = (self.ops[kind] * scale).sum(dim=-1)
            genes[kind] = []
            for node in range(self.internal_nodes):
                options = sorted(
                    (float(costs[_edge_index(node, source), column]), source, column)
                    for source in range(node + 2)
                    for column, name in enumerate(self.primitives)
                    if name != _NONE
                )
                best_per_source: dict[int, tuple[float, int]] = {}
                for value, source, column in options:
                    best_per_source.setdefault(source, (value, column))
                two = sorted(best_per_source.items(), key=lambda item: (item[1][0], item[0]))[:2]
                genes[kind] += [(self.primitives[column], source) for source, (_, column) in two]
        concat = tuple(range(2, 2 + self.internal_nodes))
        return Genotype(
            normal=tuple(genes["normal"]),
            normal_concat=concat,
            reduce=tuple(genes["reduce"]),
            reduce_concat=concat,
            primitives=list(self.primitives),
        )

    def check_feasible(self, budget: Budget) -> None:
        """Raise ValueError naming ``constraints.max_*`` and the least cost it would need when not even
        the cheapest genotype of the search space fits ``budget``."""
        limits = (budget.parameters, budget.multiply_adds)
        for position, (field, limit) in enumerate(zip(COSTS, limits, strict=True)):
            if limit is None:
                continue
            minimum = self.cost(self.cheapest(Budget(**{field: limit})))[position]
            if minimum > limit:
                raise ValueError(
                    f"constraints.max_{field}: {limit} is below the cheapest genotype of this search space "
                    f"({round(minimum)} {field.replace('_', '-')}); raise it to at least {round(minimum)}"
                )
        cheapest = self.cheapest(budget)
        if not budget.fits(self.cost(cheapest)):
            parameters, multiply_adds = self.cost(cheapest)
            raise ValueError(
                "constraints: no genotype of this search space meets max_parameters and max_multiply_adds "
                f"together (the cheapest by both has {round(parameters)} parameters and "
                f"{round(multiply_adds)} multiply-adds)"
            )


def _scale(budget: Budget | None) -> Tensor:
    """Per cost, the factor that turns it into a fraction of its budget (parameters alone when none)."""
    if budget is None or (budget.parameters is None and budget.multiply_adds is None):
        return torch.tensor([1.0, 0.0], dtype=torch.float64)
    limits = (budget.parameters, budget.multiply_adds)
    return torch.tensor([0.0 if limit is None else 1.0 / limit for limit in limits], dtype=torch.float64)


def budget_penalty(
    table: CostTable,
    budget: Budget,
    weight: float,
    alphas: Sequence[Tensor],
    weights_of: WeightsOf | None = None,
) -> Tensor:
    """``weight * sum over the budgets of max(0, expected / limit - 1)``: a 0-d tensor, differentiable
    with respect to ``alphas`` (``alphas_normal, alphas_reduce``, then any betas, which it ignores)."""
    expected = table.expected(alphas[0], alphas[1], weights_of)
    penalty = expected.new_zeros(())
    for position, limit in enumerate((budget.parameters, budget.multiply_adds)):
        if limit is not None:
            penalty = penalty + torch.relu(expected[position] / limit - 1.0)
    return weight * penalty


def repair_genotype(
    genotype: Genotype,
    table: CostTable,
    budget: Budget,
    alphas_normal: Tensor,
    alphas_reduce: Tensor,
    *,
    betas_normal: Tensor | None = None,
    betas_reduce: Tensor | None = None,
    weights_of: WeightsOf | None = None,
) -> Genotype:
    """``genotype`` itself when it fits ``budget``; else the repaired genotype that does (module docstring).

    The architecture weight of a kept ``(operation, input)`` is its softmaxed alpha (``weights_of``'s
    weight when given; times its edge's softmaxed beta with PC-DARTS edge normalization), as derivation
    ranks them.

    Raises:
        ValueError: not even the cheapest genotype fits (see :meth:`CostTable.check_feasible`).
    """
    if budget.fits(table.cost(genotype)):
        return genotype
    table.check_feasible(budget)
    shape = (num_edges(table.internal_nodes), len(table.primitives))
    weights = {
        "normal": _operation_weights("alphas_normal", alphas_normal, shape, weights_of),
        "reduce": _operation_weights("alphas_reduce", alphas_reduce, shape, weights_of),
    }
    if betas_normal is not None and betas_reduce is not None:
        for kind, betas in (("normal", betas_normal), ("reduce", betas_reduce)):
            edge_weights = _edge_weights(f"betas_{kind}", betas, table.internal_nodes)
            weights[kind] = weights[kind] * edge_weights[:, None]
    scale = _scale(budget)
    unit_cost = {kind: (table.ops[kind] * scale).sum(dim=-1) for kind in _KINDS}
    genes = {kind: list(getattr(genotype, kind)) for kind in _KINDS}

    def current() -> Genotype:
        return Genotype(
            normal=tuple(genes["normal"]),
            normal_concat=genotype.normal_concat,
            reduce=tuple(genes["reduce"]),
            reduce_concat=genotype.reduce_concat,
            primitives=list(table.primitives),
        )

    while not budget.fits(table.cost(current())):
        best: tuple[float, str, int, Gene] | None = None
        for kind in _KINDS:
            for slot, (name, source) in enumerate(genes[kind]):
                node = slot // 2
                other_source = genes[kind][slot ^ 1][1]
                edge, column = _edge_index(node, source), table._column(name)
                for new_source in range(node + 2):
                    if new_source == other_source:
                        continue
                    new_edge = _edge_index(node, new_source)
                    for new_column, new_name in enumerate(table.primitives):
                        if new_name == _NONE:
                            continue
                        saved = float(unit_cost[kind][edge, column] - unit_cost[kind][new_edge, new_column])
                        if saved <= 0:
                            continue
                        lost = float(weights[kind][edge, column] - weights[kind][new_edge, new_column])
                        ratio = lost / saved
                        if best is None or ratio < best[0]:
                            best = (ratio, kind, slot, (new_name, new_source))
        if best is None:  # the cheapest genotype, and check_feasible said it fits: cannot happen
            raise ValueError("constraints: the genotype cannot be repaired to fit the budget")
        _, kind, slot, gene = best
        genes[kind][slot] = gene
    return current()


def cost_table_for(config: SearchConfig, input_shape: Sequence[int], num_classes: int) -> CostTable:
    """The cost table of ``config``'s search space on ``constraints.network`` (``null`` fields: the
    training spec's defaults), for images of ``input_shape`` (C x H x W)."""
    defaults, chosen = TrainingNetworkConfig(), config.constraints.network
    return CostTable.build(
        config.search_space.primitives,
        config.search_space.internal_nodes,
        input_shape,
        num_classes,
        init_channels=chosen.init_channels if chosen.init_channels is not None else defaults.init_channels,
        cells=chosen.cells if chosen.cells is not None else defaults.cells,
    )


@dataclass(frozen=True)
class SearchBudget:
    """A search's ``constraints`` as :func:`~darts_core.search.loop.run_search` uses them: the penalty of
    its architecture step, the genotypes that fit, and what each epoch reports."""

    table: CostTable
    budget: Budget
    weight: float
    #: The search method's operation weights (``None``: softmax), for the expected cost and the repair.
    weights_of: WeightsOf | None = None

    @classmethod
    def of(cls, config: SearchConfig, dataset: Any, weights_of: WeightsOf | None = None) -> SearchBudget:
        """Raises ValueError (naming the field) when not even the cheapest genotype fits."""
        table = cost_table_for(config, tuple(dataset.x_train.shape[1:]), dataset.num_classes)
        budget = Budget.of(config.constraints)
        table.check_feasible(budget)
        return cls(table, budget, config.constraints.penalty_weight, weights_of)

    def penalty(self, alphas: Sequence[Tensor]) -> Tensor:
        return budget_penalty(self.table, self.budget, self.weight, alphas, self.weights_of)

    def genotype(self, network: SearchNetwork) -> Genotype:
        """The DARTS genotype of the alphas, repaired to fit the budget when it does not."""
        betas = {}
        if network.betas_normal is not None and network.betas_reduce is not None:
            betas = {
                "betas_normal": network.betas_normal.detach(),
                "betas_reduce": network.betas_reduce.detach(),
            }
        return repair_genotype(
            network.genotype(),
            self.table,
            self.budget,
            network.alphas_normal.detach(),
            network.alphas_reduce.detach(),
            **betas,
            weights_of=self.weights_of,
        )

    def report(self, network: SearchNetwork, genotype: Genotype) -> dict[str, float]:
        parameters, multiply_adds = self.table.cost(genotype)
        with torch.no_grad():
            expected = self.table.expected(
                network.alphas_normal.double(), network.alphas_reduce.double(), self.weights_of
            )
        return {
            "parameters": round(parameters),
            "multiply_adds": round(multiply_adds),
            "expected_parameters": float(expected[0]),
            "expected_multiply_adds": float(expected[1]),
        }

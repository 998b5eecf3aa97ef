"""Genotypes drawn uniformly from a DARTS search space: the random-search baseline of a study.

As Li & Talwalkar (UAI 2019) sample DARTS architectures: for every internal node of each cell, two
distinct inputs drawn uniformly from the states before it, and for each of those edges an operation drawn
uniformly from the candidates other than ``none`` (a chosen operation is never ``none``). The
draw is a pure function of the seed, so any process computes the same genotype again (a study's
orchestrator keeps no state of its own). Imports no torch. (The ``random_ws`` search method draws from the
same space per batch with torch's checkpointed generator: :mod:`darts_core.search.methods.random_ws`.)

With ``accept`` (e.g. "within the search's parameter budget") the draw is rejection sampling: genotypes
are drawn one after another from the seed's generator until one is accepted, which is uniform over the
accepted part of the space; the first draw is the unconstrained one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from darts_core.spec.genotype import Gene, Genotype

__all__ = ["MAX_DRAWS", "random_genotype"]

#: The most genotypes one constrained draw tries before it gives up (a budget almost nothing fits).
MAX_DRAWS = 10_000


def _random_cell(rng: random.Random, operations: Sequence[str], internal_nodes: int) -> list[Gene]:
    genes: list[Gene] = []
    for node in range(internal_nodes):
        for source in sorted(rng.sample(range(node + 2), 2)):
            genes.append((rng.choice(operations), source))
    return genes


def random_genotype(
    primitives: Sequence[str],
    internal_nodes: int,
    *,
    seed: int | str,
    accept: Callable[[Genotype], bool] | None = None,
    max_draws: int = MAX_DRAWS,
) -> Genotype:
    """A genotype of the space ``primitives`` x ``internal_nodes``, uniformly at random for ``seed``
    (uniformly among those ``accept`` takes, when given).

    Raises:
        ValueError: ``primitives`` holds no operation but ``none``, ``internal_nodes`` is below 1, or
            ``accept`` took none of ``max_draws`` draws.
    """
    operations = [name for name in primitives if name != "none"]
    if not operations:
        raise ValueError(f"primitives: no operation but 'none' to draw from, got {list(primitives)}")
    if internal_nodes < 1:
        raise ValueError(f"internal_nodes must be at least 1, got {internal_nodes}")
    if max_draws < 1:
        raise ValueError(f"max_draws must be at least 1, got {max_draws}")
    rng = random.Random(f"darts_core.random_genotype:{seed}")  # str seeds hash stably (SHA-512)
    for _ in range(max_draws):
        normal = _random_cell(rng, operations, internal_nodes)
        reduce = _random_cell(rng, operations, internal_nodes)
        genotype = Genotype(normal=tuple(normal), reduce=tuple(reduce), primitives=primitives)
        if accept is None or accept(genotype):
            return genotype
    raise ValueError(f"no genotype of {max_draws} drawn at random was accepted (seed {seed!r})")

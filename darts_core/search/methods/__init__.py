"""Search methods: what each method changes in the DARTS step, one small strategy object per method.

:class:`~darts_core.search.methods.base.SearchMethod` is the interface the supernet's forwards and the
bilevel step (:class:`~darts_core.search.bilevel.DartsSearch`) call; :func:`method_for` builds the one a
spec's ``method`` section names (:mod:`darts_core.spec.method_spec`).
"""

from __future__ import annotations

from collections.abc import Sequence

from darts_core.search.methods.base import SearchMethod
from darts_core.search.methods.beta_darts import BetaDarts, beta_regularizer
from darts_core.search.methods.darts_minus import DartsMinus, with_auxiliary_skip
from darts_core.search.methods.drnas import Drnas, dirichlet_mean, dirichlet_sample
from darts_core.search.methods.fair_darts import FairDarts, threshold_genotype, zero_one_loss
from darts_core.search.methods.gdas import Gdas, gumbel_straight_through
from darts_core.search.methods.random_ws import RandomWs
from darts_core.search.methods.sdarts import Sdarts, project_to_simplex
from darts_core.spec.method_spec import (
    BetaDartsMethod,
    DartsMinusMethod,
    DrnasMethod,
    FairDartsMethod,
    GdasMethod,
    MethodConfig,
    RandomWsMethod,
    SdartsAdvMethod,
    SdartsRsMethod,
)

__all__ = [
    "SearchMethod",
    "BetaDarts",
    "Gdas",
    "Sdarts",
    "beta_regularizer",
    "gumbel_straight_through",
    "method_for",
    "project_to_simplex",
    "DartsMinus",
    "Drnas",
    "dirichlet_mean",
    "dirichlet_sample",
    "with_auxiliary_skip",
    "RandomWs",
    "FairDarts",
    "threshold_genotype",
    "zero_one_loss",
]


def method_for(config: MethodConfig, primitives: Sequence[str] = ()) -> SearchMethod:
    """The strategy of a ``method`` section (``darts``: the base class, which changes nothing).

    ``primitives``: the search space's operations, in the alphas' column order (DARTS- finds its
    ``skip_connect`` column there)."""
    if isinstance(config, GdasMethod):
        return Gdas(tau_max=config.tau_max, tau_min=config.tau_min)
    if isinstance(config, BetaDartsMethod):
        return BetaDarts(lambda_start=config.lambda_start, lambda_end=config.lambda_end)
    if isinstance(config, SdartsRsMethod):
        return Sdarts(config.epsilon_start, config.epsilon_end)
    if isinstance(config, SdartsAdvMethod):
        return Sdarts(config.epsilon_start, config.epsilon_end, attack_steps=config.attack_steps)
    if isinstance(config, DrnasMethod):
        return Drnas(config.regularizer, config.regularizer_scale)
    if isinstance(config, DartsMinusMethod):
        if "skip_connect" not in primitives:
            raise ValueError("method darts_minus needs 'skip_connect' among the primitives")
        return DartsMinus(list(primitives).index("skip_connect"), config.beta_start, config.beta_end)
    if isinstance(config, RandomWsMethod):
        return RandomWs(config.candidates, config.finalists, config.score_batches, config.epoch_candidates)
    if isinstance(config, FairDartsMethod):
        return FairDarts(config.zero_one_weight, config.threshold, config.min_inputs)
    return SearchMethod()

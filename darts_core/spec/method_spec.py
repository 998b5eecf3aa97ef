"""The ``method`` section of a search spec: which search method runs and its hyperparameters (torch-free).

A discriminated union on ``name``; each section holds its paper's hyperparameters as bounded fields::

    {"method": {"name": "darts"}}                              # the default: DARTS (Liu et al., 2019)
    {"method": {"name": "gdas", "tau_max": 10.0, "tau_min": 0.1}}

The methods themselves are :mod:`darts_core.search.methods`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

__all__ = [
    "BetaDartsMethod",
    "DartsMethod",
    "DartsMinusMethod",
    "DrnasMethod",
    "GdasMethod",
    "SdartsAdvMethod",
    "SdartsRsMethod",
    "RandomWsMethod",
    "FairDartsMethod",
    "MethodConfig",
    "METHOD_NAMES",
    "PERTURBING_METHODS",
    "SOFTMAX_METHODS",
    "SKIP_AUXILIARY_METHODS",
    "DIRICHLET_METHODS",
    "ARCHITECTURE_FREE_METHODS",
    "OWN_DERIVATION_METHODS",
]


class _Method(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DartsMethod(_Method):
    """``darts``: softmax-mixed edges, first or second order (``training.order``); PC-DARTS partial channels
    and edge normalization compose with it."""

    name: Literal["darts"] = "darts"


class GdasMethod(_Method):
    """``gdas`` (Dong & Yang, CVPR 2019): every forward samples one operation per edge (Gumbel-softmax,
    straight-through hard one-hot), one sample per cell kind, and computes only the sampled operations.
    The temperature falls linearly from ``tau_max`` (first epoch) to ``tau_min`` (last epoch)."""

    name: Literal["gdas"]
    tau_max: Annotated[float, Strict()] = Field(default=10.0, gt=0.0, le=1000.0)
    tau_min: Annotated[float, Strict()] = Field(default=0.1, gt=0.0, le=1000.0)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> GdasMethod:
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min ({self.tau_min:g}) must be <= tau_max ({self.tau_max:g})")
        return self


class BetaDartsMethod(_Method):
    """``beta_darts`` (Ye et al., CVPR 2022): the architecture loss adds ``lambda`` times the Beta
    regularizer, the mean over a cell kind's edges of ``logsumexp(alpha)`` (summed over the two kinds);
    ``lambda`` grows linearly from ``lambda_start`` (first epoch) to ``lambda_end`` (last epoch). Softmax
    mixing as DARTS: composes with second order and PC-DARTS."""

    name: Literal["beta_darts"]
    lambda_start: Annotated[float, Strict()] = Field(default=0.0, ge=0.0, le=1000.0)
    lambda_end: Annotated[float, Strict()] = Field(default=50.0, ge=0.0, le=1000.0)


class _SdartsMethod(_Method):
    epsilon_start: Annotated[float, Strict()] = Field(default=0.03, ge=0.0, le=1.0)
    epsilon_end: Annotated[float, Strict()] = Field(default=0.3, ge=0.0, le=1.0)


class SdartsRsMethod(_SdartsMethod):
    """``sdarts_rs`` (Chen & Hsieh, ICML 2020): the weight step mixes by ``softmax(alpha)`` plus uniform
    noise in ``[-eps, eps]``, projected onto the simplex; ``eps`` ramps linearly from ``epsilon_start``
    to ``epsilon_end``; the architecture step is DARTS's (first order)."""

    name: Literal["sdarts_rs"]


class SdartsAdvMethod(_SdartsMethod):
    """``sdarts_adv``: as ``sdarts_rs`` with the perturbation an ``attack_steps``-step PGD attack on the
    train loss within the ``eps`` box."""

    name: Literal["sdarts_adv"]
    attack_steps: Annotated[int, Strict()] = Field(default=7, ge=1, le=50)


class DrnasMethod(_Method):
    """``drnas`` (Chen et al., ICLR 2021): every train-mode forward of both steps mixes by a sample of
    ``Dirichlet(elu(alpha) + 1)`` (pathwise gradient); the architecture loss adds ``regularizer_scale``
    times the ``regularizer``: ``"l2"``, half the squared norm of the alphas (the authors' Adam weight
    decay), or ``"kl"``, the KL divergence to the uniform ``Dirichlet(1)``. Validation, the reported
    alphas and the genotype use the Dirichlet mean. Composes with PC-DARTS partial channels and edge
    normalization (the paper searches with them), first order only."""

    name: Literal["drnas"]
    regularizer: Literal["l2", "kl"] = "l2"
    regularizer_scale: Annotated[float, Strict()] = Field(default=1e-3, ge=0.0, le=100.0)


class DartsMinusMethod(_Method):
    """``darts_minus`` (Chu et al., ICLR 2021, DARTS-): every edge adds ``beta`` times its skip connection
    (the edge's ``skip_connect`` operation: identity, or FactorizedReduce at stride 2) to the mixed
    operation; ``beta`` decays linearly from ``beta_start`` (first epoch) to ``beta_end`` (last epoch).
    The auxiliary skip is not an architecture choice: the alphas, their report and the genotype are
    DARTS's. Composes with second order, PC-DARTS partial channels and edge normalization."""

    name: Literal["darts_minus"]
    beta_start: Annotated[float, Strict()] = Field(default=1.0, ge=0.0, le=1.0)
    beta_end: Annotated[float, Strict()] = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _end_not_above_start(self) -> DartsMinusMethod:
        if self.beta_end > self.beta_start:
            raise ValueError(f"beta_end ({self.beta_end:g}) must be <= beta_start ({self.beta_start:g})")
        return self


class RandomWsMethod(_Method):
    """``random_ws`` (Li & Talwalkar, UAI 2019): random search with weight sharing. No alphas are trained
    (no architecture step): every weight step trains the shared weights of one architecture drawn
    uniformly from the DARTS genotype space (per node two distinct inputs, one non-``none`` operation
    each; only those run). After the last epoch ``candidates`` drawn architectures are scored on
    ``score_batches`` validation batches, the ``finalists`` best re-scored on the whole validation split,
    and the best of those is the genotype (the authors: 1000 candidates on one batch each, 10
    finalists). Each earlier epoch reports the best of ``epoch_candidates`` drawn architectures scored
    the same way (no re-scoring)."""

    name: Literal["random_ws"]
    candidates: Annotated[int, Strict()] = Field(default=1000, ge=1, le=10000)
    finalists: Annotated[int, Strict()] = Field(default=10, ge=1, le=1000)
    score_batches: Annotated[int, Strict()] = Field(default=1, ge=1, le=1000)
    epoch_candidates: Annotated[int, Strict()] = Field(default=10, ge=1, le=1000)

    @model_validator(mode="after")
    def _finalists_among_candidates(self) -> RandomWsMethod:
        if self.finalists > self.candidates:
            raise ValueError(f"finalists ({self.finalists}) must be <= candidates ({self.candidates})")
        return self


class FairDartsMethod(_Method):
    """``fair_darts`` (Chu et al., ECCV 2020): every operation weighs ``sigmoid(alpha)`` (no softmax),
    the architecture loss adds ``zero_one_weight`` times the zero-one loss ``-mean((sigmoid(alpha) -
    0.5)^2)`` (the authors' weight 10), and the genotype keeps, per node, the edges whose best
    operation's weight is above ``threshold`` (the authors' 0.85), at most two, and at least its
    ``min_inputs`` strongest (default 1; 0 is the authors' parse, which may drop every input): a dropped
    input is the gene ``("none", j)``. First order; no PC-DARTS, Hessian or budget."""

    name: Literal["fair_darts"]
    zero_one_weight: Annotated[float, Strict()] = Field(default=10.0, ge=0.0, le=1000.0)
    threshold: Annotated[float, Strict()] = Field(default=0.85, gt=0.0, lt=1.0)
    min_inputs: Annotated[int, Strict()] = Field(default=1, ge=0, le=2)


#: The ``method`` section: one of the methods, told apart by ``name``.
MethodConfig = Annotated[
    DartsMethod
    | GdasMethod
    | BetaDartsMethod
    | SdartsRsMethod
    | SdartsAdvMethod
    | DrnasMethod
    | DartsMinusMethod
    | RandomWsMethod
    | FairDartsMethod,
    Field(discriminator="name"),
]

#: Every method name, in the order of the union.
METHOD_NAMES: tuple[str, ...] = (
    "darts",
    "gdas",
    "beta_darts",
    "sdarts_rs",
    "sdarts_adv",
    "drnas",
    "darts_minus",
    "random_ws",
    "fair_darts",
)
#: The methods that mix every operation by softmax(alpha): they compose with second order, PC-DARTS
#: partial channels and edge normalization, and the Hessian measurement.
SOFTMAX_METHODS: tuple[str, ...] = ("darts", "beta_darts")
#: The methods whose weight step alone changes: they compose with PC-DARTS and the Hessian measurement
#: (of the unperturbed loss), not with second order (SDARTS is first order).
PERTURBING_METHODS: tuple[str, ...] = ("sdarts_rs", "sdarts_adv")
#: The methods that mix by a Dirichlet sample (DrNAS): PC-DARTS partial channels, edge normalization and
#: budgets (on the Dirichlet mean) compose, second order and the Hessian measurement do not.
DIRICHLET_METHODS: tuple[str, ...] = ("drnas",)
#: The methods that add an auxiliary skip connection to every edge (DARTS-): softmax alphas, so second
#: order, PC-DARTS and budgets compose; the edge's ``skip_connect`` must be a primitive; the Hessian
#: measurement (of the supernet without the auxiliary skip) does not compose.
SKIP_AUXILIARY_METHODS: tuple[str, ...] = ("darts_minus",)
#: The methods that train no alphas (no architecture step): they compose with neither the collapse
#: early stop nor a budget (both read the alphas), nor anything the softmax methods alone allow.
ARCHITECTURE_FREE_METHODS: tuple[str, ...] = ("random_ws",)
#: The methods that derive their own genotype from the alphas (not the budget's repair): no budget.
OWN_DERIVATION_METHODS: tuple[str, ...] = ("fair_darts",)

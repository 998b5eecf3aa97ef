"""The epoch record: what one finished search epoch reports, defined once (torch-free).

:meth:`darts_core.search.loop.EpochResult.to_dict` produces it, the checkpoint keeps a list of them, and the
service's wire event and API model extend it, so its fields are named in this one place.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EpochCost", "EpochRecord"]


class EpochCost(BaseModel):
    """What the epoch's genotype costs against a search's ``constraints``: exactly, on the network that
    will be trained from it, and in expectation under the alphas (what the penalty sees)."""

    model_config = ConfigDict(extra="forbid")

    parameters: int = Field(ge=0, description="Parameters of the derived genotype's network")
    multiply_adds: int = Field(ge=0, description="Multiply-adds of one forward of one image")
    expected_parameters: float = Field(description="Expected parameters under the softmaxed alphas")
    expected_multiply_adds: float = Field(description="Expected multiply-adds under the softmaxed alphas")


class EpochRecord(BaseModel):
    """One finished epoch of a search, JSON-ready.

    ``train_*`` are means over the epoch's weight steps (train mode); ``valid_*`` come from one eval-mode
    pass over the whole search-valid split after the epoch's last step. ``lr`` is the weight learning
    rate used during the epoch, ``seconds`` its wall time. ``genotype`` is the DARTS JSON form
    (:meth:`darts_core.spec.genotype.Genotype.to_json`); ``alphas`` the softmaxed architecture weights,
    ``{"normal": rows, "reduce": rows}``, one row per edge and one column per primitive.

    The collapse metrics (:mod:`darts_core.search.collapse`): ``skip_connections`` and ``parameter_free_ops``
    of the derived normal cell, ``alpha_entropy`` (mean entropy of the softmaxed alpha rows, nats) and
    ``hessian_eigenvalue`` (only in the epochs ``training.hessian_every`` measures it). ``cost``: the
    derived genotype's parameters and multiply-adds and their expectations, in searches with
    ``constraints``. ``method`` names the search method and ``schedule`` holds the values its schedules
    took in the epoch (GDAS's temperature, SDARTS's epsilon, ...). ``None`` in records written before
    they existed.
    """

    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(ge=1, description="1-based epoch number")
    train_loss: float
    train_acc: float
    valid_loss: float
    valid_acc: float
    lr: float
    seconds: float
    genotype: dict[str, Any] = Field(description="The genotype derived after this epoch (DARTS format)")
    alphas: dict[str, list[list[float]]] = Field(
        description="Softmaxed alphas: {'normal': rows, 'reduce': rows}"
    )
    skip_connections: int | None = Field(
        default=None, ge=0, description="Skip connections in the derived normal cell"
    )
    parameter_free_ops: int | None = Field(
        default=None, ge=0, description="Parameter-free operations (skip, pools) in the derived normal cell"
    )
    alpha_entropy: float | None = Field(
        default=None, description="Mean entropy of the softmaxed alpha rows (nats)"
    )
    hessian_eigenvalue: float | None = Field(
        default=None,
        description="Dominant eigenvalue of the validation loss's Hessian w.r.t. the alphas (when measured)",
    )
    cost: EpochCost | None = Field(
        default=None, description="The genotype's cost, in searches with constraints (else null)"
    )
    method: str | None = Field(
        default=None, max_length=32, description="The search method that ran the epoch ('darts', 'gdas', ...)"
    )
    schedule: dict[str, float] | None = Field(
        default=None,
        max_length=8,
        description="The method's scheduled hyperparameters in this epoch (e.g. {'tau': 7.5} for GDAS); "
        "null for a method without any",
    )

"""The interface of a search method, and DARTS itself (the base class changes nothing)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

from darts_core.nn.edge_weights import EdgeMixing

if TYPE_CHECKING:
    from darts_core.nn.search_network import SearchNetwork
    from darts_core.spec.genotype import Genotype

__all__ = ["Scorer", "SearchMethod"]

#: ``score(mixing, batches) -> (loss, accuracy)``: the mean cross-entropy and accuracy of the supernet in
#: eval mode under the ``(normal, reduce)`` operation weights ``mixing``, over the first ``batches``
#: batches of the search-valid split (``None``: all of it), as the loop's validation computes them.
Scorer = Callable[[tuple[EdgeMixing, EdgeMixing], "int | None"], tuple[float, float]]


class SearchMethod:
    """What a search method changes in the DARTS bilevel step. This base class is DARTS: every hook
    returns ``None`` (the cells softmax the alphas), so a search with it runs DARTS bit for bit.

    The loop calls :meth:`start_epoch` before each epoch; :class:`~darts_core.search.bilevel.DartsSearch`
    calls :meth:`mixing` for the train-mode forward of the architecture step, :meth:`weight_mixing` for the
    weight step's, and the loop :meth:`eval_mixing` for its eval-mode validation.
    """

    name = "darts"
    #: Whether the unrolled second-order architecture step applies (softmax mixing, no sampling).
    second_order = True
    #: Whether the end-of-epoch validation normalises by each batch's own BatchNorm statistics: the
    #: running statistics of a method that samples an architecture per step (GDAS) mix all of them and
    #: fit none, as the GDAS authors' search networks keep no running statistics.
    eval_batch_statistics = False
    #: Whether the alphas are trained; ``False`` (random search with weight sharing): no architecture
    #: step, each step is the weight step alone.
    trains_architecture = True

    def bind(self, network: SearchNetwork) -> None:
        """Called once with the supernet the search trains (by
        :class:`~darts_core.search.bilevel.DartsSearch`), for a method that needs its operations or nodes."""

    def derive(self, network: SearchNetwork, score: Scorer, final: bool) -> Genotype | None:
        """The genotype a finished epoch reports (``final``: the last epoch of the search), called before
        the epoch's validation; ``score`` scores operation weights on the search-valid split. ``None``
        (the default): the loop derives it from :meth:`operation_weights` of the alphas (or by the
        budget's repair)."""
        return None

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Set the schedules of epoch ``epoch`` (1-based) of ``epochs``; a function of both only, so a
        resumed search sees the same values."""

    def schedule(self) -> dict[str, float] | None:
        """The values this epoch's schedules set (after :meth:`start_epoch`), as the epoch record's
        ``schedule``; ``None`` for a method without any (DARTS)."""
        return None

    def mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing] | None:
        """The ``(normal, reduce)`` operation weights of one train-mode forward from the architecture
        parameters (differentiable in them), or ``None`` for ``softmax(alphas)``."""
        return None

    def weight_mixing(
        self, alphas: Sequence[Tensor], loss_of: Callable[[tuple[EdgeMixing, EdgeMixing]], Tensor]
    ) -> tuple[EdgeMixing, EdgeMixing] | None:
        """The operation weights of the weight step's forward (``alphas`` detached); ``loss_of(mixing)``
        gives the train batch's loss under other weights (with the network's weights and buffers left
        as they are), for a method that searches them (SDARTS-ADV). Default: :meth:`mixing`."""
        return self.mixing(alphas)

    def arch_regularizer(self, alphas: Sequence[Tensor]) -> Tensor | None:
        """A 0-d term added to the architecture loss (its gradient to the alphas' in either order), or
        ``None``."""
        return None

    def operation_weights(self, alphas: Tensor) -> Tensor:
        """One cell kind's raw alphas ``(edges, ops)`` as the operation weights the epoch reports (its
        ``alphas``, the collapse metrics' entropy) and the genotype is derived from: softmax over each
        row for DARTS. Any dtype; no gradient is needed."""
        return F.softmax(alphas, dim=-1)

    def eval_mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing] | None:
        """The operation weights of the eval-mode validation (``None``: ``softmax(alphas)``)."""
        return None

"""SDARTS (Chen & Hsieh, ICML 2020): the weight step sees perturbed mixing weights.

The weight step mixes the operations by ``softmax(alpha) + delta``, projected back onto the probability
simplex (Euclidean projection, :func:`project_to_simplex`), with ``delta`` in the box ``[-eps, eps]``:
uniform noise (``sdarts_rs``, random smoothing) or a ``steps``-step PGD attack that maximises the train
loss within the box, from a uniform random start, each step moving ``delta`` by ``2 eps / steps`` times
the gradient's sign (``sdarts_adv``). ``eps`` grows linearly from ``epsilon_start`` in the first epoch
to ``epsilon_end`` after the last, as the authors' ``0.03 + (0.3 - 0.03) * epoch / epochs``. The
architecture step is DARTS's, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from darts_core.nn.edge_weights import EdgeMixing
from darts_core.search.methods.base import SearchMethod

__all__ = ["Sdarts", "project_to_simplex"]


def project_to_simplex(values: Tensor) -> Tensor:
    """The Euclidean projection of every row onto the probability simplex ``{w >= 0, sum(w) = 1}``.

    The sort-based algorithm (Held, Wolfe & Crowder 1974; Duchi et al. 2008): ``max(v - theta, 0)`` with
    the threshold ``theta`` found from the sorted row. Differentiable almost everywhere. ``(..., n)``.
    """
    ordered = values.sort(dim=-1, descending=True).values
    cumulative = ordered.cumsum(dim=-1) - 1.0
    ranks = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    support = (ordered - cumulative / ranks > 0).sum(dim=-1, keepdim=True)
    theta = cumulative.gather(-1, support - 1) / support.to(values.dtype)
    return (values - theta).clamp_min(0.0)


class Sdarts(SearchMethod):
    """SDARTS-RS (``attack_steps=0``) or SDARTS-ADV (see the module docstring)."""

    second_order = False

    def __init__(self, epsilon_start: float = 0.03, epsilon_end: float = 0.3, attack_steps: int = 0) -> None:
        if epsilon_start < 0 or epsilon_end < 0:
            raise ValueError(
                f"epsilon_start, epsilon_end: must be >= 0, got {epsilon_start!r}, {epsilon_end!r}"
            )
        if attack_steps < 0:
            raise ValueError(f"attack_steps must be >= 0, got {attack_steps!r}")
        self.name = "sdarts_adv" if attack_steps else "sdarts_rs"
        self.epsilon_start, self.epsilon_end, self.attack_steps = epsilon_start, epsilon_end, attack_steps
        self.epsilon = epsilon_start

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.epsilon = self.epsilon_start + (self.epsilon_end - self.epsilon_start) * (epoch - 1) / epochs

    def schedule(self) -> dict[str, float]:
        return {"epsilon": self.epsilon}

    def weight_mixing(
        self, alphas: Sequence[Tensor], loss_of: Callable[[tuple[EdgeMixing, EdgeMixing]], Tensor]
    ) -> tuple[EdgeMixing, EdgeMixing]:
        eps = self.epsilon
        soft = [F.softmax(alpha.detach(), dim=-1) for alpha in alphas[:2]]
        deltas = [torch.empty_like(weights).uniform_(-eps, eps) for weights in soft]

        def mixed(shifts: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing]:
            normal, reduce = (project_to_simplex(w + d) for w, d in zip(soft, shifts, strict=True))
            return EdgeMixing(normal), EdgeMixing(reduce)

        step_size = 2 * eps / self.attack_steps if self.attack_steps else 0.0
        for _ in range(self.attack_steps):
            shifts = [delta.requires_grad_() for delta in deltas]
            grads = torch.autograd.grad(loss_of(mixed(shifts)), shifts, materialize_grads=True)
            with torch.no_grad():
                deltas = [
                    (delta + step_size * grad.sign()).clamp(-eps, eps)
                    for delta, grad in zip(shifts, grads, strict=True)
                ]
        with torch.no_grad():
            return mixed(deltas)

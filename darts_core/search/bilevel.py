"""One DARTS bilevel step: :class:`DartsSearch` (the counterpart of the reference's ``architect.py``).

:class:`DartsSearch` owns the two optimizers of DARTS (SGD with a cosine schedule for the network
weights, Adam for the architecture weights ``alphas``) and performs one bilevel step of the paper
(Liu, Simonyan, Yang, ICLR 2019) per call of :meth:`DartsSearch.step`, first or second order.

The network handed to :class:`DartsSearch` must offer what
:class:`~darts_core.nn.search_network.SearchNetwork` offers: ``arch_parameters()`` (the two alpha tensors,
normal then reduce, then with PC-DARTS edge normalization the two betas), ``weight_parameters()``
(everything else that is trained), ``genotype()``, ``softmaxed_alphas()`` and ``forward(x, alphas=None)``
returning logits of shape ``(N, num_classes)``, where ``alphas`` (as many tensors as ``arch_parameters()``)
replaces the network's own for that call. Every architecture parameter (betas included) is optimised by
Adam, saved in :meth:`DartsSearch.state_dict` and differentiated by the second-order step like the alphas.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from darts_core.checkpoint import load_optimizer_state
from darts_core.nn.buffers import buffers_preserved
from darts_core.nn.edge_weights import EdgeMixing
from darts_core.precision import exact_fp32
from darts_core.search.methods.base import SearchMethod

if TYPE_CHECKING:
    from darts_core.nn.search_network import SearchNetwork

__all__ = ["DartsSearch", "StepResult", "Batch"]

#: ``(images (N, C, H, W), labels (N,) int64)``.
Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class StepResult:
    """Losses and accuracies of one bilevel step, as 0-d tensors on the network's device.

    They stay tensors so that a loop can sum them without a device synchronisation per step; call
    :meth:`to_floats` (one synchronisation) when the numbers are needed.

    ``train_*`` come from the weight step's forward on the train batch. ``valid_*`` come from the
    architecture step's forward on the valid batch: at the current weights for first order, at the
    unrolled weights ``w'`` for second order; NaN for a method that trains no alphas (no architecture
    step, ``SearchMethod.trains_architecture`` false).
    """

    train_loss: Tensor
    train_acc: Tensor
    valid_loss: Tensor
    valid_acc: Tensor

    def to_floats(self) -> dict[str, float]:
        values = torch.stack([self.train_loss, self.train_acc, self.valid_loss, self.valid_acc]).tolist()
        return dict(zip(("train_loss", "train_acc", "valid_loss", "valid_acc"), values, strict=True))


def _grad(loss: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Gradients of ``loss`` with respect to ``inputs`` only; zeros for an input the loss does not use.

    (A network may leave a tensor unused, e.g. ``alphas_normal`` when every cell is a reduction cell.)
    """
    return torch.autograd.grad(loss, inputs, materialize_grads=True)


def _accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == targets).float().mean()


class DartsSearch:
    """One DARTS bilevel optimisation step at a time.

    Args:
        network: the supernet (see the module docstring for the methods it must have).
        order: ``"first"`` (alphas follow the valid-loss gradient at the current weights) or
            ``"second"`` (the unrolled step of the paper with a finite-difference Hessian-vector product).
        weight_lr, weight_lr_min: SGD learning rate, annealed by a cosine schedule over ``epochs`` down to
            ``weight_lr_min``.
        momentum, weight_decay: SGD momentum and L2 weight decay of the network weights.
        arch_lr, arch_betas, arch_weight_decay: Adam settings of the architecture weights.
        grad_clip: maximum global 2-norm of the weight gradient in the weight step.
        epochs: length of the cosine schedule (:meth:`end_epoch` is called once per epoch).
        autocast_dtype: when set (e.g. ``torch.bfloat16`` on CUDA), the weight step's forwards run under
            ``torch.autocast`` with that dtype; parameters, gradients and optimizer states stay fp32.
        arch_autocast: also run the first-order architecture step's forward under autocast. Off by
            default: on the measurement of benchmarks/README.md ("Precision of the architecture step")
            a bf16 architecture step moves the alpha gradient by about 20 %. The second-order
            architecture step always runs in exact fp32 (no autocast, no TF32,
            :func:`~darts_core.precision.exact_fp32`), whatever this says: ``eps * v`` is about 1e-5 of
            a weight, below bf16's and TF32's spacing, so rounded forwards at ``w+-`` would see
            ``w+ == w-`` and the finite difference would be rounding noise times ``xi / (2 eps)``; the
            forward at ``w'`` must see the ``xi``-step that made it; and the train pass at ``w`` that
            gives ``w'`` moved the gradient by 61 % under bf16 on its own. Without autocast the
            architecture step runs in exact fp32 (TF32 off) too.
        arch_penalty: ``penalty(arch_parameters) -> 0-d tensor`` added to the architecture loss (its
            gradient added to the alphas' in either order; it does not depend on the weights), e.g. a
            search budget's (:func:`darts_core.search.budget.budget_penalty`).
        channels_last: put the network's 4-D weights (here, once) and every 4-D image batch (at each
            step; a no-op for batches already so) in ``torch.channels_last`` memory format. Same math,
            other rounding: on CPU depthwise convolutions run about 3x faster and max pooling 3.7x,
            which makes a step 1.3-2x faster (benchmarks/README.md). State dicts do not depend on it.
        method: the search method (:mod:`darts_core.search.methods`) whose :meth:`~SearchMethod.mixing`
            gives the operation weights of the train-mode forwards of both steps; ``None``: DARTS.
            Second order only for the methods that allow it (``method.second_order``); their mixing then
            enters every pass of the unrolled step (DARTS-'s auxiliary skip).
        compile: run the weight step's forward through ``torch.compile(network)`` (the same module and
            parameters; the architecture step, with its functional calls, stays eager). Compiles on the
            first steps; needs a C compiler on CPU.

    A step (:meth:`step`) is:

    1. **Architecture step** on the valid batch (none for a method that trains no alphas). First
       order: ``dalpha = dL_val(w, alpha)/dalpha``,
       computed with ``requires_grad`` off on the weights, so no weight gradient is ever formed. Second order:
       ``w' = w - xi * (momentum * m + dL_train(w, alpha)/dw + weight_decay * w)`` with ``xi`` the current
       weight learning rate and ``m`` SGD's momentum buffer (as the DARTS reference architect), then
       ``dalpha = dL_val(w', alpha)/dalpha - xi * (dL_train(w+, alpha)/dalpha - dL_train(w-, alpha)/dalpha)
       / (2 eps)`` with ``w+- = w +- eps * v``, ``v = dL_val(w', alpha)/dw'`` and ``eps = 0.01 / ||v||``.
       Every pass is functional (``torch.func.functional_call``): no model copy is built.
       Adam then updates the alphas.
    2. **Weight step** on the train batch with the (new) alphas detached: cross-entropy, gradient-norm
       clipping at ``grad_clip``, one SGD step.

    BatchNorm running statistics (used only in eval mode, e.g. the end-of-epoch validation of
    :func:`run_search`) are updated by the forwards at the real weights only: first order, the
    architecture forward on the valid batch and the weight forward on the train batch (as the reference);
    second order, the forward on the train batch that gives ``dL_train/dw`` and the weight forward (as the
    reference). The passes at ``w'`` and ``w+-`` leave the buffers as they found them: the reference
    runs ``w'`` on a fresh model copy, and ``w+-`` are a numerical device whose statistics (at
    perturbed weights) should not be remembered. Training-mode outputs do not depend on running
    statistics, so this choice leaves every gradient unchanged.
    """

    def __init__(
        self,
        network: nn.Module,
        order: str = "first",
        weight_lr: float = 0.025,
        weight_lr_min: float = 0.001,
        momentum: float = 0.9,
        weight_decay: float = 3e-4,
        arch_lr: float = 3e-4,
        arch_betas: tuple[float, float] = (0.5, 0.999),
        arch_weight_decay: float = 1e-3,
        grad_clip: float = 5.0,
        epochs: int = 50,
        *,
        autocast_dtype: torch.dtype | None = None,
        arch_autocast: bool = False,
        channels_last: bool = True,
        arch_penalty: Callable[[Sequence[Tensor]], Tensor] | None = None,
        method: SearchMethod | None = None,
        compile: bool = False,
    ) -> None:
        if order not in ("first", "second"):
            raise ValueError(f"order must be 'first' or 'second', got {order!r}")
        self.method = SearchMethod() if method is None else method
        if order == "second" and not self.method.second_order:
            raise ValueError(f"order 'second' does not apply to the {self.method.name!r} method")
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {grad_clip!r}")
        self.network = network
        self.order = order
        self.arch_penalty = arch_penalty
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.autocast_dtype = autocast_dtype
        self.arch_autocast = arch_autocast
        self.channels_last = channels_last
        # The compiled forward shares the module (and so the parameters, buffers and state dicts).
        self._compiled: Callable[..., Tensor] | None = torch.compile(network) if compile else None
        if channels_last:
            # Module.to keeps the parameter objects (only their data changes) and leaves non-4-D ones.
            # torch's stub for Module.to omits the memory_format keyword the runtime accepts.
            network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

        # The duck-typed supernet's methods, typed as SearchNetwork's (nn.Module's __getattr__ says Tensor).
        supernet = cast("SearchNetwork", network)
        self.alphas: list[Tensor] = list(supernet.arch_parameters())
        self.weights: list[Tensor] = list(supernet.weight_parameters())
        self.method.bind(supernet)
        if not self.alphas or not self.weights:
            raise ValueError("network: arch_parameters() and weight_parameters() must both be non-empty")
        alpha_ids = {id(alpha) for alpha in self.alphas}
        if any(id(weight) in alpha_ids for weight in self.weights):
            raise ValueError("network: weight_parameters() must not contain the architecture parameters")
        names = {id(param): name for name, param in network.named_parameters()}
        missing = [index for index, weight in enumerate(self.weights) if id(weight) not in names]
        if missing:
            raise ValueError(f"network: weight_parameters() entries {missing} are not registered parameters")
        # Names for functional calls (torch.func.functional_call swaps tensors in by name).
        self._weight_names = [names[id(weight)] for weight in self.weights]

        self.weight_optimizer = torch.optim.SGD(
            self.weights, lr=weight_lr, momentum=momentum, weight_decay=weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.weight_optimizer, T_max=epochs, eta_min=weight_lr_min
        )
        self.arch_optimizer = torch.optim.Adam(
            self.alphas, lr=arch_lr, betas=arch_betas, weight_decay=arch_weight_decay
        )

    # ------------------------------------------------------------------ public API

    @property
    def lr(self) -> float:
        """The current learning rate of the network weights."""
        return float(self.weight_optimizer.param_groups[0]["lr"])

    def step(self, train_batch: Batch, valid_batch: Batch) -> StepResult:
        """One bilevel step: architecture step on ``valid_batch``, then weight step on ``train_batch``.

        Args:
            train_batch: ``(images (N, C, H, W), labels (N,) int64)`` from the search-train split.
            valid_batch: the same from the search-valid split.
        """
        self.network.train()
        train_batch, valid_batch = self._formatted(train_batch), self._formatted(valid_batch)
        if self.method.trains_architecture:
            valid_loss, valid_acc = self._architecture_step(train_batch, valid_batch)
        else:  # random search with weight sharing: the weight step alone
            valid_loss = valid_acc = torch.full((), float("nan"), device=train_batch[0].device)
        train_loss, train_acc = self._weight_step(train_batch)
        return StepResult(train_loss, train_acc, valid_loss, valid_acc)

    def arch_gradients(self, train_batch: Batch, valid_batch: Batch) -> list[Tensor]:
        """The architecture gradient of the configured order, without applying it.

        Returns one tensor per alpha (shapes of ``network.arch_parameters()``). Network weights are not
        changed; BatchNorm running statistics are updated as described in the class docstring.
        """
        self.network.train()
        train_batch, valid_batch = self._formatted(train_batch), self._formatted(valid_batch)
        grads, _, _ = self._arch_grads(train_batch, valid_batch)
        return grads

    def end_epoch(self) -> None:
        """Advance the cosine learning-rate schedule of the weights by one epoch."""
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """Network (alphas included), both optimizers and the schedule, for :meth:`load_state_dict`."""
        return {
            "network": self.network.state_dict(),
            "alphas": [alpha.detach().clone() for alpha in self.alphas],
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the network must have the same structure)."""
        self.network.load_state_dict(state["network"])
        with torch.no_grad():
            for alpha, saved in zip(self.alphas, state["alphas"], strict=True):
                alpha.copy_(saved)
        load_optimizer_state(self.weight_optimizer, state["weight_optimizer"])
        load_optimizer_state(self.arch_optimizer, state["arch_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    # ------------------------------------------------------------------ internals

    def _formatted(self, batch: Batch) -> Batch:
        """The batch with 4-D images in channels_last when the network is (once per step, not per pass)."""
        images, labels = batch
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def _autocast(self, device: torch.device, exact: bool) -> contextlib.AbstractContextManager:
        if exact:
            return exact_fp32(device)
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _loss(
        self,
        batch: Batch,
        alphas: Sequence[Tensor],
        weights: Sequence[Tensor] | None = None,
        *,
        exact: bool = False,
        mixing: tuple[EdgeMixing, EdgeMixing] | None = None,
        compiled: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Cross-entropy and logits of ``batch`` at ``alphas`` and, when given, substituted ``weights``.

        ``exact``: in IEEE fp32 (no autocast, no TF32) whatever ``autocast_dtype`` says. ``mixing``: the
        method's operation weights (then the network does not softmax ``alphas``). ``compiled``: through
        the compiled forward when there is one (the weight step).
        """
        images, labels = batch
        forward = self._compiled if compiled and self._compiled is not None else self.network
        with self._autocast(images.device, exact):
            if weights is not None:
                substitutes = dict(zip(self._weight_names, weights, strict=True))
                arguments: dict[str, Any] = {"alphas": tuple(alphas)}
                if mixing is not None:
                    arguments["mixing"] = mixing
                logits = functional_call(self.network, substitutes, (images,), arguments)
            elif mixing is not None:
                logits = forward(images, alphas=tuple(alphas), mixing=mixing)
            else:
                logits = forward(images, alphas=tuple(alphas))
        return F.cross_entropy(logits.float(), labels), logits

    @contextlib.contextmanager
    def _weights_frozen(self) -> Iterator[None]:
        """No autograd graph through the weights while inside (cheaper than substituting detached copies)."""
        flags = [weight.requires_grad for weight in self.weights]
        for weight in self.weights:
            weight.requires_grad_(False)
        try:
            yield
        finally:
            for weight, flag in zip(self.weights, flags, strict=True):
                weight.requires_grad_(flag)

    @property
    def _arch_exact(self) -> bool:
        """The architecture step's passes at the real weights in exact fp32 (see ``arch_autocast``)."""
        return not (self.arch_autocast and self.autocast_dtype is not None)

    def _architecture_step(self, train_batch: Batch, valid_batch: Batch) -> tuple[Tensor, Tensor]:
        grads, valid_loss, valid_acc = self._arch_grads(train_batch, valid_batch)
        for penalty in (self.arch_penalty, self.method.arch_regularizer):
            term = None if penalty is None else penalty(self.alphas)
            if term is not None:
                penalty_grads = _grad(term, self.alphas)
                grads = [grad + penalty_grad for grad, penalty_grad in zip(grads, penalty_grads, strict=True)]
        self.arch_optimizer.zero_grad(set_to_none=True)
        for alpha, grad in zip(self.alphas, grads, strict=True):
            alpha.grad = grad
        self.arch_optimizer.step()
        return valid_loss, valid_acc

    def _arch_grads(self, train_batch: Batch, valid_batch: Batch) -> tuple[list[Tensor], Tensor, Tensor]:
        if self.order == "first":
            with self._weights_frozen():
                mixing = self.method.mixing(self.alphas)
                loss, logits = self._loss(valid_batch, self.alphas, exact=self._arch_exact, mixing=mixing)
                grads = list(_grad(loss, self.alphas))
        else:
            grads, loss, logits = self._unrolled_arch_grads(train_batch, valid_batch)
        return grads, loss.detach(), _accuracy(logits.detach(), valid_batch[1])

    def _unrolled_arch_grads(
        self, train_batch: Batch, valid_batch: Batch
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        xi = self.lr
        fixed_alphas = [alpha.detach() for alpha in self.alphas]

        # w' = w - xi * (momentum * m + dL_train/dw + weight_decay * w), at the real weights and buffers.
        # The per-weight arithmetic runs as torch._foreach_* calls (one call per list instead of one per
        # weight: the network has about 1,400 weights); on CPU they loop over the very same kernels.
        # Exact fp32 like every pass below: under bf16 autocast this one pass alone moved the alpha
        # gradient by 61 % (benchmarks/README.md, "Precision of the architecture step").
        # A second-order method's mixing (None for DARTS) enters every pass, drawn afresh for each.
        mixing = self.method.mixing
        train_loss, _ = self._loss(train_batch, fixed_alphas, exact=True, mixing=mixing(fixed_alphas))
        train_grads = _grad(train_loss, self.weights)
        with torch.no_grad():
            decay = torch._foreach_mul(self.weights, self.weight_decay)
            directions = list(torch._foreach_add(train_grads, decay))
            del train_grads, decay
            state = self.weight_optimizer.state
            buffers = [state.get(weight, {}).get("momentum_buffer") for weight in self.weights]
            with_momentum = [index for index, buffer in enumerate(buffers) if buffer is not None]
            if with_momentum:
                momenta = [cast(Tensor, buffers[index]) for index in with_momentum]
                moved = torch._foreach_add(
                    [directions[index] for index in with_momentum], torch._foreach_mul(momenta, self.momentum)
                )
                for index, direction in zip(with_momentum, moved, strict=True):
                    directions[index] = direction
            unrolled = torch._foreach_sub(self.weights, torch._foreach_mul(directions, xi))
            del directions
        for weight in unrolled:
            weight.requires_grad_(True)

        with buffers_preserved(self.network):
            # dL_val(w', alpha) with respect to alpha and w'.
            valid_loss, valid_logits = self._loss(
                valid_batch, self.alphas, weights=unrolled, exact=True, mixing=mixing(self.alphas)
            )
            all_grads = _grad(valid_loss, [*self.alphas, *unrolled])
            direct = all_grads[: len(self.alphas)]
            vector = all_grads[len(self.alphas) :]
            del unrolled, all_grads

            # Central finite difference of dL_train/dalpha along v: only alpha gradients are computed.
            # w+- = w +- eps * v: eps * v is computed once for both (w + (-eps) * v is w - eps * v exactly).
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(vector)))
            eps = 0.01 / norm.clamp_min(torch.finfo(norm.dtype).tiny)
            with torch.no_grad():
                step = torch._foreach_mul(vector, eps)
            del vector
            finite_differences = []
            for shift in (torch._foreach_add, torch._foreach_sub):
                with torch.no_grad():
                    shifted = shift(self.weights, step)
                loss = self._loss(
                    train_batch, self.alphas, weights=shifted, exact=True, mixing=mixing(self.alphas)
                )[0]
                finite_differences.append(_grad(loss, self.alphas))
                del shifted
        grads_plus, grads_minus = finite_differences
        grads = [
            d - xi * (gp - gm) / (2 * eps) for d, gp, gm in zip(direct, grads_plus, grads_minus, strict=True)
        ]
        return grads, valid_loss, valid_logits

    def _weight_step(self, train_batch: Batch) -> tuple[Tensor, Tensor]:
        fixed_alphas = [alpha.detach() for alpha in self.alphas]

        def loss_of(mixing: tuple[EdgeMixing, EdgeMixing]) -> Tensor:
            return self._loss(train_batch, fixed_alphas, mixing=mixing)[0]

        if type(self.method).weight_mixing is SearchMethod.weight_mixing:
            mixing = self.method.mixing(fixed_alphas)  # no passes of its own: nothing to guard
        else:
            # A method's own passes (SDARTS-ADV's attack) form no weight gradient and leave the BatchNorm
            # statistics as they were (restored once its backward passes are done).
            with self._weights_frozen(), buffers_preserved(self.network):
                mixing = self.method.weight_mixing(fixed_alphas, loss_of)
        loss, logits = self._loss(train_batch, fixed_alphas, mixing=mixing, compiled=True)
        self.weight_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        self.weight_optimizer.step()
        return loss.detach(), _accuracy(logits.detach(), train_batch[1])

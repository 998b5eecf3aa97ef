"""The DARTS architecture search: one bilevel step, the search configuration, and the resumable loop.

* :class:`DartsSearch` owns the two optimizers of DARTS (SGD with a cosine schedule for the network
  weights, Adam for the architecture weights ``alphas``) and performs one bilevel step of the paper
  (Liu, Simonyan, Yang, ICLR 2019) per call of :meth:`DartsSearch.step`, first or second order.
* :class:`SearchConfig` is the REST search spec (without the dataset) as validated dataclasses.
* :func:`run_search` runs a whole search on an in-memory :class:`~darts_core.data.ImageDataset`, reports
  every finished epoch through a callback and writes a checkpoint after each, from which a restarted
  search continues bit-identically (on CPU) to one that was never interrupted.

The network handed to :class:`DartsSearch` must offer what :class:`~darts_core.networks.SearchNetwork`
offers: ``arch_parameters()`` (the two alpha tensors, normal then reduce), ``weight_parameters()``
(everything else that is trained), ``genotype()``, ``softmaxed_alphas()`` and
``forward(x, alphas=None)`` returning logits of shape ``(N, num_classes)``, where ``alphas`` (a pair of
tensors) replaces the network's own alphas for that call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from darts_core.genotype import DARTS_OP_NAMES, Genotype
from darts_core.networks import SearchNetwork
from darts_core.train import resolve_device

__all__ = [
    "DartsSearch",
    "StepResult",
    "SearchSpaceConfig",
    "NetworkConfig",
    "TrainingConfig",
    "ResourcesConfig",
    "SearchConfig",
    "EpochResult",
    "SearchResult",
    "run_search",
    "CHECKPOINT_NAME",
]

#: File name of the checkpoint :func:`run_search` keeps in its ``checkpoint_dir``.
CHECKPOINT_NAME = "checkpoint.pt"
_CHECKPOINT_FORMAT = 1

Batch = tuple[Tensor, Tensor]


# ---------------------------------------------------------------------------------------------------
# One bilevel step
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """Losses and accuracies of one bilevel step, as 0-d tensors on the network's device.

    They stay tensors so that a loop can sum them without a device synchronisation per step; call
    :meth:`to_floats` (one synchronisation) when the numbers are needed.

    ``train_*`` come from the weight step's forward on the train batch. ``valid_*`` come from the
    architecture step's forward on the valid batch: at the current weights for first order, at the
    unrolled weights ``w'`` for second order.
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
        autocast_dtype: when set (e.g. ``torch.bfloat16`` on CUDA), forwards run under
            ``torch.autocast`` with that dtype; parameters, gradients and optimizer states stay fp32.
        channels_last: put the network's 4-D weights (here, once) and every 4-D image batch (at each
            step; a no-op for batches already so) in ``torch.channels_last`` memory format. Same math,
            other rounding: on CPU depthwise convolutions run about 3x faster and max pooling 3.7x,
            which makes a step 1.3-2x faster (benchmarks/README.md). State dicts do not depend on it.

    A step (:meth:`step`) is:

    1. **Architecture step** on the valid batch. First order: ``dalpha = dL_val(w, alpha)/dalpha``,
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
        channels_last: bool = True,
    ) -> None:
        if order not in ("first", "second"):
            raise ValueError(f"order must be 'first' or 'second', got {order!r}")
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {grad_clip!r}")
        self.network = network
        self.order = order
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        if channels_last:
            # Module.to keeps the parameter objects (only their data changes) and leaves non-4-D ones.
            network.to(memory_format=torch.channels_last)

        self.alphas: list[Tensor] = list(network.arch_parameters())
        self.weights: list[Tensor] = list(network.weight_parameters())
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
        valid_loss, valid_acc = self._architecture_step(train_batch, valid_batch)
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
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    # ------------------------------------------------------------------ internals

    def _formatted(self, batch: Batch) -> Batch:
        """The batch with 4-D images in channels_last when the network is (once per step, not per pass)."""
        images, labels = batch
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _loss(
        self, batch: Batch, alphas: Sequence[Tensor], weights: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Cross-entropy and logits of ``batch`` at ``alphas`` and, when given, substituted ``weights``."""
        images, labels = batch
        with self._autocast(images.device):
            if weights is None:
                logits = self.network(images, alphas=tuple(alphas))
            else:
                substitutes = dict(zip(self._weight_names, weights, strict=True))
                logits = functional_call(self.network, substitutes, (images,), {"alphas": tuple(alphas)})
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

    @contextlib.contextmanager
    def _buffers_preserved(self) -> Iterator[None]:
        """Forwards inside leave the network's buffers (BatchNorm running statistics) as they found them."""
        buffers = list(self.network.buffers())
        saved = [buffer.clone() for buffer in buffers]
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, value in zip(buffers, saved, strict=True):
                    buffer.copy_(value)

    def _architecture_step(self, train_batch: Batch, valid_batch: Batch) -> tuple[Tensor, Tensor]:
        grads, valid_loss, valid_acc = self._arch_grads(train_batch, valid_batch)
        self.arch_optimizer.zero_grad(set_to_none=True)
        for alpha, grad in zip(self.alphas, grads, strict=True):
            alpha.grad = grad
        self.arch_optimizer.step()
        return valid_loss, valid_acc

    def _arch_grads(self, train_batch: Batch, valid_batch: Batch) -> tuple[list[Tensor], Tensor, Tensor]:
        if self.order == "first":
            with self._weights_frozen():
                loss, logits = self._loss(valid_batch, self.alphas)
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
        train_loss, _ = self._loss(train_batch, fixed_alphas)
        train_grads = _grad(train_loss, self.weights)
        unrolled = []
        with torch.no_grad():
            for weight, grad in zip(self.weights, train_grads, strict=True):
                direction = grad + self.weight_decay * weight
                buffer = self.weight_optimizer.state.get(weight, {}).get("momentum_buffer")
                if buffer is not None:
                    direction = direction + self.momentum * buffer
                unrolled.append((weight - xi * direction).requires_grad_(True))
        del train_grads

        with self._buffers_preserved():
            # dL_val(w', alpha) with respect to alpha and w'.
            valid_loss, valid_logits = self._loss(valid_batch, self.alphas, weights=unrolled)
            all_grads = _grad(valid_loss, [*self.alphas, *unrolled])
            direct = all_grads[: len(self.alphas)]
            vector = all_grads[len(self.alphas) :]
            del unrolled, all_grads

            # Central finite difference of dL_train/dalpha along v: only alpha gradients are computed.
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in vector]))
            eps = 0.01 / norm.clamp_min(torch.finfo(norm.dtype).tiny)
            finite_differences = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    shifted = [
                        weight + sign * eps * v for weight, v in zip(self.weights, vector, strict=True)
                    ]
                finite_differences.append(
                    _grad(self._loss(train_batch, self.alphas, weights=shifted)[0], self.alphas)
                )
                del shifted
        grads_plus, grads_minus = finite_differences
        grads = [
            d - xi * (gp - gm) / (2 * eps) for d, gp, gm in zip(direct, grads_plus, grads_minus, strict=True)
        ]
        return grads, valid_loss, valid_logits

    def _weight_step(self, train_batch: Batch) -> tuple[Tensor, Tensor]:
        fixed_alphas = [alpha.detach() for alpha in self.alphas]
        loss, logits = self._loss(train_batch, fixed_alphas)
        self.weight_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        self.weight_optimizer.step()
        return loss.detach(), _accuracy(logits.detach(), train_batch[1])


# ---------------------------------------------------------------------------------------------------
# Configuration (the REST spec without the dataset)
# ---------------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(path: str, value: Any, minimum: int) -> int:
    if not _is_int(value):
        raise ValueError(f"{path} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{path} must be >= {minimum}, got {value!r}")
    return value


def _check_float(
    path: str,
    value: Any,
    minimum: float,
    *,
    above_minimum: bool = False,
    below: float | None = None,
) -> float:
    if not _is_number(value):
        raise ValueError(f"{path} must be a finite number, got {value!r}")
    value = float(value)
    if above_minimum and value <= minimum:
        bound = f"> {minimum:g}" + (f" and < {below:g}" if below is not None else "")
        raise ValueError(f"{path} must be {bound}, got {value!r}")
    if not above_minimum and value < minimum:
        bound = f">= {minimum:g}" + (f" and < {below:g}" if below is not None else "")
        raise ValueError(f"{path} must be {bound}, got {value!r}")
    if below is not None and value >= below:
        low = f"> {minimum:g}" if above_minimum else f">= {minimum:g}"
        raise ValueError(f"{path} must be {low} and < {below:g}, got {value!r}")
    return value


def _check_choice(path: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{path} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _set(instance: Any, name: str, value: Any) -> None:
    object.__setattr__(instance, name, value)


@dataclass(frozen=True)
class SearchSpaceConfig:
    """``search_space``: the candidate operations (DARTS names, in alpha column order) and nodes per cell."""

    primitives: tuple[str, ...] = DARTS_OP_NAMES
    internal_nodes: int = 4

    def __post_init__(self) -> None:
        path = "search_space.primitives"
        primitives = self.primitives
        if isinstance(primitives, (str, bytes)) or not isinstance(primitives, Sequence):
            raise ValueError(f"{path} must be a list of operation names, got {primitives!r}")
        for position, name in enumerate(primitives):
            if name not in DARTS_OP_NAMES:
                raise ValueError(
                    f"{path}[{position}] is not a DARTS operation: {name!r} "
                    f"(known: {', '.join(DARTS_OP_NAMES)})"
                )
        if len(set(primitives)) != len(primitives):
            raise ValueError(f"{path} must not repeat an operation, got {list(primitives)}")
        if not any(name != "none" for name in primitives):
            raise ValueError(f"{path} needs at least one operation other than 'none', got {list(primitives)}")
        _set(self, "primitives", tuple(primitives))
        _check_int("search_space.internal_nodes", self.internal_nodes, 1)


@dataclass(frozen=True)
class NetworkConfig:
    """``network``: size of the supernet."""

    cells: int = 8
    init_channels: int = 16
    stem_multiplier: int = 3

    def __post_init__(self) -> None:
        _check_int("network.cells", self.cells, 1)
        _check_int("network.init_channels", self.init_channels, 1)
        _check_int("network.stem_multiplier", self.stem_multiplier, 1)


@dataclass(frozen=True)
class TrainingConfig:
    """``training``: schedule, optimizers, data split and seed of the search."""

    epochs: int = 50
    batch_size: int = 64
    train_portion: float = 0.5
    order: str = "first"
    weight_lr: float = 0.025
    weight_lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    grad_clip: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("training.epochs", self.epochs, 1)
        _check_int("training.batch_size", self.batch_size, 1)
        _set(
            self,
            "train_portion",
            _check_float("training.train_portion", self.train_portion, 0.0, above_minimum=True, below=1.0),
        )
        _check_choice("training.order", self.order, ("first", "second"))
        _set(self, "weight_lr", _check_float("training.weight_lr", self.weight_lr, 0.0, above_minimum=True))
        _set(self, "weight_lr_min", _check_float("training.weight_lr_min", self.weight_lr_min, 0.0))
        if self.weight_lr_min > self.weight_lr:
            raise ValueError(
                f"training.weight_lr_min must be <= training.weight_lr ({self.weight_lr:g}), "
                f"got {self.weight_lr_min!r}"
            )
        _set(self, "momentum", _check_float("training.momentum", self.momentum, 0.0, below=1.0))
        _set(self, "weight_decay", _check_float("training.weight_decay", self.weight_decay, 0.0))
        _set(self, "arch_lr", _check_float("training.arch_lr", self.arch_lr, 0.0, above_minimum=True))
        _set(
            self, "arch_weight_decay", _check_float("training.arch_weight_decay", self.arch_weight_decay, 0.0)
        )
        _set(self, "grad_clip", _check_float("training.grad_clip", self.grad_clip, 0.0, above_minimum=True))
        _check_int("training.seed", self.seed, 0)


@dataclass(frozen=True)
class ResourcesConfig:
    """``resources``: where the search runs. ``auto`` means CUDA when available, else CPU."""

    device: str = "auto"

    def __post_init__(self) -> None:
        _check_choice("resources.device", self.device, ("auto", "cpu", "cuda"))


_SECTIONS: dict[str, type] = {
    "search_space": SearchSpaceConfig,
    "network": NetworkConfig,
    "training": TrainingConfig,
    "resources": ResourcesConfig,
}
#: Top-level spec keys that belong to the service, not to the search itself.
_IGNORED_KEYS = ("name", "dataset")


@dataclass(frozen=True)
class SearchConfig:
    """A validated search spec: the REST ``spec`` without ``name`` and ``dataset``.

    Build it with :meth:`from_spec` from the JSON spec (defaults fill what is missing) or directly from
    the section dataclasses; :meth:`to_spec` gives the spec back with every default filled in.
    Invalid values raise ``ValueError`` naming the field, e.g. ``"training.epochs must be >= 1, got 0"``.
    """

    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> SearchConfig:
        """Validate a REST search spec (``name`` and ``dataset`` are ignored; unknown keys are errors)."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"spec must be a JSON object, got {type(spec).__name__}")
        unknown = [key for key in spec if key not in _SECTIONS and key not in _IGNORED_KEYS]
        if unknown:
            raise ValueError(
                f"{unknown[0]} is not a known field (known: {', '.join([*_IGNORED_KEYS, *_SECTIONS])})"
            )
        sections = {}
        for section, section_type in _SECTIONS.items():
            values = spec.get(section)
            if values is None:
                values = {}
            if not isinstance(values, Mapping):
                raise ValueError(f"{section} must be a JSON object, got {values!r}")
            known = [item.name for item in dataclasses.fields(section_type)]
            for key in values:
                if key not in known:
                    raise ValueError(f"{section}.{key} is not a known field (known: {', '.join(known)})")
            sections[section] = section_type(**values)
        return cls(**sections)

    def to_spec(self) -> dict[str, Any]:
        """The spec as JSON-ready dicts with every default filled in (same nesting as the REST spec)."""
        spec = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}
        spec["search_space"]["primitives"] = list(self.search_space.primitives)
        return spec

    def replace(self, **overrides: Mapping[str, Any]) -> SearchConfig:
        """A copy with some fields of some sections changed, e.g. ``replace(training={"epochs": 3})``."""
        spec = self.to_spec()
        for section, values in overrides.items():
            if section not in _SECTIONS:
                raise ValueError(f"{section} is not a known field (known: {', '.join(_SECTIONS)})")
            spec[section].update(values)
        return SearchConfig.from_spec(spec)


# ---------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochResult:
    """What one finished search epoch reports (the epoch record of the REST contract).

    ``train_*`` are means over the epoch's weight steps (train mode). ``valid_*`` come from one pass over
    the whole search-valid split in eval mode after the epoch's last step (the supernet valid accuracy
    DARTS reports). ``lr`` is the weight learning rate used during the epoch, ``seconds`` its wall time
    (steps and validation). ``alphas`` holds the softmaxed architecture weights, ``{"normal": rows,
    "reduce": rows}``, one row per edge and one column per primitive.
    """

    epoch: int
    train_loss: float
    train_acc: float
    valid_loss: float
    valid_acc: float
    lr: float
    seconds: float
    genotype: Genotype
    alphas: dict[str, list[list[float]]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the fields above, ``genotype`` as :meth:`Genotype.to_json`."""
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "train_acc": self.train_acc,
            "valid_loss": self.valid_loss,
            "valid_acc": self.valid_acc,
            "lr": self.lr,
            "seconds": self.seconds,
            "genotype": self.genotype.to_json(),
            "alphas": {kind: [list(row) for row in rows] for kind, rows in self.alphas.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], primitives: Sequence[str] | None = None) -> EpochResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            epoch=int(data["epoch"]),
            train_loss=float(data["train_loss"]),
            train_acc=float(data["train_acc"]),
            valid_loss=float(data["valid_loss"]),
            valid_acc=float(data["valid_acc"]),
            lr=float(data["lr"]),
            seconds=float(data["seconds"]),
            genotype=Genotype.from_json(data["genotype"], primitives=primitives),
            alphas={kind: [list(map(float, row)) for row in rows] for kind, rows in data["alphas"].items()},
        )


@dataclass(frozen=True)
class SearchResult:
    """The outcome of :func:`run_search`.

    ``epochs_completed`` counts finished epochs (restored ones included); ``stopped`` is true when
    ``should_stop`` ended the search early; ``genotype`` is derived from the alphas of the last finished
    epoch (from the initial alphas when none finished); ``history`` has one entry per finished epoch.
    """

    epochs_completed: int
    stopped: bool
    genotype: Genotype
    history: list[EpochResult]


# ---------------------------------------------------------------------------------------------------
# The search loop
# ---------------------------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def _rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy, torch CPU and CUDA as tensors and plain values (safe to load)."""
    version, python_state, gauss = random.getstate()
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    return {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
            "pos": int(numpy_pos),
            "has_gauss": int(numpy_has_gauss),
            "gauss": float(numpy_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([item.cpu() for item in state["cuda"]])


def _split_indices(num_samples: int, train_portion: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded permutation of the training set cut into the search-train and search-valid parts."""
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(num_samples, generator=generator)
    split = int(math.floor(train_portion * num_samples))
    return permutation[:split], permutation[split:]


def _epoch_permutation(size: int, seed: int, epoch: int, stream: int) -> Tensor:
    """The data order of one split in one epoch: a function of (seed, epoch, split) only.

    Deriving it instead of drawing it from a running generator makes the data order part of the
    checkpoint for free: a resumed search visits the batches the uninterrupted one would have.
    """
    derived_seed = int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0])
    generator = torch.Generator().manual_seed(derived_seed)
    return torch.randperm(size, generator=generator)


def _batches(order: Tensor, batch_size: int, device: torch.device) -> list[Tensor]:
    """Full batches of indices on ``device`` (the remainder is dropped: every step sees ``batch_size``)."""
    count = order.numel() // batch_size
    return list(order[: count * batch_size].view(count, batch_size).to(device))


def _build_network(config: SearchConfig, in_channels: int, num_classes: int) -> nn.Module:
    return SearchNetwork(
        in_channels,
        num_classes,
        init_channels=config.network.init_channels,
        cells=config.network.cells,
        internal_nodes=config.search_space.internal_nodes,
        stem_multiplier=config.network.stem_multiplier,
        primitives=list(config.search_space.primitives),
    )


@torch.no_grad()
def _evaluate(
    network: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    autocast_dtype: torch.dtype | None,
    should_stop: Callable[[], bool] | None,
) -> tuple[float, float] | None:
    """Mean cross-entropy and accuracy of the network in eval mode over a whole split (None: stopped)."""
    network.eval()
    total_loss = torch.zeros((), device=images.device)
    total_correct = torch.zeros((), device=images.device)
    try:
        for start in range(0, images.shape[0], batch_size):
            if should_stop is not None and should_stop():
                return None
            x = images[start : start + batch_size]
            y = labels[start : start + batch_size]
            context = (
                torch.autocast(device_type=x.device.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with context:
                logits = network(x)
            total_loss += F.cross_entropy(logits.float(), y, reduction="sum")
            total_correct += (logits.argmax(dim=1) == y).sum()
    finally:
        network.train()
    loss, correct = torch.stack([total_loss, total_correct]).tolist()
    return loss / images.shape[0], correct / images.shape[0]


def _softmaxed_alphas(network: nn.Module) -> dict[str, list[list[float]]]:
    return {
        kind: weights.detach().float().cpu().tolist() for kind, weights in network.softmaxed_alphas().items()
    }


def _write_atomically(state: Mapping[str, Any], path: Path) -> None:
    """Write the checkpoint to a temporary file, flush it to disk, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _comparable_spec(config: SearchConfig) -> dict[str, Any]:
    spec = config.to_spec()
    del spec["resources"]  # a search may resume on another device
    return spec


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key in sorted(set(saved) | set(current)):
        path = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            yield from _differences(old, new, f"{path}.")
        elif old != new:
            yield f"{path} ({old!r} in the checkpoint, {new!r} now)"


def run_search(
    dataset: Any,
    config: SearchConfig,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    channels_last: bool = True,
) -> SearchResult:
    """Run a DARTS search on an in-memory dataset.

    Args:
        dataset: an :class:`~darts_core.data.ImageDataset`; only ``x_train`` (float32, N x C x H x W),
            ``y_train`` (int64, N), ``in_channels`` and ``num_classes`` are used. The test split is never
            touched.
        config: the validated spec.
        checkpoint_dir: when given, ``checkpoint_dir/checkpoint.pt`` is written (atomically) after every
            finished epoch, and a search started with a directory that holds one continues after its last
            finished epoch. The checkpoint must come from the same spec (``resources`` may differ).
        on_epoch: called with the :class:`EpochResult` of every finished epoch, after its checkpoint is
            written (so an epoch that was reported is never lost).
        should_stop: polled before every step and every validation batch; when it returns true the search
            returns at once with ``stopped=True`` and the unfinished epoch is neither recorded nor
            checkpointed (a later run with the same ``checkpoint_dir`` redoes it).
        progress: called after every step with ``(epoch, step, steps_per_epoch)`` (1-based epoch and step).
        channels_last: run the network and the images in ``torch.channels_last`` memory format (see
            :class:`DartsSearch`); checkpoints are the same either way and load into both.

    The training set is split by ``training.train_portion`` with a permutation seeded by ``training.seed``
    into search-train and search-valid. Each epoch walks the search-train split in a seeded order in full
    batches of ``batch_size`` and pairs each with a search-valid batch (cycling through the valid split
    when it has fewer batches), one :meth:`DartsSearch.step` per pair. Everything is seeded from
    ``training.seed`` (this sets the global ``random``, NumPy and torch seeds); on CPU, a resumed search
    ends bit-identical to an uninterrupted one.
    ``resources.device="auto"`` uses CUDA when present, with bf16 autocast (fp32 parameters) on CUDA.

    The checkpoint is a dict loadable with ``torch.load(path, weights_only=True)``: ``format`` (1),
    ``epoch`` (last finished), ``spec`` (:meth:`SearchConfig.to_spec`), ``search``
    (:meth:`DartsSearch.state_dict`), ``rng`` (Python, NumPy, torch and CUDA RNG states as tensors and
    plain values) and ``history`` (one :meth:`EpochResult.to_dict` per finished epoch).
    """
    training = config.training
    device = resolve_device(config.resources.device)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None

    x_all, y_all = dataset.x_train, dataset.y_train
    train_indices, valid_indices = _split_indices(len(y_all), training.train_portion, training.seed)
    for split, indices in (("search-train", train_indices), ("search-valid", valid_indices)):
        if len(indices) < training.batch_size:
            raise ValueError(
                f"training.batch_size ({training.batch_size}) is larger than the {split} split "
                f"({len(indices)} of {len(y_all)} training samples with train_portion "
                f"{training.train_portion:g}); lower the batch size or use more data"
            )

    _seed_everything(training.seed)
    network = _build_network(config, dataset.in_channels, dataset.num_classes).to(device)
    search = DartsSearch(
        network,
        order=training.order,
        weight_lr=training.weight_lr,
        weight_lr_min=training.weight_lr_min,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
        arch_lr=training.arch_lr,
        arch_weight_decay=training.arch_weight_decay,
        grad_clip=training.grad_clip,
        epochs=training.epochs,
        autocast_dtype=autocast_dtype,
        channels_last=channels_last,
    )

    # The data lives on the device once, in the network's memory format; batches are gathered by index
    # (which keeps the format, so DartsSearch has nothing to convert).
    memory_format = torch.channels_last if channels_last and x_all.dim() == 4 else torch.contiguous_format
    x_train = x_all[train_indices].to(device).contiguous(memory_format=memory_format)
    x_valid = x_all[valid_indices].to(device).contiguous(memory_format=memory_format)
    y_train, y_valid = y_all[train_indices].to(device), y_all[valid_indices].to(device)

    history: list[EpochResult] = []
    checkpoint_path = None
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME
        if checkpoint_path.exists():
            history = _restore(checkpoint_path, search, config, device)

    for epoch in range(len(history) + 1, training.epochs + 1):
        started = time.perf_counter()
        lr = search.lr
        train_order = _epoch_permutation(len(y_train), training.seed, epoch, 0)
        valid_order = _epoch_permutation(len(y_valid), training.seed, epoch, 1)
        train_batches = _batches(train_order, training.batch_size, device)
        valid_batches = _batches(valid_order, training.batch_size, device)
        sums = torch.zeros(4, device=device)
        for step, train_batch in enumerate(train_batches):
            if should_stop is not None and should_stop():
                return SearchResult(len(history), True, _last_genotype(history, network), history)
            valid_batch = valid_batches[step % len(valid_batches)]
            stats = search.step(
                (x_train[train_batch], y_train[train_batch]), (x_valid[valid_batch], y_valid[valid_batch])
            )
            sums += torch.stack([stats.train_loss, stats.train_acc, stats.valid_loss, stats.valid_acc])
            if progress is not None:
                progress(epoch, step + 1, len(train_batches))
        search.end_epoch()
        train_loss, train_acc = (sums[:2] / len(train_batches)).tolist()
        evaluated = _evaluate(network, x_valid, y_valid, 2 * training.batch_size, autocast_dtype, should_stop)
        if evaluated is None:
            return SearchResult(len(history), True, _last_genotype(history, network), history)
        valid_loss, valid_acc = evaluated
        result = EpochResult(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            valid_loss=valid_loss,
            valid_acc=valid_acc,
            lr=lr,
            seconds=time.perf_counter() - started,
            genotype=network.genotype(),
            alphas=_softmaxed_alphas(network),
        )
        history.append(result)
        if checkpoint_path is not None:
            _write_atomically(
                {
                    "format": _CHECKPOINT_FORMAT,
                    "epoch": epoch,
                    "spec": config.to_spec(),
                    "search": search.state_dict(),
                    "rng": _rng_state(),
                    "history": [item.to_dict() for item in history],
                },
                checkpoint_path,
            )
        if on_epoch is not None:
            on_epoch(result)

    return SearchResult(len(history), False, _last_genotype(history, network), history)


def _last_genotype(history: list[EpochResult], network: nn.Module) -> Genotype:
    return history[-1].genotype if history else network.genotype()


def _restore(
    path: Path, search: DartsSearch, config: SearchConfig, device: torch.device
) -> list[EpochResult]:
    """Load a checkpoint into ``search`` and the RNGs; return the recorded history."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which file
        raise ValueError(f"checkpoint {path} cannot be read: {error}") from error
    if not isinstance(state, Mapping) or state.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path} is not a darts_core search checkpoint (format {_CHECKPOINT_FORMAT})"
        )
    saved_spec = dict(state["spec"])
    saved_spec.pop("resources", None)
    differences = list(_differences(saved_spec, _comparable_spec(config)))
    if differences:
        raise ValueError(
            f"checkpoint {path} was written by a different search spec: {'; '.join(differences)}"
        )
    search.load_state_dict(state["search"])
    _set_rng_state(state["rng"])
    primitives = config.search_space.primitives
    return [EpochResult.from_dict(item, primitives=primitives) for item in state["history"]]

"""A textbook DARTS search step, written the way the DARTS reference code computes it.

This is the baseline of ``benchmarks/search_step.py`` and of ``tests/core/test_benchmark_equivalence.py``.
It is written from scratch to follow the computation of the reference implementation (quark0/darts,
``cnn/operations.py``, ``cnn/model_search.py``, ``cnn/architect.py`` and the step of
``cnn/train_search.py``), including the parts darts_core deliberately does differently:

- every operation applies its own ReLU (a state read by 8 operations is rectified 6 times);
- ``none`` is computed as ``x * 0`` and enters the weighted sum like any other operation;
- pools are followed by a non-affine BatchNorm;
- a mixed edge is ``sum(w * op(x))`` over all operations;
- the alphas are plain tensors held by the model (not parameters), optimised by Adam;
- the first-order architecture step calls ``loss.backward()``, which also computes every weight gradient;
- the weight step is SGD with momentum and weight decay after gradient-norm clipping;
- the second-order step builds a new model copy every step (a freshly constructed network loaded with
  ``load_state_dict``), unrolls one SGD step on it, backpropagates the validation loss through it and
  corrects the alpha gradient with the finite-difference Hessian-vector product (two more forward and
  backward passes on the original model).

Parameters and buffers are registered in the same order as :class:`darts_core.nn.search_network.SearchNetwork`
registers its weights, so :func:`load_from_search_network` can copy a darts_core network into a
reference network (by order, checking every shape) and both start from the same state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PRIMITIVES",
    "ReferenceNetwork",
    "ReferenceSearch",
    "load_from_search_network",
]

#: The DARTS operations, in the column order of the alphas.
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


# --------------------------------------------------------------------------- operations


class ReLUConvBN(nn.Module):
    """ReLU -> conv (no bias) -> BN: (N, C_in, H, W) -> (N, C_out, H', W')."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> depthwise (dilated) conv -> 1x1 conv -> BN."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, dilation: int, affine: bool
    ):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                c_in, c_in, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=c_in,
                bias=False,
            ),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked ReLU -> depthwise -> pointwise -> BN blocks; only the first is strided."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride=stride, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride=1, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` operation as the reference computes it: the (strided) input times zero."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs (the second on the input shifted by one pixel), concat, BN.

    Shape: (N, C_in, H, W) -> (N, C_out, H / 2, W / 2) for even H and W (the reference's assumption).
    """

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def build_operation(name: str, c: int, stride: int, affine: bool) -> nn.Module:
    """One candidate operation of a mixed edge, pools already followed by their BN."""
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride=stride, padding=1), nn.BatchNorm2d(c, affine=False))
    if name == "avg_pool_3x3":
        pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False))
    if name == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1, affine)
    if name == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, 2, affine)
    if name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2, affine)
    if name == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2, affine)
    raise ValueError(f"unknown primitive {name!r}; expected one of {PRIMITIVES}")


# --------------------------------------------------------------------------- network


class MixedOp(nn.Module):
    """``sum_k w_k * op_k(x)`` over every operation, ``none`` included."""

    def __init__(self, c: int, stride: int):
        super().__init__()
        self.ops = nn.ModuleList(build_operation(name, c, stride, affine=False) for name in PRIMITIVES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))


class SearchCell(nn.Module):
    """A search cell: two preprocessed inputs, ``steps`` nodes, every edge a :class:`MixedOp`."""

    def __init__(
        self, steps: int, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool
    ):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for node in range(steps):
            for source in range(2 + node):
                self.edges.append(MixedOp(c, 2 if reduction and source < 2 else 1))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            node = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self.steps :], dim=1)


class ReferenceNetwork(nn.Module):
    """The DARTS supernet as the reference builds it (reductions at 1/3 and 2/3 of the depth).

    The alphas are plain tensors with ``requires_grad`` (not parameters), so :meth:`parameters` yields
    only the operation weights, as in the reference.

    Shape: (N, in_channels, H, W) -> logits (N, num_classes); H and W even at every reduction.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        init_channels: int = 16,
        cells: int = 8,
        steps: int = 4,
        stem_multiplier: int = 3,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        self.config = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            init_channels=init_channels,
            cells=cells,
            steps=steps,
            stem_multiplier=stem_multiplier,
        )
        self.device = torch.device(device)
        c_curr = stem_multiplier * init_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, init_channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for index in range(cells):
            reduction = index in (cells // 3, 2 * cells // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(SearchCell(steps, c_prev_prev, c_prev, c_curr, reduction, reduction_prev))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, steps * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        self.to(self.device)
        num_edges = sum(2 + node for node in range(steps))
        shape = (num_edges, len(PRIMITIVES))
        self.alphas_normal = (1e-3 * torch.randn(shape, device=self.device)).requires_grad_()
        self.alphas_reduce = (1e-3 * torch.randn(shape, device=self.device)).requires_grad_()

    def new(self) -> ReferenceNetwork:
        """A freshly constructed network with the same alphas (weights are loaded by the caller)."""
        model = ReferenceNetwork(**self.config, device=self.device)
        for new_alpha, alpha in zip(model.arch_parameters(), self.arch_parameters(), strict=True):
            new_alpha.data.copy_(alpha.data)
        return model

    def arch_parameters(self) -> list[torch.Tensor]:
        return [self.alphas_normal, self.alphas_reduce]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
            s0, s1 = s1, cell(s0, s1, F.softmax(alphas, dim=-1))
        pooled = self.global_pooling(s1)
        return self.classifier(pooled.view(pooled.size(0), -1))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(x), y)


@torch.no_grad()
def load_from_search_network(reference: ReferenceNetwork, network: nn.Module) -> None:
    """Copy the weights, buffers and alphas of a darts_core ``SearchNetwork`` into ``reference``.

    Tensors are matched by registration order (both networks register stem, cells in order with
    preprocess0, preprocess1 and the edges' operations in DARTS order, then the classifier); every pair
    must have the same shape.

    Raises:
        ValueError: the two networks do not have the same number of tensors or a shape differs.
    """
    pairs = (
        ("weights", list(reference.parameters()), list(network.weight_parameters())),
        ("buffers", list(reference.buffers()), list(network.buffers())),
        ("alphas", reference.arch_parameters(), list(network.arch_parameters())),
    )
    for kind, targets, sources in pairs:
        if len(targets) != len(sources):
            raise ValueError(
                f"network: the reference has {len(targets)} {kind} and the darts_core network "
                f"{len(sources)}; build both with the same configuration"
            )
        for index, (target, source) in enumerate(zip(targets, sources, strict=True)):
            if target.shape != source.shape:
                raise ValueError(
                    f"network: {kind} #{index} has shape {tuple(source.shape)} in the darts_core network "
                    f"and {tuple(target.shape)} in the reference"
                )
            target.copy_(source)


# --------------------------------------------------------------------------- search step


#: ``(images, labels)``: (N, C, H, W) float and (N,) int64.
Batch = tuple[torch.Tensor, torch.Tensor]


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class ReferenceSearch:
    """One bilevel DARTS step as the reference computes it (architect.step, then the weight step).

    Args:
        model: the supernet.
        order: ``"first"`` or ``"second"`` (the reference's ``--unrolled``).
        weight_lr, momentum, weight_decay: SGD of the weights; ``weight_lr`` is also the ``eta`` of the
            unrolled step.
        arch_lr, arch_weight_decay: Adam of the alphas (betas 0.5, 0.999).
        grad_clip: max norm of the weight gradient.
    """

    def __init__(
        self,
        model: ReferenceNetwork,
        order: str = "first",
        weight_lr: float = 0.025,
        momentum: float = 0.9,
        weight_decay: float = 3e-4,
        arch_lr: float = 3e-4,
        arch_weight_decay: float = 1e-3,
        grad_clip: float = 5.0,
        fd_radius: float = 1e-2,
    ):
        if order not in ("first", "second"):
            raise ValueError(f"order must be 'first' or 'second', got {order!r}")
        self.model = model
        self.order = order
        self.weight_lr = weight_lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.fd_radius = fd_radius
        self.weight_optimizer = torch.optim.SGD(
            model.parameters(), lr=weight_lr, momentum=momentum, weight_decay=weight_decay
        )
        self.arch_optimizer = torch.optim.Adam(
            model.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999), weight_decay=arch_weight_decay
        )
        #: Copies of the alpha gradients of the last architecture step (for tests; cheap).
        self.last_arch_gradients: list[torch.Tensor] = []

    # architect.step -------------------------------------------------------------------------
    def arch_step(self, train_batch: Batch, valid_batch: Batch) -> torch.Tensor:
        self.arch_optimizer.zero_grad()
        if self.order == "second":
            loss = self._backward_step_unrolled(train_batch, valid_batch)
        else:
            loss = self.model.loss(*valid_batch)
            loss.backward()  # also fills every weight's .grad, as the reference does
        self.last_arch_gradients = [
            torch.zeros_like(alpha) if alpha.grad is None else alpha.grad.detach().clone()
            for alpha in self.model.arch_parameters()
        ]
        self.arch_optimizer.step()
        return loss

    def _unrolled_model(self, x: torch.Tensor, y: torch.Tensor) -> ReferenceNetwork:
        """w' = w - eta * (momentum * buf + dL_train/dw + wd * w) on a new model copy."""
        loss = self.model.loss(x, y)
        weights = list(self.model.parameters())
        theta = _flat(weights).detach()
        try:
            buffers = [self.weight_optimizer.state[w]["momentum_buffer"] for w in weights]
            moment = _flat(buffers) * self.momentum
        except (KeyError, TypeError):
            moment = torch.zeros_like(theta)
        dtheta = _flat(torch.autograd.grad(loss, weights)).detach() + self.weight_decay * theta
        return self._model_from_theta(theta - self.weight_lr * (moment + dtheta))

    def _model_from_theta(self, theta: torch.Tensor) -> ReferenceNetwork:
        model_new = self.model.new()
        state = self.model.state_dict()
        offset = 0
        for name, weight in self.model.named_parameters():
            length = weight.numel()
            state[name] = theta[offset : offset + length].view(weight.size())
            offset += length
        model_new.load_state_dict(state)
        return model_new

    def _backward_step_unrolled(self, train_batch: Batch, valid_batch: Batch) -> torch.Tensor:
        unrolled = self._unrolled_model(*train_batch)
        unrolled_loss = unrolled.loss(*valid_batch)
        unrolled_loss.backward()
        dalpha = [alpha.grad for alpha in unrolled.arch_parameters()]
        vector = [w.grad.detach() for w in unrolled.parameters()]
        implicit = self._hessian_vector_product(vector, *train_batch)
        for g, ig in zip(dalpha, implicit, strict=True):
            g.sub_(self.weight_lr * ig)
        for alpha, g in zip(self.model.arch_parameters(), dalpha, strict=True):
            if alpha.grad is None:
                alpha.grad = g.detach().clone()
            else:
                alpha.grad.copy_(g)
        return unrolled_loss

    def _hessian_vector_product(self, vector: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        """(d/dalpha dL_train(w+)/dw . v - same at w-) / 2R with w+- = w +- R v, R = r / |v|."""
        radius = self.fd_radius / _flat(vector).norm()
        weights = list(self.model.parameters())
        with torch.no_grad():
            for w, v in zip(weights, vector, strict=True):
                w.add_(v, alpha=radius)
        grads_p = torch.autograd.grad(self.model.loss(x, y), self.model.arch_parameters())
        with torch.no_grad():
            for w, v in zip(weights, vector, strict=True):
                w.sub_(v, alpha=2 * radius)
        grads_n = torch.autograd.grad(self.model.loss(x, y), self.model.arch_parameters())
        with torch.no_grad():
            for w, v in zip(weights, vector, strict=True):
                w.add_(v, alpha=radius)
        return [(p - n).div_(2 * radius) for p, n in zip(grads_p, grads_n, strict=True)]

    # weight step (train_search.train) --------------------------------------------------------
    def weight_step(self, train_batch: Batch) -> torch.Tensor:
        self.weight_optimizer.zero_grad()
        loss = self.model.loss(*train_batch)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.weight_optimizer.step()
        return loss

    def step(self, train_batch: Batch, valid_batch: Batch) -> tuple[float, float]:
        """One bilevel step; returns ``(arch_loss, train_loss)`` (the arch loss is the validation loss,
        of the unrolled model for the second order)."""
        arch_loss = self.arch_step(train_batch, valid_batch)
        train_loss = self.weight_step(train_batch)
        return float(arch_loss.detach()), float(train_loss.detach())

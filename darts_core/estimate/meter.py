"""Measuring what autograd saves: :class:`SavedTensorMeter` and a real search step measured with it."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from darts_core.nn.search_network import SearchNetwork
from darts_core.search.bilevel import DartsSearch
from darts_core.search.methods import method_for
from darts_core.spec.search_spec import SearchConfig

__all__ = ["AllocationMeter", "SavedTensorMeter", "measure_hessian", "measure_step"]


def _storage_key(tensor: torch.Tensor) -> tuple[int, int] | None:
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or otherwise storage-less tensors
        return None
    # Meta storages have no data pointer (all are 0): the storage object's own address tells them apart.
    address = storage._cdata if tensor.device.type == "meta" else storage.data_ptr()
    return address, storage.nbytes()


class SavedTensorMeter:
    """Counts the activation bytes autograd saves for backward (unique storages).

    ``total_bytes``: every storage packed while active (one forward/backward: what its graph holds).
    ``peak_live_bytes``: the largest sum of packed storages alive at the same time (storages leave the
    count when the last packed tensor of that storage is freed, i.e. when its graph is released).
    Storages of ``exclude`` (parameters and buffers) are never counted.
    """

    def __init__(self, exclude: Sequence[torch.Tensor] = ()):
        self._excluded = {key for key in map(_storage_key, exclude) if key is not None}
        self._seen: set[tuple[int, int]] = set()
        self._live: dict[tuple[int, int], int] = {}
        self.total_bytes = 0
        self.live_bytes = 0
        self.peak_live_bytes = 0

    def _release(self, key: tuple[int, int]) -> None:
        self._live[key] -= 1
        if self._live[key] == 0:
            del self._live[key]
            self.live_bytes -= key[1]

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key is None or key in self._excluded or key[1] == 0:
            return tensor
        if key not in self._seen:
            self._seen.add(key)
            self.total_bytes += key[1]
        if key not in self._live:
            self._live[key] = 0
            self.live_bytes += key[1]
            self.peak_live_bytes = max(self.peak_live_bytes, self.live_bytes)
        self._live[key] += 1
        weakref.finalize(tensor, self._release, key)
        return tensor

    @contextlib.contextmanager
    def active(self) -> Iterator[SavedTensorMeter]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self


class AllocationMeter(TorchDispatchMode):
    """The peak bytes of the tensors operations create while it is active and that are still alive
    (unique storages; what existed before is not counted). Slow (a Python call per operation): for
    measurements on small configurations. ``peak_bytes`` after the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self._references: dict[tuple[int, int], int] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def _release(self, key: tuple[int, int]) -> None:
        self._references[key] -= 1
        if self._references[key] == 0:
            del self._references[key]
            self.live_bytes -= key[1]

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            key = _storage_key(tensor) if isinstance(tensor, torch.Tensor) else None
            if key is None or key[0] == 0:
                continue
            if key not in self._references:
                self._references[key] = 0
                self.live_bytes += key[1]
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            self._references[key] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def measure_hessian(
    config: SearchConfig,
    *,
    in_channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    seed: int = 0,
    iterations: int = 1,
) -> int:
    """The peak bytes the Hessian-eigenvalue pass allocates (:class:`AllocationMeter`) on CPU for a
    supernet of ``config`` and a random batch of ``training.batch_size`` images, as the search runs it
    between epochs (the state it finds is not counted). Slow: use small configurations."""
    from darts_core.search.collapse import dominant_hessian_eigenvalue

    training = config.training
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    network = SearchNetwork.from_config(config, in_channels, num_classes)
    images = torch.randn(training.batch_size, in_channels, *image_size, generator=generator)
    labels = torch.randint(0, num_classes, (training.batch_size,), generator=generator)
    with AllocationMeter() as meter:
        dominant_hessian_eigenvalue(network, (images, labels), iterations=iterations, seed=seed)
    return meter.peak_bytes


def _tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def measure_step(
    config: SearchConfig,
    *,
    in_channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, int]:
    """Measure one real bilevel step of ``config`` on CPU (fp32, or under ``autocast_dtype`` autocast:
    the path a GPU takes, its recomputing Functions off) on random data.

    Returns ``state_bytes`` (parameters, gradients and optimizer states after the step, counted from
    the tensors) and ``saved_bytes`` (the peak of live saved activations during the second step, when
    the optimizers have their states; :class:`SavedTensorMeter`). Allocates what the step needs: use
    small configurations.
    """
    training = config.training
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    network = SearchNetwork.from_config(config, in_channels, num_classes)
    search = DartsSearch(
        network,
        order=training.order,
        epochs=1,
        autocast_dtype=autocast_dtype,
        method=method_for(config.method, config.search_space.primitives),
    )

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(training.batch_size, in_channels, *image_size, generator=generator)
        labels = torch.randint(0, num_classes, (training.batch_size,), generator=generator)
        return images, labels

    search.step(batch(), batch())
    meter = SavedTensorMeter([*network.parameters(), *network.buffers()])
    with meter.active():
        search.step(batch(), batch())
    parameters = list(network.parameters())
    optimizer_states = [
        value
        for optimizer in (search.weight_optimizer, search.arch_optimizer)
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    ]
    state_bytes = (
        _tensor_bytes(iter(parameters))
        + _tensor_bytes(p.grad for p in parameters if p.grad is not None)
        + _tensor_bytes(iter(optimizer_states))
    )
    return {"state_bytes": state_bytes, "saved_bytes": meter.peak_live_bytes}


# ------------------------------------------------------------------------------------------ retraining

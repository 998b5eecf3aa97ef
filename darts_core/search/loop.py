"""The resumable DARTS search loop: :func:`run_search` and what it reports.

:func:`run_search` runs a whole search on an in-memory
:class:`~darts_core.data.registry.ImageDataset`, reports every finished epoch through a callback and
writes a checkpoint after each, from which a restarted search continues bit-identically (on CPU) to one that
was never interrupted.

The step itself is :class:`~darts_core.search.bilevel.DartsSearch`, the spec
:class:`~darts_core.spec.search_spec.SearchConfig` and the checkpoint files
:mod:`darts_core.checkpoint`; their names are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from darts_core.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    load_checkpoint,
    rng_state,
    set_rng_state,
    spec_differences,
    write_checkpoint,
)
from darts_core.data.augment import epoch_generator, resolve_augmentation
from darts_core.data.device_images import DeviceImages, dataset_images_on_device
from darts_core.device import resolve_device
from darts_core.nn.buffers import buffers_preserved
from darts_core.nn.edge_weights import EdgeMixing
from darts_core.nn.search_network import SearchNetwork
from darts_core.precision import resolve_autocast
from darts_core.search.bilevel import DartsSearch, StepResult
from darts_core.search.budget import SearchBudget
from darts_core.search.collapse import (
    CollapseMetrics,
    EarlyStop,
    collapse_metrics,
    darts_plus_rule,
    dominant_hessian_eigenvalue,
    eigenvalue_rule,
    mean_alpha_entropy,
    parameter_free_count,
    skip_count,
)
from darts_core.search.methods import method_for
from darts_core.spec.genotype import Genotype
from darts_core.spec.records import EpochRecord
from darts_core.spec.search_spec import (
    NetworkConfig,
    ResourcesConfig,
    SearchConfig,
    SearchSpaceConfig,
    TrainingConfig,
)

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


@dataclass(frozen=True)
class EpochResult:
    """What one finished search epoch reports: :class:`~darts_core.spec.records.EpochRecord` (which documents
    the fields) with ``genotype`` as a :class:`Genotype`.

    ``valid_*`` are the supernet valid accuracy DARTS reports (under the method's eval-mode weights:
    for ``random_ws`` those of the epoch's genotype); ``seconds`` covers steps and validation.
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
    skip_connections: int | None = None
    parameter_free_ops: int | None = None
    alpha_entropy: float | None = None
    hessian_eigenvalue: float | None = None
    cost: dict[str, float] | None = None
    method: str | None = None
    schedule: dict[str, float] | None = None

    def collapse(self) -> CollapseMetrics:
        """The epoch's collapse metrics (computed from the genotype and alphas when not recorded)."""
        skips, free, entropy = self.skip_connections, self.parameter_free_ops, self.alpha_entropy
        return CollapseMetrics(
            skip_connections=skip_count(self.genotype) if skips is None else skips,
            parameter_free_ops=parameter_free_count(self.genotype) if free is None else free,
            alpha_entropy=mean_alpha_entropy(self.alphas) if entropy is None else entropy,
            hessian_eigenvalue=self.hessian_eigenvalue,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: an :class:`~darts_core.spec.records.EpochRecord` dict (``genotype`` as
        :meth:`Genotype.to_json`)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        values["genotype"] = self.genotype.to_json()
        return EpochRecord.model_validate(values).model_dump()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], primitives: Sequence[str] | None = None) -> EpochResult:
        """Inverse of :meth:`to_dict` (the record is validated by :class:`EpochRecord`)."""
        values = EpochRecord.model_validate(dict(data)).model_dump()
        values["genotype"] = Genotype.from_json(values["genotype"], primitives=primitives)
        return cls(**values)


@dataclass(frozen=True)
class SearchResult:
    """The outcome of :func:`run_search`.

    ``epochs_completed`` counts finished epochs (restored ones included); ``stopped`` is true when
    ``should_stop`` ended the search early; ``genotype`` is derived from the alphas of the last finished
    epoch (from the initial alphas when none finished); ``history`` has one entry per finished epoch.
    ``stopped_early`` is true when the spec's ``training.early_stop`` rule ended the search (a search
    that then counts as finished, not interrupted); ``stop_reason`` says why, and ``genotype`` is then
    the one the rule keeps (an earlier epoch's).
    """

    epochs_completed: int
    stopped: bool
    genotype: Genotype
    history: list[EpochResult]
    stopped_early: bool = False
    stop_reason: str | None = None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


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
    return torch.randperm(size, generator=epoch_generator(seed, epoch, stream))


def _batches(order: Tensor, batch_size: int, device: torch.device) -> list[Tensor]:
    """Full batches of indices on ``device`` (the remainder is dropped: every step sees ``batch_size``)."""
    count = order.numel() // batch_size
    return list(order[: count * batch_size].view(count, batch_size).to(device))


@torch.no_grad()
def _evaluate(
    network: nn.Module,
    images: Tensor | DeviceImages,
    labels: Tensor,
    batch_size: int,
    autocast_dtype: torch.dtype | None,
    should_stop: Callable[[], bool] | None,
    mixing: Any = None,
    batch_statistics: bool = False,
) -> tuple[float, float] | None:
    """Mean cross-entropy and accuracy of the network in eval mode over a whole split (None: stopped).

    ``mixing``: the search method's eval-mode operation weights (``None``: the softmaxed alphas).
    ``batch_statistics``: BatchNorm normalises each batch by its own statistics (the running ones are
    left as they were), for a method whose running statistics mix many sampled architectures.
    """
    total_loss = torch.zeros((), device=images.device)
    total_correct = torch.zeros((), device=images.device)
    with contextlib.ExitStack() as restore:
        network.eval()
        restore.callback(network.train)
        if batch_statistics:
            restore.enter_context(buffers_preserved(network))
            for module in network.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train()
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
                logits = network(x) if mixing is None else network(x, mixing=mixing)
            total_loss += F.cross_entropy(logits.float(), y, reduction="sum")
            total_correct += (logits.argmax(dim=1) == y).sum()
    loss, correct = torch.stack([total_loss, total_correct]).tolist()
    return loss / images.shape[0], correct / images.shape[0]


def _softmaxed_alphas(network: SearchNetwork) -> dict[str, list[list[float]]]:
    return {
        kind: weights.detach().float().cpu().tolist() for kind, weights in network.softmaxed_alphas().items()
    }


def _early_stop(config: SearchConfig, history: list[EpochResult]) -> EarlyStop | None:
    """The decision of the spec's ``training.early_stop`` rule on the history (None: go on)."""
    training = config.training
    if training.early_stop is None or not history:
        return None
    metrics = [item.collapse() for item in history]
    if training.early_stop == "darts_plus":
        return darts_plus_rule(metrics, training.max_skip_connections)
    return eigenvalue_rule(metrics, training.eigenvalue_window, training.eigenvalue_threshold)


def _stopped_early(
    decision: EarlyStop, history: list[EpochResult], initial_genotype: Genotype
) -> SearchResult:
    kept = history[decision.keep_epoch - 1].genotype if decision.keep_epoch >= 1 else initial_genotype
    return SearchResult(len(history), False, kept, history, stopped_early=True, stop_reason=decision.reason)


def _comparable_spec(config: SearchConfig) -> dict[str, Any]:
    spec = config.to_spec()
    del spec["resources"]  # a search may resume on another device
    return spec


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
        dataset: an :class:`~darts_core.data.registry.ImageDataset`; only ``x_train``
            (float32, N x C x H x W), ``y_train`` (int64, N), ``in_channels`` and ``num_classes`` are
            used. The test split is never touched.
        config: the validated spec.
        checkpoint_dir: when given, a checkpoint (:mod:`darts_core.checkpoint`) is written there after
            every finished epoch, and a search started with a directory that holds one continues after its
            last finished epoch. The checkpoint must come from the same spec (``resources`` may differ).
            A full disk raises :class:`~darts_core.checkpoint.CheckpointDiskFull`.
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
    ``resources.device="auto"`` uses CUDA when present; ``resources.precision="auto"`` runs the weight
    step under bf16 autocast (fp32 parameters) on CUDA, in fp32 on CPU; the architecture step is fp32.

    Every epoch records the collapse metrics of :mod:`darts_core.search.collapse`; every
    ``training.hessian_every`` epochs also the dominant eigenvalue of the Hessian of the loss with
    respect to the alphas, on a fixed batch (the first ``batch_size`` images of the search-valid split).
    After each epoch (and on resume) the ``training.early_stop`` rule, if any, is asked whether to stop:
    the search then returns ``stopped_early=True`` with the rule's reason and the genotype it keeps.

    The checkpoint's contents are described in :mod:`darts_core.checkpoint`.
    """
    training = config.training
    device = resolve_device(config.resources.device)
    autocast_dtype = resolve_autocast(config.resources.precision, device)

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
    network = SearchNetwork.from_config(config, dataset.in_channels, dataset.num_classes).to(device)
    method = method_for(config.method, config.search_space.primitives)
    network.operation_weights = method.operation_weights  # what is reported and derived from
    budget = SearchBudget.of(config, dataset, method.operation_weights) if config.constraints.active else None
    derive = budget.genotype if budget is not None else _plain_genotype
    initial_genotype = derive(network)  # what DARTS+ keeps when it stops after the first epoch
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
        arch_penalty=budget.penalty if budget is not None else None,
        method=method,
        compile=config.resources.compile == "torch.compile",
    )

    # The data lives on the device once, in the network's memory format; batches are gathered by index
    # (which keeps the format, so DartsSearch has nothing to convert).
    memory_format = torch.channels_last if channels_last and x_all.dim() == 4 else torch.contiguous_format
    # uint8 images stay uint8 there and are normalised batch by batch (darts_core.data.device_images).
    x_train = dataset_images_on_device(dataset, x_all[train_indices], device, memory_format)
    x_valid = dataset_images_on_device(dataset, x_all[valid_indices], device, memory_format)
    y_train, y_valid = y_all[train_indices].to(device), y_all[valid_indices].to(device)

    augment = resolve_augmentation(
        training.augmentation.crop_padding,
        training.augmentation.horizontal_flip,
        getattr(dataset, "name", ""),
        tuple(x_all.shape[-2:]),
        tuple(getattr(dataset, "class_names", ())),
    )
    history: list[EpochResult] = []
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        loaded = load_checkpoint(checkpoint_dir, map_location=device)
        if loaded is not None:
            history = _restore(*loaded, search, config)
            # A search stopped by its rule right after a checkpoint (before it could report) ends here.
            decision = _early_stop(config, history)
            if decision is not None:
                return _stopped_early(decision, history, initial_genotype)
    hessian_batch = (x_valid[: training.batch_size], y_valid[: training.batch_size])

    def score(mixing: tuple[EdgeMixing, EdgeMixing], batches: int | None) -> tuple[float, float]:
        # A method's scoring of operation weights (random_ws): the first `batches` batches of the
        # search-valid split (a fixed part, the same for every candidate), or all of it.
        end = len(y_valid) if batches is None else batches * training.batch_size
        size = 2 * training.batch_size
        scored = _evaluate(
            network, x_valid[:end], y_valid[:end], size, autocast_dtype, should_stop, mixing,
            batch_statistics=method.eval_batch_statistics,
        )  # fmt: skip
        if scored is None:
            raise _Stopped
        return scored

    for epoch in range(len(history) + 1, training.epochs + 1):
        started = time.perf_counter()
        lr = search.lr
        method.start_epoch(epoch, training.epochs)
        train_order = _epoch_permutation(len(y_train), training.seed, epoch, 0)
        valid_order = _epoch_permutation(len(y_valid), training.seed, epoch, 1)
        train_batches = _batches(train_order, training.batch_size, device)
        valid_batches = _batches(valid_order, training.batch_size, device)
        # Weight-step batches only (darts_core.data.augment; docs/library.md says why).
        augment_draws = epoch_generator(training.seed, epoch, 2)
        sums = torch.zeros(4, device=device)
        for step, train_batch in enumerate(train_batches):
            if should_stop is not None and should_stop():
                return SearchResult(len(history), True, _last_genotype(history, network, derive), history)
            valid_batch = valid_batches[step % len(valid_batches)]
            images = augment(x_train[train_batch], augment_draws)
            stats = search.step((images, y_train[train_batch]), (x_valid[valid_batch], y_valid[valid_batch]))
            sums += torch.stack([stats.train_loss, stats.train_acc, stats.valid_loss, stats.valid_acc])
            if progress is not None:
                progress(epoch, step + 1, len(train_batches))
        search.end_epoch()
        train_loss, train_acc = (sums[:2] / len(train_batches)).tolist()
        try:
            chosen = method.derive(network, score, epoch == training.epochs)
        except _Stopped:
            return SearchResult(len(history), True, _last_genotype(history, network, derive), history)
        evaluated = _evaluate(
            network,
            x_valid,
            y_valid,
            2 * training.batch_size,
            autocast_dtype,
            should_stop,
            method.eval_mixing(network.arch_parameters()),
            batch_statistics=method.eval_batch_statistics,
        )
        if evaluated is None:
            return SearchResult(len(history), True, _last_genotype(history, network, derive), history)
        valid_loss, valid_acc = evaluated
        eigenvalue = None
        if training.hessian_every is not None and epoch % training.hessian_every == 0:
            eigenvalue = dominant_hessian_eigenvalue(network, hessian_batch, seed=training.seed).value
        metrics = collapse_metrics(network, eigenvalue, chosen)
        result = EpochResult(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            valid_loss=valid_loss,
            valid_acc=valid_acc,
            lr=lr,
            seconds=time.perf_counter() - started,
            genotype=(genotype := derive(network) if chosen is None else chosen),
            alphas=_softmaxed_alphas(network),
            skip_connections=metrics.skip_connections,
            parameter_free_ops=metrics.parameter_free_ops,
            alpha_entropy=metrics.alpha_entropy,
            hessian_eigenvalue=metrics.hessian_eigenvalue,
            cost=budget.report(network, genotype) if budget is not None else None,
            method=method.name,
            schedule=method.schedule(),
        )
        history.append(result)
        if checkpoint_dir is not None:
            write_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch,
                    "spec": config.to_spec(),
                    "search": search.state_dict(),
                    "rng": rng_state(device),
                    "history": [item.to_dict() for item in history],
                },
                checkpoint_dir,
            )
        if on_epoch is not None:
            on_epoch(result)
        decision = _early_stop(config, history)
        if decision is not None:
            return _stopped_early(decision, history, initial_genotype)

    return SearchResult(len(history), False, _last_genotype(history, network, derive), history)


class _Stopped(Exception):
    """``should_stop`` asked to stop while a search method scored architectures."""


def _last_genotype(
    history: list[EpochResult], network: SearchNetwork, derive: Callable[[SearchNetwork], Genotype]
) -> Genotype:
    return history[-1].genotype if history else derive(network)


def _plain_genotype(network: SearchNetwork) -> Genotype:
    return network.genotype()


def _device_of(search: DartsSearch) -> torch.device:
    return search.weights[0].device


def _restore(
    state: Mapping[str, Any], path: Path, search: DartsSearch, config: SearchConfig
) -> list[EpochResult]:
    """Load a checkpoint into ``search`` and the RNGs; return the recorded history."""
    saved_spec = dict(state["spec"])
    saved_spec.pop("resources", None)
    with contextlib.suppress(ValueError):
        # Fields added since the checkpoint was written take their defaults (same search, older spec).
        saved_spec = SearchConfig.from_spec(saved_spec).to_spec()
        saved_spec.pop("resources", None)
    differences = list(spec_differences(saved_spec, _comparable_spec(config)))
    if differences:
        raise ValueError(
            f"checkpoint {path} was written by a different search spec: {'; '.join(differences)}"
        )
    search.load_state_dict(state["search"])
    set_rng_state(state["rng"], _device_of(search))
    primitives = config.search_space.primitives
    return [EpochResult.from_dict(item, primitives=primitives) for item in state["history"]]

"""The resumable retraining loop: :func:`run_training_job` and what it reports.

:func:`run_training_job` trains :class:`~darts_core.nn.genotype_network.GenotypeNetwork` of a genotype from
scratch as the DARTS evaluation does, holds out a stratified validation split of the training data (the
metric a study selects by), tests on the held-out test split after every epoch, and writes a checkpoint
after each epoch from which a restarted training continues bit-identically (on CPU) to one that was never
interrupted. :func:`darts_core.train.train_genotype` is a thin wrapper over it.

The checkpoint files are :mod:`darts_core.checkpoint`'s (two generations, atomic writes, a corrupt latest
file passed over); a training checkpoint holds:

* ``format``, ``kind`` (``"training"``), ``epoch`` (the last finished one);
* ``spec``: :meth:`TrainingJobConfig.to_spec` without ``resources`` (a training may resume on another
  device), ``genotype`` (:meth:`Genotype.to_json`) and ``data`` (image shape, classes, training samples);
* ``network``, ``optimizer``, ``scheduler``: the state dicts;
* ``rng``: :func:`~darts_core.checkpoint.rng_state` (the global torch RNG drives drop-path and cutout)
  and ``data_order``: the state of the generator of the per-epoch data order;
* ``history``: one :meth:`TrainEpoch.to_dict` per finished epoch (what
  :func:`~darts_core.checkpoint.read_history` returns).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from darts_core.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_optimizer_state,
    rng_state,
    set_rng_state,
    spec_differences,
    write_checkpoint,
)
from darts_core.data.augment import RandomCropFlip, epoch_generator, resolve_augmentation
from darts_core.data.device_images import DeviceImages, dataset_images_on_device
from darts_core.data.registry import ImageDataset
from darts_core.device import resolve_device
from darts_core.nn.genotype_network import GenotypeNetwork
from darts_core.nn.multiply_adds import count_multiply_adds
from darts_core.nn.ops import DARTS_PRIMITIVES_2D
from darts_core.precision import resolve_autocast
from darts_core.spec.genotype import Genotype
from darts_core.spec.training_spec import TrainingJobConfig
from darts_core.train.records import TrainEpoch, TrainingDiverged, TrainingStopped, TrainResult

__all__ = [
    "run_training_job",
    "validation_split",
    "apply_cutout",
    "CHECKPOINT_KIND",
    "VALIDATION_SPLIT_SEED",
]

#: ``kind`` of a training checkpoint (a search checkpoint has none).
CHECKPOINT_KIND = "training"
#: Seed of the validation split: a constant, never ``training.seed``, so trainings of any seed and any
#: genotype on the same data are compared on the same validation examples.
VALIDATION_SPLIT_SEED = 0
#: The stream of :func:`~darts_core.data.augment.epoch_generator` the augmentation draws from.
AUGMENTATION_STREAM = 3


def apply_cutout(images: Tensor, length: int, generator: torch.Generator | None = None) -> Tensor:
    """Cutout (DeVries & Taylor, 2017): zeroes one ``length`` x ``length`` square per image.

    The square's centre is uniform over the image and the square is clipped at the borders, as in the
    DARTS training code. Shapes: N x C x H x W -> the same (a new tensor).
    """
    n, _, height, width = images.shape
    centre_y = torch.randint(height, (n, 1, 1), generator=generator, device=images.device)
    centre_x = torch.randint(width, (n, 1, 1), generator=generator, device=images.device)
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, width)
    half = length // 2
    inside = (
        (rows >= centre_y - half)
        & (rows < centre_y + half)
        & (cols >= centre_x - half)
        & (cols < centre_x + half)
    )
    return images * (~inside).unsqueeze(1).to(images.dtype)


def validation_split(labels: Tensor, valid_fraction: float) -> tuple[Tensor, Tensor]:
    """Stratified ``(train_indices, valid_indices)`` of a training split with labels ``labels`` (N).

    Each class gives ``round(valid_fraction * its size)`` of its samples (at least one stays in
    training), chosen by one permutation seeded with :data:`VALIDATION_SPLIT_SEED`: the split depends
    on the labels alone, never on a training's seed. Both index tensors are sorted; with
    ``valid_fraction=0`` the training indices are ``arange(N)``.

    Raises:
        ValueError: a fraction outside [0, 1), or a positive one that leaves no validation sample.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    labels = labels.cpu()
    if valid_fraction == 0.0:
        return torch.arange(labels.numel()), torch.zeros(0, dtype=torch.long)
    generator = torch.Generator().manual_seed(VALIDATION_SPLIT_SEED)
    permutation = torch.randperm(labels.numel(), generator=generator)
    shuffled = labels[permutation]
    chosen = []
    for label in torch.unique(labels).tolist():
        members = permutation[shuffled == label]
        count = min(math.floor(valid_fraction * members.numel() + 0.5), members.numel() - 1)
        chosen.append(members[:count])
    valid = torch.sort(torch.cat(chosen)).values
    if valid.numel() == 0:
        raise ValueError(
            f"training.valid_fraction {valid_fraction:g} leaves no validation sample in "
            f"{labels.numel()} training samples; raise it or set it to 0"
        )
    in_valid = torch.zeros(labels.numel(), dtype=torch.bool)
    in_valid[valid] = True
    return torch.nonzero(~in_valid).flatten(), valid


def _check_dataset(dataset: Any) -> None:
    for name in ("x_train", "y_train", "x_test", "y_test", "num_classes", "in_channels"):
        if not hasattr(dataset, name):
            raise ValueError(f"dataset: missing attribute {name!r} (expected an ImageDataset)")
    for split in ("train", "test"):
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != dataset.in_channels:
            raise ValueError(
                f"dataset.x_{split}: expected a tensor N x {dataset.in_channels} x H x W, "
                f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            )
        if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"dataset.y_{split}: expected {x.shape[0]} labels, one per image")
        if x.shape[0] == 0:
            raise ValueError(f"dataset.x_{split}: no samples")


def _evaluate(
    network: nn.Module,
    x: Tensor | DeviceImages,
    y: Tensor,
    batch_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager[object]],
    should_stop: Callable[[], bool] | None,
) -> tuple[float, float] | None:
    """Mean cross-entropy and accuracy of ``network`` (eval mode) on x: N x C x H x W, y: N.

    None when ``should_stop`` returned true before a batch.
    """
    network.eval()
    # Summed on the device (float64, the arithmetic of the Python floats it replaces): one host
    # synchronisation per split instead of two per batch.
    total_loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            if should_stop is not None and should_stop():
                return None
            images, labels = x[start : start + batch_size], y[start : start + batch_size]
            with autocast():
                logits = network(images)
            total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").double()
            correct += (logits.argmax(dim=1) == labels).sum()
    return float(total_loss) / x.shape[0], int(correct) / x.shape[0]


def _identity(config: TrainingJobConfig, genotype: Genotype, dataset: Any) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: ``spec`` (bar resources), ``genotype`` and ``data``."""
    spec = config.to_spec()
    del spec["resources"]  # a training may resume on another device
    data = {
        "image_shape": list(dataset.x_train.shape[1:]),
        "num_classes": int(dataset.num_classes),
        "train_samples": int(dataset.x_train.shape[0]),
    }
    return {"spec": spec, "genotype": genotype.to_json(), "data": data}


def _check_same_training(state: Mapping[str, Any], path: Path, identity: Mapping[str, Any]) -> None:
    """Refuse a checkpoint of another training (ValueError naming each differing field)."""
    if state.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"checkpoint {path} is not a training checkpoint (a search's?)")
    saved_spec = dict(state.get("spec") or {})
    with contextlib.suppress(ValueError):
        # Fields added since the checkpoint was written take their defaults (same training, older spec).
        saved_spec = TrainingJobConfig.from_spec(saved_spec).to_spec()
        del saved_spec["resources"]
    saved = {**saved_spec, "genotype": state.get("genotype"), "data": state.get("data")}
    current = {**identity["spec"], "genotype": identity["genotype"], "data": identity["data"]}
    differences = list(spec_differences(saved, current))
    if differences:
        raise ValueError(f"checkpoint {path} was written by a different training: {'; '.join(differences)}")


_Autocast = Callable[[], contextlib.AbstractContextManager[object]]


@dataclass
class _Splits:
    """The three splits on the training device, each moved there once; batches are gathered by index."""

    x_train: Tensor | DeviceImages
    y_train: Tensor
    x_valid: Tensor | DeviceImages
    y_valid: Tensor
    x_test: Tensor | DeviceImages
    y_test: Tensor

    @classmethod
    def on_device(cls, dataset: ImageDataset, valid_fraction: float, target: torch.device) -> _Splits:
        train, valid = validation_split(dataset.y_train, valid_fraction)
        return cls(
            x_train=dataset_images_on_device(dataset, dataset.x_train[train], target),
            y_train=dataset.y_train[train].to(target),
            x_valid=dataset_images_on_device(dataset, dataset.x_train[valid], target),
            y_valid=dataset.y_train[valid].to(target),
            x_test=dataset_images_on_device(dataset, dataset.x_test, target),
            y_test=dataset.y_test.to(target),
        )


@dataclass
class _Trainer:
    """The network and everything a checkpoint restores with it."""

    network: GenotypeNetwork
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR
    data_order: torch.Generator
    compiled: Callable[..., Any] | None = None  # torch.compile(network) under `resources.compile`

    @classmethod
    def build(
        cls, genotype: Genotype, config: TrainingJobConfig, dataset: ImageDataset, target: torch.device
    ) -> _Trainer:
        """Seeded with ``training.seed`` first, so the initialisation depends on nothing else."""
        net_config, training = config.network, config.training
        torch.manual_seed(training.seed)
        network = GenotypeNetwork(
            genotype,
            dataset.in_channels,
            dataset.num_classes,
            init_channels=net_config.init_channels,
            cells=net_config.cells,
            auxiliary=net_config.auxiliary,
        ).to(target)
        optimizer = torch.optim.SGD(
            network.parameters(),
            lr=training.lr,
            momentum=training.momentum,
            weight_decay=training.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=training.epochs, eta_min=training.lr_min
        )
        return cls(network, optimizer, scheduler, torch.Generator().manual_seed(training.seed))

    @property
    def _device(self) -> torch.device:
        return next(self.network.parameters()).device

    def resume(self, checkpoint_dir: str | os.PathLike[str], identity: Mapping[str, Any]) -> list[TrainEpoch]:
        """Restore the latest checkpoint of this same training, if any; the finished epochs' records."""
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        loaded = load_checkpoint(checkpoint_dir)
        if loaded is None:
            return []
        state, path = loaded
        _check_same_training(state, path, identity)
        self.network.load_state_dict(state["network"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self._device)
        self.data_order.set_state(state["data_order"].cpu())
        return [TrainEpoch.from_dict(item) for item in state["history"]]

    def save(
        self,
        checkpoint_dir: str | os.PathLike[str],
        identity: Mapping[str, Any],
        history: list[TrainEpoch],
    ) -> None:
        write_checkpoint(
            {
                "format": CHECKPOINT_FORMAT,
                "kind": CHECKPOINT_KIND,
                "epoch": len(history),
                **identity,
                "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(self._device),
                "data_order": self.data_order.get_state(),
                "history": [item.to_dict() for item in history],
            },
            checkpoint_dir,
        )

    def train_epoch(
        self,
        splits: _Splits,
        config: TrainingJobConfig,
        autocast: _Autocast,
        stop: Callable[[], None],
        augment: RandomCropFlip | None = None,
        draws: torch.Generator | None = None,
    ) -> tuple[float, float]:
        """One pass over the training split in a fresh order: mean loss and accuracy. ``augment``
        (random crop and flip, its draws from ``draws``) applies to every batch, before cutout."""
        network, optimizer, training = self.network, self.optimizer, config.training
        # `resources.compile`: the training forward through torch.compile (the same module; evaluation
        # stays eager). Built once per trainer, compiled at its first batches.
        if config.resources.compile == "torch.compile" and self.compiled is None:
            self.compiled = torch.compile(network)
        forward = self.compiled or network
        target = splits.x_train.device
        length = training.cutout_length or max(1, min(splits.x_train.shape[-2:]) // 2)
        num_train, batch_size = splits.x_train.shape[0], training.batch_size
        network.train()
        # Sums on the device (float64, the arithmetic of the Python floats they replace: bit-identical
        # figures) and the order copied there once: no host synchronisation or copy per batch.
        loss_sum = torch.zeros((), dtype=torch.float64, device=target)
        correct = torch.zeros((), dtype=torch.int64, device=target)
        seen = 0
        order = torch.randperm(num_train, generator=self.data_order).to(target)
        for start in range(0, num_train, batch_size):
            stop()
            batch = order[start : start + batch_size]
            if batch.numel() < 2:
                continue  # BatchNorm needs more than one sample per channel in training mode
            images, labels = splits.x_train[batch], splits.y_train[batch]
            if augment is not None and draws is not None:
                images = augment(images, draws)
            if training.cutout:
                images = apply_cutout(images, length)
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                output = forward(images)
            logits, loss = _loss(output, labels, config.network.auxiliary_weight)
            loss.backward()
            if training.grad_clip is not None:
                nn.utils.clip_grad_norm_(network.parameters(), training.grad_clip)
            optimizer.step()
            loss_sum += loss.detach().double() * labels.shape[0]
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += labels.shape[0]
        self.scheduler.step()
        return float(loss_sum) / max(seen, 1), int(correct) / max(seen, 1)


def _loss(
    output: Tensor | tuple[Tensor, Tensor], labels: Tensor, auxiliary_weight: float
) -> tuple[Tensor, Tensor]:
    """The logits and the loss of a training forward: with the auxiliary head, ``ce + weight x ce_aux``."""
    if isinstance(output, tuple):
        logits, aux_logits = output
        loss = F.cross_entropy(logits.float(), labels)
        return logits, loss + auxiliary_weight * F.cross_entropy(aux_logits.float(), labels)
    return output, F.cross_entropy(output.float(), labels)


def _check_finite(record: TrainEpoch) -> None:
    """A NaN or infinite loss never recovers; failing here keeps it out of the checkpoint and the
    reported metrics (whose stored columns are numbers)."""
    losses = {"train_loss": record.train_loss, "valid_loss": record.valid_loss, "test_loss": record.test_loss}
    diverged = {
        name: value for name, value in losses.items() if value is not None and not math.isfinite(value)
    }
    if diverged:
        raise TrainingDiverged(record.epoch, diverged)


def run_training_job(
    genotype: Genotype,
    config: TrainingJobConfig,
    dataset: ImageDataset,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[TrainEpoch], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train a :class:`~darts_core.nn.genotype_network.GenotypeNetwork` of ``genotype`` from scratch;
    validate, test.

    As the DARTS evaluation: SGD with momentum and weight decay, cosine annealing of the learning rate
    from ``training.lr`` to ``training.lr_min`` over the epochs (stepped per epoch), gradient-norm
    clipping, drop-path probability ``network.drop_path_prob * epoch / epochs`` in epoch ``epoch``
    (0-based), with ``network.auxiliary`` the loss ``ce(logits) + auxiliary_weight * ce(aux_logits)``,
    and cutout with ``training.cutout``; bf16 autocast as ``resources.precision`` says (auto: on CUDA).

    The training split loses a stratified validation split of ``training.valid_fraction``
    (:func:`validation_split`: the same examples whatever the seed). After every epoch the network is
    evaluated on it and on ``dataset.x_test`` (never trained on). ``training.seed`` seeds the
    initialisation, the data order, drop-path and cutout (through ``torch.manual_seed``, so it also sets
    the caller's global torch RNG).

    Args:
        genotype: the architecture to train.
        config: the validated training spec.
        dataset: an :class:`~darts_core.data.registry.ImageDataset` (``x_train`` float32 N x C x H x W,
            ``y_train`` int64 N, ``x_test``, ``y_test``, ``num_classes``, ``in_channels``).
        checkpoint_dir: when given, a checkpoint is written there after every finished epoch, and a
            directory that holds one is resumed after its last finished epoch; it must come from the
            same spec (``resources`` may differ), genotype and data. A full disk raises
            :class:`~darts_core.checkpoint.CheckpointDiskFull`.
        on_epoch: called with the :class:`TrainEpoch` of every epoch run, after its checkpoint.
        should_stop: polled before every batch (training and evaluation); when it returns true,
            :class:`TrainingStopped` is raised and the unfinished epoch leaves no trace.
        device: overrides ``config.resources.device`` (anything :func:`resolve_device` accepts).

    Returns:
        a :class:`TrainResult`.

    Raises:
        ValueError: an invalid genotype, dataset or device, or a checkpoint of another training.
        TrainingStopped: ``should_stop`` returned true.
        TrainingDiverged: an epoch's training, validation or test loss was NaN or infinite (a
            :class:`ValueError`).
    """
    if not isinstance(genotype, Genotype):
        raise ValueError(f"genotype must be a Genotype, got {type(genotype).__name__}")
    if not isinstance(config, TrainingJobConfig):
        raise ValueError(f"config must be a TrainingJobConfig, got {type(config).__name__}")
    genotype.validate(list(DARTS_PRIMITIVES_2D))  # before any side effect such as seeding
    _check_dataset(dataset)
    target = resolve_device(config.resources.device if device is None else device)
    splits = _Splits.on_device(dataset, config.training.valid_fraction, target)
    identity = _identity(config, genotype, dataset)
    trainer = _Trainer.build(genotype, config, dataset, target)
    network = trainer.network
    autocast: _Autocast
    autocast_dtype = resolve_autocast(config.resources.precision, target)
    if autocast_dtype is not None:
        autocast = lambda: torch.autocast(target.type, dtype=autocast_dtype)  # noqa: E731
    else:
        autocast = contextlib.nullcontext
    history = trainer.resume(checkpoint_dir, identity) if checkpoint_dir is not None else []
    augment = resolve_augmentation(
        config.training.augmentation.crop_padding,
        config.training.augmentation.horizontal_flip,
        getattr(dataset, "name", ""),
        (int(dataset.x_train.shape[2]), int(dataset.x_train.shape[3])),
        tuple(getattr(dataset, "class_names", ())),
    )

    def stop() -> None:
        if should_stop is not None and should_stop():
            raise TrainingStopped(len(history))

    def evaluate(x: Tensor | DeviceImages, y: Tensor) -> tuple[float, float]:
        result = _evaluate(network, x, y, 2 * config.training.batch_size, autocast, should_stop)
        if result is None:
            raise TrainingStopped(len(history))
        return result

    started = time.perf_counter()
    epochs = config.training.epochs
    for epoch in range(len(history), epochs):
        epoch_started = time.perf_counter()
        current_lr = trainer.optimizer.param_groups[0]["lr"]
        network.drop_path_prob = config.network.drop_path_prob * epoch / epochs
        draws = epoch_generator(config.training.seed, epoch, AUGMENTATION_STREAM)
        train_loss, train_acc = trainer.train_epoch(splits, config, autocast, stop, augment, draws)
        valid_loss = valid_acc = None
        if splits.y_valid.numel():
            valid_loss, valid_acc = evaluate(splits.x_valid, splits.y_valid)
        test_loss, test_acc = evaluate(splits.x_test, splits.y_test)
        record = TrainEpoch(
            epoch=epoch + 1,
            train_loss=train_loss,
            train_acc=train_acc,
            test_loss=test_loss,
            test_acc=test_acc,
            lr=current_lr,
            drop_path_prob=network.drop_path_prob,
            seconds=time.perf_counter() - epoch_started,
            valid_loss=valid_loss,
            valid_acc=valid_acc,
        )
        _check_finite(record)
        history.append(record)
        if checkpoint_dir is not None:
            trainer.save(checkpoint_dir, identity, history)
        if on_epoch is not None:
            on_epoch(record)
    network.eval()
    last = history[-1]
    return TrainResult(
        test_accuracy=last.test_acc,
        test_loss=last.test_loss,
        history=history,
        parameters=sum(
            p.numel() for name, p in network.named_parameters() if not name.startswith("auxiliary_head.")
        ),
        seconds=time.perf_counter() - started,
        network=network,
        valid_accuracy=last.valid_acc,
        multiply_adds=count_multiply_adds(network, tuple(dataset.x_train.shape[1:])),
    )

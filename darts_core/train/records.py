"""What a retraining reports: one :class:`TrainEpoch` per epoch, the :class:`TrainResult`, and the two
ways it ends early (:class:`TrainingStopped`, :class:`TrainingDiverged`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from darts_core.nn.genotype_network import GenotypeNetwork

__all__ = ["TrainEpoch", "TrainResult", "TrainingDiverged", "TrainingStopped"]


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class TrainEpoch:
    """Metrics of one finished training epoch (``epoch`` is 1-based).

    ``train_*`` are means over the epoch's batches (train mode, drop-path and cutout on); ``valid_*``
    (``None`` without a validation split) and ``test_*`` come from eval-mode passes after the epoch.
    ``lr`` and ``drop_path_prob`` are those used during the epoch, ``seconds`` its wall time.
    """

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    lr: float
    drop_path_prob: float
    seconds: float
    valid_loss: float | None = None
    valid_acc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a diverged (NaN or infinite) metric becomes ``None``."""
        return {
            key: _finite_or_none(value) if isinstance(value, float) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainEpoch:
        """Inverse of :meth:`to_dict` (``None`` metrics come back as NaN, the optional ones as ``None``)."""
        names = {item.name for item in fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "drop_path_prob", "seconds"):
            if values.get(key) is None:
                values[key] = math.nan
        return cls(**values)


@dataclass
class TrainResult:
    """Outcome of :func:`run_training_job` (and :func:`~darts_core.train.train_genotype`).

    Attributes:
        test_accuracy: accuracy on ``dataset.x_test`` after the last epoch, in [0, 1].
        test_loss: mean cross-entropy on the test split after the last epoch.
        history: one :class:`TrainEpoch` per epoch (restored ones included).
        parameters: parameter count of the network without its auxiliary head (as DARTS reports it).
        seconds: wall-clock time of this call (a resumed training counts only its own part).
        network: the trained network (in eval mode, on the training device).
        valid_accuracy: validation accuracy after the last epoch; ``None`` without a validation split.
        multiply_adds: multiply-adds of one forward pass of one sample, without the auxiliary head
            (:func:`~darts_core.nn.multiply_adds.count_multiply_adds`).
    """

    test_accuracy: float
    test_loss: float
    history: list[TrainEpoch]
    parameters: int
    seconds: float
    network: GenotypeNetwork = field(repr=False)
    valid_accuracy: float | None = None
    multiply_adds: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the network)."""
        return {
            "test_accuracy": _finite_or_none(self.test_accuracy),
            "test_loss": _finite_or_none(self.test_loss),
            "valid_accuracy": _finite_or_none(self.valid_accuracy),
            "parameters": self.parameters,
            "multiply_adds": self.multiply_adds,
            "seconds": self.seconds,
            "history": [epoch.to_dict() for epoch in self.history],
        }


class TrainingStopped(Exception):
    """``should_stop`` ended the training between two batches; nothing of the unfinished epoch was kept.

    Attributes:
        epochs_completed: finished (and, with a checkpoint directory, checkpointed) epochs.
    """

    def __init__(self, epochs_completed: int) -> None:
        super().__init__(f"training stopped after {epochs_completed} finished epoch(s)")
        self.epochs_completed = epochs_completed


class TrainingDiverged(ValueError):
    """An epoch ended with a non-finite (NaN or infinite) loss: the training cannot recover from it.

    Raised before the epoch is checkpointed or reported, so no diverged epoch is ever recorded.

    Attributes:
        epoch: the 1-based epoch whose loss was not finite.
    """

    def __init__(self, epoch: int, losses: Mapping[str, float]) -> None:
        bad = ", ".join(f"{name} {value}" for name, value in losses.items())
        super().__init__(
            f"training diverged at epoch {epoch}: non-finite loss ({bad}); lower training.lr or set "
            "training.grad_clip"
        )
        self.epoch = epoch

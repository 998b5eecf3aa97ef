"""Where the service keeps files: every artifact path is built here.

`ARTIFACT_DIR/searches/<id>/` holds a search's checkpoints; `ARTIFACT_DIR/trainings/<id>/` a
training's checkpoints (`checkpoint/`) and its trained weights (`model.safetensors`);
`ARTIFACT_DIR/datasets/` the uploaded `.npz` files (a row's `path` is relative to it). On several
machines this is a shared volume.
"""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings
from darts_core.spec.artifacts import WEIGHTS_FILE


def search_dir(settings: Settings, search_id: str) -> Path:
    """A search's checkpoints and outputs: `ARTIFACT_DIR/searches/<id>`."""
    return settings.artifacts_path / "searches" / search_id


def training_dir(settings: Settings, training_id: str) -> Path:
    """A training's checkpoints and weights: `ARTIFACT_DIR/trainings/<id>`."""
    return settings.artifacts_path / "trainings" / training_id


def training_checkpoint_dir(settings: Settings, training_id: str) -> Path:
    """Where a training checkpoints every epoch (and resumes from):
    `ARTIFACT_DIR/trainings/<id>/checkpoint`."""
    return training_dir(settings, training_id) / "checkpoint"


def training_weights_path(settings: Settings, training_id: str) -> Path:
    """The trained network's weights (safetensors, `darts_core.load_trained` reads them), written once the
    training succeeded: `ARTIFACT_DIR/trainings/<id>/model.safetensors`."""
    return training_dir(settings, training_id) / WEIGHTS_FILE


def datasets_dir(settings: Settings) -> Path:
    """The uploaded datasets: `ARTIFACT_DIR/datasets`."""
    return settings.artifacts_path / "datasets"


def dataset_path(settings: Settings, stored: str) -> Path:
    """The file of an uploaded dataset from the `path` its row stores (relative, or absolute in
    databases written by older versions)."""
    path = Path(stored)
    return path if path.is_absolute() else datasets_dir(settings) / path

"""Where the service keeps files: every artifact path is built here.

`ARTIFACT_DIR/searches/<id>/` holds a search's checkpoints; `ARTIFACT_DIR/datasets/` the uploaded
`.npz` files (a row's `path` is relative to it). On several machines this is a shared volume.
"""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings


def search_dir(settings: Settings, search_id: str) -> Path:
    """A search's checkpoints and outputs: `ARTIFACT_DIR/searches/<id>`."""
    return settings.artifacts_path / "searches" / search_id


def datasets_dir(settings: Settings) -> Path:
    """The uploaded datasets: `ARTIFACT_DIR/datasets`."""
    return settings.artifacts_path / "datasets"


def dataset_path(settings: Settings, stored: str) -> Path:
    """The file of an uploaded dataset from the `path` its row stores (relative, or absolute in
    databases written by older versions)."""
    path = Path(stored)
    return path if path.is_absolute() else datasets_dir(settings) / path

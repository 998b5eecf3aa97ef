"""The schema of `/datasets`: an uploaded or built-in dataset as the API shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
)

from app.schemas.common import StrictModel


class SkippedFiles(StrictModel):
    """The files of an uploaded archive that were left out (no image, ...)."""

    count: int
    first: list[str] = Field(description="The first few, as 'path: reason'.")


class DatasetPublic(StrictModel):
    """A dataset the searches can use: built in (`kind` "builtin", id = its name) or uploaded."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    id: str
    kind: Literal["builtin", "upload"]
    name: str
    description: str | None = None
    filename: str | None = None
    owner: str | None = Field(default=None, description="Uploads: the name of the API key that uploaded it.")
    num_samples: int | None = None
    num_classes: int | None = None
    channels: int | None = None
    height: int | None = None
    width: int | None = None
    size_bytes: int | None = None
    created_at: datetime | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="Built-ins: the spec parameters they take, with their defaults"
    )
    class_names: list[str] | None = Field(
        default=None, description="Label i is class_names[i]; null when the dataset does not name them."
    )
    class_counts: dict[str, int] | None = Field(
        default=None, description="Archives: images per class (train and test parts together)."
    )
    skipped: SkippedFiles | None = Field(
        default=None, description="Only in the answer to an archive upload: the files left out."
    )


"""The parameters of the built-in datasets a search spec may name, and their bounds (torch-free).

:func:`darts_core.data.registry.load_dataset` enforces these same bounds (it reads the constants
below), and the service offers exactly these models in its search spec, so a spec either side
accepts loads. ``cifar10`` and ``npz`` are absent: they name files on the machine, which only the library's
own user may do; so is ``folder`` (:class:`FolderDatasetSpec`, a local image folder), whose model is here
so that the library's checks and the service's stored-upload datasets share its image parameters.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator

__all__ = [
    "builtin_datasets",
    "DatasetError",
    "DigitsDatasetSpec",
    "SyntheticDatasetSpec",
    "FolderDatasetSpec",
    "FolderImageOptions",
    "FOLDER_RESIZE_METHODS",
    "SYNTHETIC_MAX_VALUES",
    "SYNTHETIC_MAX_SAMPLES",
    "SYNTHETIC_MAX_CLASSES",
    "SYNTHETIC_MAX_CHANNELS",
    "SYNTHETIC_MAX_IMAGE_SIZE",
    "SYNTHETIC_MAX_NOISE",
    "MAX_SEED",
    "TestFraction",
    "SplitSeed",
]

#: Ceiling on generated pixels (256 MiB of float32): bounds the memory one spec can make a worker use.
SYNTHETIC_MAX_VALUES = 2**26
SYNTHETIC_MAX_SAMPLES = 200_000
SYNTHETIC_MAX_CLASSES = 1000
SYNTHETIC_MAX_CHANNELS = 64
SYNTHETIC_MAX_IMAGE_SIZE = 1024
#: Templates have unit scale: far beyond this, the images are noise and the search learns nothing.
SYNTHETIC_MAX_NOISE = 1e3
MAX_SEED = 2**32 - 1  # NumPy's seed range

class DatasetError(ValueError):
    """A dataset spec or file is invalid; the message names the problem."""


def _a_json_number(value: Any) -> Any:
    # pydantic's lax float takes true/false and numeric strings; a spec's numbers are JSON numbers.
    if isinstance(value, (bool, str)):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


JsonFloat = Annotated[float, BeforeValidator(_a_json_number)]
TestFraction = Annotated[
    JsonFloat, Field(gt=0.0, lt=1.0, allow_inf_nan=False, description="Held-out part, never searched on")
]
SplitSeed = Annotated[int, Strict(), Field(ge=0, le=MAX_SEED, description="Seed of the train/test split")]
ImageSide = Annotated[int, Strict(), Field(ge=1, le=SYNTHETIC_MAX_IMAGE_SIZE)]


class _DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DigitsDatasetSpec(_DatasetSpec):
    """scikit-learn's handwritten digits (1797 grey 8x8 images, 10 classes), bundled."""

    name: Literal["digits"]
    test_fraction: TestFraction = 0.2
    seed: SplitSeed = 0


class SyntheticDatasetSpec(_DatasetSpec):
    """Generated images (a smooth random template per class plus noise): for smoke tests and demos."""

    name: Literal["synthetic"]
    num_samples: Annotated[int, Strict()] = Field(default=512, ge=4, le=SYNTHETIC_MAX_SAMPLES)
    num_classes: Annotated[int, Strict()] = Field(default=4, ge=2, le=SYNTHETIC_MAX_CLASSES)
    channels: Annotated[int, Strict()] = Field(default=3, ge=1, le=SYNTHETIC_MAX_CHANNELS)
    image_size: ImageSide | tuple[ImageSide, ImageSide] = Field(default=16, description="H = W, or [H, W]")
    noise: JsonFloat = Field(
        default=0.5,
        ge=0.0,
        lt=SYNTHETIC_MAX_NOISE,
        allow_inf_nan=False,
        description="Standard deviation of the added noise",
    )
    test_fraction: TestFraction = 0.2
    seed: SplitSeed = 0

    @model_validator(mode="after")
    def _size_fits(self) -> SyntheticDatasetSpec:
        if self.num_samples < 2 * self.num_classes:
            raise ValueError(
                f"num_samples ({self.num_samples}) must be at least 2 x num_classes ({self.num_classes})"
            )
        height, width = self.image_size if isinstance(self.image_size, tuple) else (self.image_size,) * 2
        values = self.num_samples * self.channels * height * width
        if values > SYNTHETIC_MAX_VALUES:
            raise ValueError(
                f"num_samples x channels x height x width = {values} exceeds {SYNTHETIC_MAX_VALUES}; "
                "make the dataset smaller"
            )
        return self


#: Resize filters a folder dataset may name (Pillow's).
FOLDER_RESIZE_METHODS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
#: Longest folder path a spec may give.
_MAX_PATH = 4096


class FolderImageOptions(_DatasetSpec):
    """How a folder's images become arrays: their size, channels and resize filter."""

    image_size: ImageSide | tuple[ImageSide, ImageSide] | None = Field(
        default=None,
        description="H = W, or [H, W], every image is resized to; null: the images' own size (they must "
        "all have it)",
    )
    channels: Literal[1, 3] | None = Field(
        default=None, description="1 (grey) or 3 (RGB); null: 1 when every image is grey, else 3"
    )
    resize: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = Field(
        default="bilinear", description="Resize filter"
    )


class FolderDatasetSpec(FolderImageOptions):
    """A local folder of images, one sub-folder per class (torchvision's ImageFolder layout), optionally
    split into ``train/`` and ``test/`` (or ``val/``) folders, which are then used as given."""

    name: Literal["folder"]
    path: Annotated[str, Strict()] = Field(min_length=1, max_length=_MAX_PATH, description="The folder")
    test_fraction: TestFraction = 0.2
    seed: SplitSeed = 0


def builtin_datasets() -> list[dict[str, Any]]:
    """The datasets available without an upload, with their defaults (JSON-ready).

    Each entry: ``name``, ``description``, ``num_classes``, ``shape`` (``[C, H, W]`` with default
    parameters), ``num_samples``, ``parameters`` (name -> default; ``None`` where required or unset).
    """
    return [
        {
            "name": "digits",
            "description": "scikit-learn's handwritten digits: 1797 grey 8x8 images, 10 classes (bundled).",
            "num_classes": 10,
            "shape": [1, 8, 8],
            "num_samples": 1797,
            "parameters": {"test_fraction": 0.2, "seed": 0},
        },
        {
            "name": "synthetic",
            "description": "Generated images: each class is a smooth random template plus Gaussian noise.",
            "num_classes": 4,
            "shape": [3, 16, 16],
            "num_samples": 512,
            "parameters": {
                "num_samples": 512,
                "channels": 3,
                "image_size": 16,
                "num_classes": 4,
                "noise": 0.5,
                "test_fraction": 0.2,
                "seed": 0,
            },
        },
        {
            "name": "cifar10",
            "description": (
                "CIFAR-10 from a local directory in its python format (cifar-10-batches-py); "
                "needs 'root', nothing downloads. Pickle files: give trusted files only."
            ),
            "num_classes": 10,
            "shape": [3, 32, 32],
            "num_samples": 60000,
            "parameters": {"root": None, "limit": None, "test_limit": None},
        },
    ]

"""Dataset registry: small image classification datasets a DARTS search runs on.

Nothing here downloads. :func:`load_dataset` dispatches on ``spec["name"]``:

``digits``
    scikit-learn's bundled handwritten digits (real data): 1797 grey 8x8 images, 10 classes.
    Parameters: ``test_fraction`` (0.2), ``seed`` (0).
``synthetic``
    Generated images with a learnable pattern: every class is a fixed, smooth random template (a coarse
    4x4 random grid per channel, bilinearly upsampled) and every sample is its class template plus
    Gaussian noise. Parameters: ``num_samples`` (512), ``channels`` (3), ``image_size`` (16, or
    ``[H, W]``), ``num_classes`` (4), ``noise`` (0.5, standard deviation; templates have unit scale),
    ``test_fraction`` (0.2), ``seed`` (0).
``npz``
    A NumPy ``.npz`` archive with ``x`` (``N x C x H x W``, ``N x H x W x C`` or grey ``N x H x W``;
    ``uint8`` is scaled to [0, 1], floats are taken as they are) and ``y`` (``N`` integer labels).
    Parameters: ``path``, ``layout`` (``"NCHW"`` or ``"NHWC"``; guessed when absent, see below),
    ``num_classes`` (max label + 1), ``test_fraction`` (0.2), ``seed`` (0). Read with
    ``allow_pickle=False``.
    The file may hold its own split instead: ``x_train``, ``y_train``, ``x_test``, ``y_test`` (used as
    given; ``test_fraction`` and ``seed`` then do nothing), and ``class_names`` (one string per label).
``folder``
    A folder of images, one sub-folder per class (:func:`darts_core.data.folder.read_image_folder`).
    Parameters (:class:`~darts_core.spec.dataset_spec.FolderDatasetSpec`): ``path``, ``image_size``,
    ``channels``, ``resize``, ``test_fraction`` (0.2), ``seed`` (0); a ``train``/``test`` split in the
    folder is used as given.
``cifar10``
    A local CIFAR-10 directory in its python format (``data_batch_1`` .. ``data_batch_5`` and
    ``test_batch``, as in ``cifar-10-batches-py``). Parameters: ``root`` (that directory, or its parent),
    ``limit`` (first N training images), ``test_limit`` (first N test images).

Layout heuristic for 4-dimensional ``npz`` images: the channels axis is the one of axes 1 and 3 whose
size is 1, 3 or 4. When exactly one of them qualifies it is used; when both or neither do (e.g.
``N x 3 x 32 x 3``) the file is rejected and ``layout`` must be given.

Every dataset is split into a training part (what the search uses; it splits it further into weight and
architecture halves) and a held-out test part the search never sees. The ``digits``, ``synthetic`` and
``npz`` splits are stratified by class and deterministic for a seed; both parts are shuffled
(deterministically), so a file sorted by class never yields one-class halves. Images are normalised per
channel with the training part's mean and standard deviation: float images when loaded, uint8 images
(``folder``, uint8 ``npz``, ``cifar10``; kept as uint8) on the device batch by batch.

All errors are :class:`DatasetError` (a ``ValueError``) with a message naming the problem.
"""

from __future__ import annotations

import math
import numbers
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from darts_core.data.cifar10 import read_cifar_batch
from darts_core.data.device_images import normalize_pixels
from darts_core.data.folder import FolderError, read_image_folder
from darts_core.data.npz import (
    LAYOUTS,
    NPZ_MAX_CLASSES,
    NPZ_MAX_VALUES,
    NpzError,
    check_npz,
    summarize_npz,
    to_nchw,
)
from darts_core.spec.dataset_spec import (
    MAX_SEED,
    SYNTHETIC_MAX_CHANNELS,
    SYNTHETIC_MAX_CLASSES,
    SYNTHETIC_MAX_IMAGE_SIZE,
    SYNTHETIC_MAX_NOISE,
    SYNTHETIC_MAX_SAMPLES,
    SYNTHETIC_MAX_VALUES,
    DatasetError,
    FolderDatasetSpec,
)
from darts_core.spec.search_spec import format_validation_error

__all__ = [
    "DatasetError",
    "ImageDataset",
    "load_dataset",
    "validate_npz",
]


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """An image classification dataset, ready for training.

    Attributes:
        name: the dataset kind (``"digits"``, ``"synthetic"``, ``"npz"``, ``"cifar10"``).
        x_train: ``N x C x H x W``: uint8 pixels (folders, uint8 npz, cifar10: a dataset costs its pixel
            count in bytes; :meth:`normalize` / :meth:`on_device` give the model's float input), or
            float32 already normalised per channel with the training statistics (digits, synthetic,
            float npz).
        y_train: int64 tensor ``N``, labels in ``[0, num_classes)``.
        x_test: ``M x C x H x W``, as ``x_train``; a held-out split never used by the search.
        y_test: int64 tensor ``M``.
        num_classes: number of classes.
        channel_mean: per-channel mean subtracted (of the unnormalised training images; of the pixels
            scaled to [0, 1] for uint8 images).
        channel_std: per-channel standard deviation divided by.
        class_names: the name of each label (``class_names[i]`` names label ``i``); empty when the
            dataset does not name its classes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    channel_mean: tuple[float, ...] = ()
    channel_std: tuple[float, ...] = ()
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.uint8) or x.dim() != 4:
                raise DatasetError(f"x_{split}: expected a float32 or uint8 tensor N x C x H x W")
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
                raise DatasetError(f"y_{split}: expected an int64 tensor N")
            if x.shape[0] != y.shape[0]:
                raise DatasetError(f"x_{split} has {x.shape[0]} samples but y_{split} has {y.shape[0]}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DatasetError(f"y_{split}: labels must lie in [0, {self.num_classes})")
        if self.x_test.dtype != self.x_train.dtype:
            raise DatasetError(f"x_test is {self.x_test.dtype} but x_train is {self.x_train.dtype}")
        if self.x_train.dtype == torch.uint8 and not (
            len(self.channel_mean) == len(self.channel_std) == self.x_train.shape[1]
        ):
            raise DatasetError("channel_mean, channel_std: uint8 images need one value per channel")
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise DatasetError(
                f"x_test images {tuple(self.x_test.shape[1:])} differ from x_train images "
                f"{tuple(self.x_train.shape[1:])}"
            )
        if self.x_train.shape[0] == 0:
            raise DatasetError("x_train: no training samples")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise DatasetError(f"class_names: {len(self.class_names)} names for {self.num_classes} classes")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Model input from stored images: uint8 -> float32 ``(x / 255 - mean) / std`` (on the images'
        device); float32 images are stored normalised and come back as they are."""
        if images.dtype != torch.uint8:
            return images
        mean = torch.tensor(self.channel_mean, dtype=torch.float32, device=images.device)
        std = torch.tensor(self.channel_std, dtype=torch.float32, device=images.device)
        return normalize_pixels(images, mean, std)

    def weights_metadata(self) -> dict[str, Any]:
        """What :func:`darts_core.train.weights.save_trained` records of the data a network was trained
        on: ``input_shape`` ``(C, H, W)``, ``class_names`` (``None`` when unnamed), ``mean``, ``std``
        (of the pixels scaled to [0, 1] for uint8 images; ``None`` when unrecorded)."""
        height, width = self.image_size
        return {
            "input_shape": (self.in_channels, height, width),
            "class_names": list(self.class_names) or None,
            "mean": list(self.channel_mean) or None,
            "std": list(self.channel_std) or None,
        }

    @property
    def in_channels(self) -> int:
        """Number of image channels ``C``."""
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """Image height and width ``(H, W)``."""
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (no tensors)."""
        height, width = self.image_size
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "channels": self.in_channels,
            "height": height,
            "width": width,
            "num_train": int(self.x_train.shape[0]),
            "num_test": int(self.x_test.shape[0]),
            "num_samples": int(self.x_train.shape[0] + self.x_test.shape[0]),
            "channel_mean": list(self.channel_mean),
            "channel_std": list(self.channel_std),
            "class_names": list(self.class_names) or None,
        }


# ---------------------------------------------------------------------------------------------- helpers


def _optional_int_param(spec: Mapping[str, Any], kind: str, key: str, minimum: int) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DatasetError(f"{kind}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _int_param(
    spec: Mapping[str, Any], kind: str, key: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    value = _optional_int_param(spec, kind, key, minimum)
    if value is None:
        return default
    if maximum is not None and value > maximum:
        raise DatasetError(f"{kind}: {key} must be at most {maximum}, got {value!r}")
    return value


def _float_param(
    spec: Mapping[str, Any], kind: str, key: str, default: float, low: float, high: float, open_low: bool
) -> float:
    value = spec.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise DatasetError(f"{kind}: {key} must be a number, got {value!r}")
    number = cast(float, value)  # numbers.Real has no comparison operators in typeshed
    if (number <= low if open_low else number < low) or number >= high:
        bounds = f"{'(' if open_low else '['}{low}, {high})"
        raise DatasetError(f"{kind}: {key} must lie in {bounds}, got {value!r}")
    return float(value)


def _split_params(spec: Mapping[str, Any], kind: str) -> tuple[float, int]:
    test_fraction = _float_param(spec, kind, "test_fraction", 0.2, 0.0, 1.0, open_low=True)
    return test_fraction, _int_param(spec, kind, "seed", 0, 0, maximum=MAX_SEED)


def _stratified_split(
    y: np.ndarray, test_fraction: float, seed: int, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified, shuffled train/test split; deterministic for a seed.

    Every class gives ``round(count * test_fraction)`` samples to the test part, but always keeps at
    least one sample for training.
    """
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        num_test = min(int(round(len(members) * test_fraction)), len(members) - 1)
        test_parts.append(members[:num_test])
        train_parts.append(members[num_test:])
    test = np.concatenate(test_parts)
    if test.size == 0:
        raise DatasetError(
            f"{kind}: test_fraction {test_fraction} leaves no test samples for {len(y)} samples"
        )
    return rng.permutation(np.concatenate(train_parts)), rng.permutation(test)


def _normalise(
    x_train: np.ndarray, x_test: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...], tuple[float, ...]]:
    """Per-channel standardisation with the training statistics (float32 N x C x H x W in and out)."""
    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x_train.std(axis=(0, 2, 3), dtype=np.float64)
    std = np.where(std < 1e-8, 1.0, std)  # a constant channel stays constant instead of dividing by 0
    shape = (1, -1, 1, 1)
    tensors = []
    for x in (x_train, x_test):
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        tensor = tensor.sub(torch.from_numpy(mean.astype(np.float32)).view(shape))
        tensors.append(tensor.div_(torch.from_numpy(std.astype(np.float32)).view(shape)))
    return tensors[0], tensors[1], tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _pixel_statistics(
    x: np.ndarray, chunk_bytes: int = 1 << 24
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 ``N x C x H x W`` scaled to [0, 1].

    The sums are exact integers (of the values and of their squares, each square fitting uint16),
    accumulated over slices of images whose uint16 squares take at most ``chunk_bytes``: the memory
    this needs does not grow with the dataset (a float64 copy of a chunk was 8 to 16 times its size).
    """
    per_image = int(np.prod(x.shape[1:], dtype=np.int64)) * 2  # bytes of one image's uint16 squares
    chunk = max(1, chunk_bytes // max(per_image, 1))
    total = np.zeros(x.shape[1], dtype=np.int64)
    squares = np.zeros(x.shape[1], dtype=np.int64)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk]
        total += part.sum(axis=(0, 2, 3), dtype=np.int64)
        squares += np.square(part, dtype=np.uint16).sum(axis=(0, 2, 3), dtype=np.int64)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / (count * 255.0)
    std = np.sqrt(np.maximum(squares / (count * 255.0**2) - mean**2, 0.0))
    std = np.where(std < 1e-8, 1.0, std)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _build(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    class_names: tuple[str, ...] = (),
) -> ImageDataset:
    """uint8 images stay uint8 (their statistics recorded, normalised on the device per batch); float
    images are normalised here."""
    if x_train.dtype == np.uint8:
        mean, std = _pixel_statistics(x_train)
        xt = torch.from_numpy(np.ascontiguousarray(x_train))
        xv = torch.from_numpy(np.ascontiguousarray(x_test))
    else:
        xt, xv, mean, std = _normalise(x_train, x_test)
    return ImageDataset(
        name=name,
        x_train=xt,
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_test=xv,
        y_test=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
        num_classes=num_classes,
        channel_mean=mean,
        channel_std=std,
        class_names=class_names,
    )


def _split_and_build(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    test_fraction: float,
    seed: int,
    class_names: tuple[str, ...] = (),
) -> ImageDataset:
    train, test = _stratified_split(y, test_fraction, seed, name)
    return _build(name, x[train], y[train], x[test], y[test], num_classes, class_names)


# ---------------------------------------------------------------------------------------------- digits


def _load_digits(spec: Mapping[str, Any]) -> ImageDataset:
    from sklearn.datasets import load_digits

    test_fraction, seed = _split_params(spec, "digits")
    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]  # pixel values are 0..16
    y = np.asarray(bunch.target, dtype=np.int64)
    return _split_and_build("digits", x, y, 10, test_fraction, seed)


# ---------------------------------------------------------------------------------------------- synthetic


def _image_size_param(spec: Mapping[str, Any]) -> tuple[int, int]:
    value: Any = spec.get("image_size")
    if value is None:
        value = 16
    sizes = list(value) if isinstance(value, (list, tuple)) and len(value) == 2 else [value, value]
    if any(
        isinstance(s, bool)
        or not isinstance(s, numbers.Integral)
        or not 1 <= cast(int, s) <= SYNTHETIC_MAX_IMAGE_SIZE  # Integral has no comparisons in typeshed
        for s in sizes
    ):
        raise DatasetError(
            f"synthetic: image_size must be an integer in 1..{SYNTHETIC_MAX_IMAGE_SIZE} or [H, W], "
            f"got {value!r}"
        )
    return int(sizes[0]), int(sizes[1])


def _load_synthetic(spec: Mapping[str, Any]) -> ImageDataset:
    # The bounds are darts_core.spec.dataset_spec's, which the service's search spec validates against too.
    num_classes = _int_param(spec, "synthetic", "num_classes", 4, 2, maximum=SYNTHETIC_MAX_CLASSES)
    num_samples = _int_param(spec, "synthetic", "num_samples", 512, 2 * num_classes, SYNTHETIC_MAX_SAMPLES)
    channels = _int_param(spec, "synthetic", "channels", 3, 1, maximum=SYNTHETIC_MAX_CHANNELS)
    height, width = _image_size_param(spec)
    noise = _float_param(spec, "synthetic", "noise", 0.5, 0.0, SYNTHETIC_MAX_NOISE, open_low=False)
    test_fraction, seed = _split_params(spec, "synthetic")
    total = num_samples * channels * height * width
    if total > SYNTHETIC_MAX_VALUES:
        raise DatasetError(
            f"synthetic: num_samples x channels x height x width = {total} values exceeds "
            f"{SYNTHETIC_MAX_VALUES}; make the dataset smaller"
        )

    rng = np.random.default_rng(seed)
    # Smooth templates (coarse random grid, upsampled) give local structure that convolutions pick up.
    coarse = rng.standard_normal(
        size=(num_classes, channels, min(4, height), min(4, width)), dtype=np.float32
    )
    templates = F.interpolate(
        torch.from_numpy(coarse), size=(height, width), mode="bilinear", align_corners=False
    ).numpy()
    labels = rng.permutation(np.arange(num_samples) % num_classes)  # balanced classes
    images = rng.standard_normal(size=(num_samples, channels, height, width), dtype=np.float32)
    images *= np.float32(noise)
    images += templates[labels]
    return _split_and_build("synthetic", images, labels.astype(np.int64), num_classes, test_fraction, seed)


# ---------------------------------------------------------------------------------------------- npz


def _npz_file(path: Any, layout: str | None) -> Path:
    if layout is not None and layout not in LAYOUTS:
        raise DatasetError(f"npz: layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise DatasetError(f"npz: path must be a file path, got {path!r}")
    file = Path(path)
    if not file.exists():
        raise DatasetError(f"npz: file not found: {file}")
    if not file.is_file():
        raise DatasetError(f"npz: not a file: {file}")
    if not zipfile.is_zipfile(file):
        raise DatasetError(f"npz: {file.name} is not an .npz archive (not a zip file)")
    return file


@dataclass(frozen=True)
class _NpzArrays:
    """An ``.npz`` dataset's arrays as stored (``N x C x H x W``) and its summary."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    summary: dict[str, Any]


def _read_npz(path: Any, layout: str | None = None, num_classes: int | None = None) -> _NpzArrays:
    """Read and check an ``.npz`` file: images ``N x C x H x W`` as stored (uint8 or float), int64 labels,
    the file's own test part when it has one, and the summary.

    Everything is checked (headers, then values in bounded chunks: :func:`darts_core.data.npz.check_npz`)
    before the arrays are loaded.
    """
    file = _npz_file(path, layout)
    max_classes = max(NPZ_MAX_CLASSES, num_classes or 0)
    try:
        contents = check_npz(file, max_values=NPZ_MAX_VALUES, max_classes=max_classes)
        found_classes = contents.num_classes
        if num_classes is not None and found_classes > num_classes:
            raise DatasetError(
                f"{contents.y.name}: label {found_classes - 1} out of range for num_classes={num_classes}"
            )
        with np.load(file, allow_pickle=False) as archive:
            x, y = archive[contents.x.name], archive[contents.y.name]
            images, used_layout = to_nchw(x, layout)
            test = None
            if contents.x_test is not None and contents.y_test is not None:
                test = (to_nchw(archive["x_test"], used_layout)[0], archive[contents.y_test.name])
    except NpzError as error:
        raise DatasetError(str(error)) from error
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as error:
        raise DatasetError(f"npz: cannot read {file.name}: {error}") from error
    summary = {
        "num_samples": int(images.shape[0]) + (0 if test is None else int(test[0].shape[0])),
        "num_test": 0 if test is None else int(test[0].shape[0]),
        "num_classes": int(num_classes or found_classes),
        "class_names": contents.class_names,
        "channels": int(images.shape[1]),
        "height": int(images.shape[2]),
        "width": int(images.shape[3]),
        "layout": used_layout,
        "dtype": str(contents.x.dtype),
    }
    return _NpzArrays(
        images,
        y.astype(np.int64),
        None if test is None else test[0],
        None if test is None else test[1].astype(np.int64),
        summary,
    )


def validate_npz(
    path: str | os.PathLike[str],
    layout: str | None = None,
    *,
    max_values: int = NPZ_MAX_VALUES,
    max_classes: int = NPZ_MAX_CLASSES,
) -> dict[str, Any]:
    """Check an ``.npz`` upload and summarise it with bounded memory, no array loaded whole (headers
    first, so a zip bomb is refused uninflated; see :func:`darts_core.data.npz.check_npz`).

    Returns ``{"num_samples", "num_classes", "channels", "height", "width", "layout", "dtype"}``
    (``layout`` is ``"NCHW"``, ``"NHWC"`` or ``"NHW"`` for grey images; ``dtype`` is the stored one).

    Raises:
        DatasetError: naming the problem (not an archive, missing ``x`` or ``y``, shapes, dtypes, more
            than ``max_values`` values, labels outside ``[0, max_classes)``, NaN/inf after the cast to
            float32, fewer than two classes).
    """
    file = _npz_file(path, layout)
    try:
        return summarize_npz(file, layout, max_values=max_values, max_classes=max_classes)
    except NpzError as error:
        raise DatasetError(str(error)) from error


def _as_float(images: np.ndarray) -> np.ndarray:
    """uint8 images as they are (normalised on the device); others as float32."""
    if images.dtype == np.uint8:
        return images
    with np.errstate(over="ignore", invalid="ignore"):
        return images.astype(np.float32)  # finite after this cast: checked by check_npz


def _load_npz(spec: Mapping[str, Any]) -> ImageDataset:
    if "path" not in spec:
        raise DatasetError("npz: missing 'path'")
    num_classes = _optional_int_param(spec, "npz", "num_classes", 2)
    test_fraction, seed = _split_params(spec, "npz")
    arrays = _read_npz(spec["path"], spec.get("layout"), num_classes)
    names = tuple(arrays.summary["class_names"] or ())
    return _given_or_split(
        "npz",
        (arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test),
        int(arrays.summary["num_classes"]),
        names,
        test_fraction,
        seed,
    )


def _given_or_split(
    name: str,
    parts: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None],
    num_classes: int,
    class_names: tuple[str, ...],
    test_fraction: float,
    seed: int,
) -> ImageDataset:
    """The data's own train/test split when it has one (used as given), else the stratified split."""
    x_train, y_train, x_test, y_test = parts
    if x_test is not None and y_test is not None:
        return _build(
            name, _as_float(x_train), y_train, _as_float(x_test), y_test, num_classes, class_names
        )
    return _split_and_build(
        name, _as_float(x_train), y_train, num_classes, test_fraction, seed, class_names
    )


# ---------------------------------------------------------------------------------------------- folder


def _load_folder(spec: Mapping[str, Any]) -> ImageDataset:
    try:
        params = FolderDatasetSpec.model_validate(dict(spec))
    except ValidationError as error:
        raise DatasetError(f"folder: {format_validation_error(error)}") from None
    try:
        folder = read_image_folder(
            params.path, image_size=params.image_size, channels=params.channels, resize=params.resize
        )
    except FolderError as error:
        raise DatasetError(f"folder: {error}") from error
    names = tuple(folder.class_names)
    return _given_or_split(
        "folder",
        (folder.x_train, folder.y_train, folder.x_test, folder.y_test),
        len(names),
        names,
        params.test_fraction,
        params.seed,
    )


# ---------------------------------------------------------------------------------------------- cifar10

#: CIFAR-10's label names, in label order.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"


def _load_cifar10(spec: Mapping[str, Any]) -> ImageDataset:
    """Load CIFAR-10 from local python-format pickles (trusted files only: pickles can run code)."""
    if "root" not in spec:
        raise DatasetError("cifar10: missing 'root' (a local cifar-10-batches-py directory)")
    root_value = spec["root"]
    if not isinstance(root_value, (str, os.PathLike)) or not str(root_value):
        raise DatasetError(f"cifar10: root must be a directory path, got {root_value!r}")
    limit = _optional_int_param(spec, "cifar10", "limit", 1)
    test_limit = _optional_int_param(spec, "cifar10", "test_limit", 1)
    root = Path(root_value)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise DatasetError(f"cifar10: root is not a directory: {root}")

    train_images, train_labels, total = [], [], 0
    for name in _CIFAR_TRAIN_FILES:
        if limit is not None and total >= limit:
            break
        data, labels = read_cifar_batch(root / name)
        train_images.append(data)
        train_labels.append(labels)
        total += len(labels)
    x_train = np.concatenate(train_images)[:limit]
    y_train = np.concatenate(train_labels)[:limit]
    x_test, y_test = read_cifar_batch(root / _CIFAR_TEST_FILE)
    x_test, y_test = x_test[:test_limit], y_test[:test_limit]
    return _build("cifar10", x_train, y_train, x_test, y_test, 10, CIFAR10_CLASSES)


# ---------------------------------------------------------------------------------------------- registry

_LOADERS = {
    "digits": (_load_digits, {"test_fraction", "seed"}),
    "synthetic": (
        _load_synthetic,
        {"num_samples", "channels", "image_size", "num_classes", "noise", "test_fraction", "seed"},
    ),
    "npz": (_load_npz, {"path", "layout", "num_classes", "test_fraction", "seed"}),
    "folder": (_load_folder, set(FolderDatasetSpec.model_fields) - {"name"}),
    "cifar10": (_load_cifar10, {"root", "limit", "test_limit"}),
}


def load_dataset(spec: Mapping[str, Any]) -> ImageDataset:
    """Load a dataset from a spec such as ``{"name": "digits"}`` (see the module docstring for kinds).

    Raises:
        DatasetError: unknown ``name``, unknown keys for that kind, bad parameter values, bad files.
    """
    if not isinstance(spec, Mapping):
        raise DatasetError(f"spec: expected a mapping with a 'name', got {type(spec).__name__}")
    name = spec.get("name")
    if name not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {sorted(_LOADERS)}")
    loader, allowed = _LOADERS[name]
    unknown = sorted(set(spec) - allowed - {"name"})
    if unknown:
        raise DatasetError(f"{name}: unknown keys {unknown}; allowed {sorted(allowed)}")
    return loader(spec)

"""Reading a folder of images, one sub-folder per class (torchvision's ``ImageFolder`` convention).

:func:`read_image_folder` reads ``root/<class>/<image>`` (images may sit in nested folders below their
class folder) into uint8 ``N x C x H x W`` arrays; when ``root`` holds exactly ``train`` and ``test`` (or
``val``) folders, each laid out that way, the split is used as given. :func:`save_image_folder_npz`
writes the result in the stored form the ``npz`` dataset reads back (uint8 images and the class names).

Reading is hostile-input safe: every image's header (format, mode, size) is read first, so a
decompression bomb is refused from its announced pixel count before anything is decoded (Pillow's own
guard, ``PIL.Image.MAX_IMAGE_PIXELS``, stays on too), the total memory is known before it is allocated,
and a truncated or corrupt image stops the read with a :class:`FolderError` naming the file. Files that
are no image are skipped and listed in :attr:`ImageFolder.skipped`; ``__MACOSX`` folders, ``.DS_Store``
and hidden files and folders (names starting with ``.``) are ignored; links are skipped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from darts_core.data.npz import NPZ_MAX_CLASSES, NPZ_MAX_VALUES

__all__ = [
    "FolderError",
    "ImageFolder",
    "read_image_folder",
    "save_image_folder_npz",
    "IMAGE_FORMATS",
    "RESIZE_METHODS",
    "FOLDER_MAX_IMAGE_PIXELS",
]

#: The Pillow formats read (GIF: the first frame).
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})
#: File name endings of those formats: a file ending so that Pillow cannot read is corrupt, not skipped.
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".dib", ".gif"})
#: Resize methods by spec name.
RESIZE_METHODS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
ResizeMethod = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
#: Default ceiling on one image's pixels (width x height, from its header): 4096 x 4096.
FOLDER_MAX_IMAGE_PIXELS = 4096 * 4096
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
_SPLIT_TEST_NAMES = ("test", "val")


class FolderError(ValueError):
    """An image folder cannot be read as a dataset; the message names the file or folder and the problem."""


@dataclass
class ImageFolder:
    """The images of a folder, decoded.

    Attributes:
        x_train: uint8 ``N x C x H x W`` (``C`` is 1 or 3).
        y_train: int64 ``N``, indices into ``class_names``.
        x_test: uint8 ``M x C x H x W`` from the folder's ``test`` (or ``val``) part; ``None`` when the
            folder has no such split.
        y_test: int64 ``M``, or ``None``.
        class_names: the class folders' names, sorted (as torchvision's ``ImageFolder`` sorts them).
        skipped: ``(relative path, reason)`` of every file that was left out (no image, a link, ...).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def class_counts(self) -> dict[str, int]:
        """Images per class, both parts together."""
        labels = self.y_train if self.y_test is None else np.concatenate([self.y_train, self.y_test])
        counts = np.bincount(labels, minlength=len(self.class_names))
        return {name: int(count) for name, count in zip(self.class_names, counts, strict=True)}

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    @property
    def num_samples(self) -> int:
        return int(self.x_train.shape[0]) + (0 if self.x_test is None else int(self.x_test.shape[0]))


@dataclass(frozen=True)
class _Entry:
    path: Path
    relative: str
    label: int
    width: int
    height: int
    grey: bool


def _display(relative: str) -> str:
    return relative if relative.isprintable() else ascii(relative)


def _check_name(name: str, relative: str) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FolderError(f"{ascii(relative)}: the name is not UTF-8") from None


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_NAMES


def _visible_dirs(directory: Path) -> list[str]:
    names = []
    for entry in os.scandir(directory):
        if _ignored(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        _check_name(entry.name, entry.name)
        names.append(entry.name)
    return sorted(names)


def _files_below(top: Path, prefix: str, skipped: list[tuple[str, str]]) -> list[tuple[Path, str]]:
    """Every regular file below ``top`` (sorted; ignored names pruned), as (path, relative name)."""
    found: list[tuple[Path, str]] = []
    pending = [(top, prefix)]
    while pending:
        directory, relative_dir = pending.pop()
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        for entry in entries:
            relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
            if _ignored(entry.name):
                continue
            _check_name(entry.name, relative)
            if entry.is_symlink():
                skipped.append((relative, "a link"))
            elif entry.is_dir():
                pending.append((Path(entry.path), relative))
            elif entry.is_file():
                found.append((Path(entry.path), relative))
            else:
                skipped.append((relative, "not a regular file"))
    return sorted(found, key=lambda item: item[1])


def _read_header(path: Path, relative: str, label: int, max_image_pixels: int) -> _Entry | str:
    """The image's header as an entry, or the reason it is skipped; FolderError when corrupt or too big."""
    name = _display(relative)
    try:
        with Image.open(path) as image:
            kind, mode, (width, height) = image.format, image.mode, image.size
    except Image.DecompressionBombError as error:
        raise FolderError(f"{name}: refused as a decompression bomb ({error})") from None
    except UnidentifiedImageError:
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            raise FolderError(f"{name}: corrupt image (Pillow cannot identify it)") from None
        return "not an image"
    except Exception as error:  # Pillow's parsers raise many kinds of errors on hostile bytes
        raise FolderError(f"{name}: corrupt image ({type(error).__name__}: {error})") from None
    if kind not in IMAGE_FORMATS:
        return f"unsupported image format {kind}"
    if width * height > max_image_pixels:
        raise FolderError(
            f"{name}: {width} x {height} = {width * height} pixels exceed the limit of {max_image_pixels} "
            "(refused before decoding)"
        )
    if width == 0 or height == 0:
        raise FolderError(f"{name}: empty image ({width} x {height})")
    return _Entry(path, relative, label, width, height, mode in _GREY_MODES)


def _decode(entry: _Entry, mode: str, size: tuple[int, int] | None, resample: Image.Resampling) -> np.ndarray:
    """One image as uint8 ``C x H x W`` in ``mode`` (``L`` or ``RGB``), resized to ``size`` (H, W)."""
    try:
        with Image.open(entry.path) as image:
            image.seek(0)  # GIF: the first frame
            if (image.width, image.height) != (entry.width, entry.height):
                raise FolderError(f"{_display(entry.relative)}: the file changed while it was read")
            if size is not None and image.format == "JPEG":
                image.draft(mode, (size[1], size[0]))  # decodes at a reduced scale when that is enough
            converted = image.convert(mode)
            if size is not None and converted.size != (size[1], size[0]):
                converted = converted.resize((size[1], size[0]), resample)
            pixels = np.asarray(converted, dtype=np.uint8)
    except FolderError:
        raise
    except Exception as error:  # truncated data, bad chunks, Pillow's bomb guard: the file is named
        raise FolderError(
            f"{_display(entry.relative)}: corrupt or truncated image ({type(error).__name__}: {error})"
        ) from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _size_param(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    sides = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
    if len(sides) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides):
        raise FolderError(f"image_size must be a positive integer or [H, W], got {image_size!r}")
    return int(sides[0]), int(sides[1])


def _scan(
    part: Path, prefix: str, class_names: list[str] | None, skipped: list[tuple[str, str]]
) -> tuple[list[str], list[tuple[Path, str, int]]]:
    """Class folders of ``part`` and their files (path, relative name, label)."""
    names = _visible_dirs(part)
    for entry in sorted(os.scandir(part), key=lambda e: e.name):
        if not _ignored(entry.name) and (entry.is_symlink() or not entry.is_dir()):
            relative = f"{prefix}/{entry.name}" if prefix else entry.name
            _check_name(entry.name, relative)
            skipped.append((relative, "a link" if entry.is_symlink() else "not in a class folder"))
    if class_names is not None:
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise FolderError(f"{prefix}: classes {unknown} have no images in train")
        names = class_names
    label_of = {name: label for label, name in enumerate(names)}
    files: list[tuple[Path, str, int]] = []
    for name in names:
        if not (part / name).is_dir():
            continue
        relative = f"{prefix}/{name}" if prefix else name
        below = _files_below(part / name, relative, skipped)
        files.extend((path, rel, label_of[name]) for path, rel in below)
    return names, files


def read_image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    resize: ResizeMethod = "bilinear",
    max_classes: int = NPZ_MAX_CLASSES,
    max_image_pixels: int = FOLDER_MAX_IMAGE_PIXELS,
    max_values: int = NPZ_MAX_VALUES,
    workers: int | None = None,
) -> ImageFolder:
    """Read ``root/<class>/<image>`` (or ``root/train/<class>/...`` + ``root/test|val/<class>/...``).

    Args:
        root: the folder.
        image_size: ``H = W`` or ``(H, W)`` every image is resized to; required when the sizes differ.
        channels: 1 (grey, ``L``) or 3 (``RGB``); by default 1 when every image is grey, else 3.
        resize: the resize filter (see :data:`RESIZE_METHODS`).
        max_classes: most class folders accepted.
        max_image_pixels: most pixels (from the header) of one image; larger ones are refused undecoded.
        max_values: most values (``N x C x H x W``) of the whole dataset, checked before decoding.
        workers: decoding threads (Pillow releases the GIL while it decodes); default: the CPU count, at
            most 8.

    Returns:
        an :class:`ImageFolder` (uint8 images, labels, sorted class names, the skipped files).

    Raises:
        FolderError: naming the file or parameter: not a folder, fewer than 2 classes or more than
            ``max_classes``, a class with fewer than 2 images, differing sizes without ``image_size``,
            corrupt or truncated images, decompression bombs, non-UTF-8 names, bad parameters.
    """
    size = _size_param(image_size)
    if channels not in (None, 1, 3):
        raise FolderError(f"channels must be 1 or 3, got {channels!r}")
    if resize not in RESIZE_METHODS:
        raise FolderError(f"resize must be one of {sorted(RESIZE_METHODS)}, got {resize!r}")
    top = Path(root)
    if not top.is_dir():
        raise FolderError(f"{top.name or root}: not a folder")

    skipped: list[tuple[str, str]] = []
    top_dirs = _visible_dirs(top)
    tests = [name for name in _SPLIT_TEST_NAMES if name in top_dirs]
    split = "train" in top_dirs and len(tests) >= 1 and set(top_dirs) <= {"train", *_SPLIT_TEST_NAMES}
    if split and len(tests) > 1:
        raise FolderError("both test/ and val/ beside train/: keep one of them")
    if split:
        class_names, train_files = _scan(top / "train", "train", None, skipped)
        _, test_files = _scan(top / tests[0], tests[0], class_names, skipped)
    else:
        class_names, train_files = _scan(top, "", None, skipped)
        test_files = []
    if len(class_names) > max_classes:
        raise FolderError(f"{len(class_names)} class folders exceed the limit of {max_classes} classes")
    if len(class_names) < 2:
        raise FolderError(f"needs at least 2 class folders, found {len(class_names)}: {class_names}")

    threads = workers if workers is not None else min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        parts: list[list[_Entry]] = []
        for files in (train_files, test_files):
            entries = []
            headers = pool.map(lambda item: _read_header(item[0], item[1], item[2], max_image_pixels), files)
            for (_, relative, _), header in zip(files, headers, strict=True):
                if isinstance(header, str):
                    skipped.append((relative, header))
                else:
                    entries.append(header)
            parts.append(entries)
        train, test = parts
        counts = np.bincount([e.label for e in train + test], minlength=len(class_names))
        in_train = np.bincount([e.label for e in train], minlength=len(class_names))
        for name, count, trained in zip(class_names, counts, in_train, strict=True):
            if count < 2 or trained < 1:
                where = "in train/" if split and trained < 1 else ""
                raise FolderError(f"class {name!r}: needs at least 2 images {where}, found {int(count)}")

        if size is None:
            sizes = {(e.height, e.width) for e in train + test}
            if len(sizes) > 1:
                first = train[0]
                other = next(e for e in train + test if (e.height, e.width) != (first.height, first.width))
                raise FolderError(
                    f"images differ in size ({_display(first.relative)} is {first.width} x {first.height}, "
                    f"{_display(other.relative)} is {other.width} x {other.height}); give image_size"
                )
            height, width = sizes.pop()
        else:
            height, width = size
        mode_channels = channels if channels is not None else (1 if all(e.grey for e in train + test) else 3)
        mode = "L" if mode_channels == 1 else "RGB"
        values = (len(train) + len(test)) * mode_channels * height * width
        if values > max_values:
            raise FolderError(
                f"{len(train) + len(test)} images x {mode_channels} x {height} x {width} = {values} values "
                f"exceed the limit of {max_values}"
            )

        resample = RESIZE_METHODS[resize]
        arrays = []
        for entries in (train, test):
            out = np.empty((len(entries), mode_channels, height, width), dtype=np.uint8)

            def fill(index: int, out: np.ndarray = out, entries: list[_Entry] = entries) -> None:
                out[index] = _decode(entries[index], mode, (height, width), resample)

            for _ in pool.map(fill, range(len(entries))):
                pass
            arrays.append((out, np.array([e.label for e in entries], dtype=np.int64)))
    (x_train, y_train), (x_test, y_test) = arrays
    return ImageFolder(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test if split else None,
        y_test=y_test if split else None,
        class_names=class_names,
        skipped=skipped,
    )


def save_image_folder_npz(folder: ImageFolder, path: str | os.PathLike[str]) -> None:
    """Write ``folder`` as an ``.npz`` the ``npz`` dataset reads: uint8 ``x_train``, int64 ``y_train``
    (and ``x_test``, ``y_test`` when the folder was split) and ``class_names`` (a unicode array).

    The file appears whole or not at all (written beside ``path``, then renamed).
    """
    target = Path(path)
    arrays: dict[str, np.ndarray] = {
        "x_train": folder.x_train,
        "y_train": folder.y_train,
        "class_names": np.array(folder.class_names, dtype=np.str_),
    }
    if folder.x_test is not None and folder.y_test is not None:
        arrays["x_test"], arrays["y_test"] = folder.x_test, folder.y_test
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, allow_pickle=False, **arrays)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

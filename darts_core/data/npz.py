"""Checking an ``.npz`` image dataset without trusting it: headers first, then values in bounded chunks.

An ``.npz`` is a zip of ``.npy`` members. :func:`read_headers` reads each member's ``.npy`` header
(dtype, shape, order) and compares it with the zip directory's uncompressed size, so a member that
claims billions of values (a small zip of zeros can inflate to gigabytes) is refused before anything is
inflated. :func:`check_npz` then streams ``x`` and ``y`` through fixed-size chunks: memory stays bounded
whatever the file holds, and no array is ever loaded whole.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

__all__ = [
    "ArrayHeader",
    "NpzContents",
    "NpzError",
    "read_headers",
    "check_npz",
    "summarize_npz",
    "to_nchw",
]

#: Bytes read (inflated) at a time while values are checked.
CHUNK_BYTES = 8 * 2**20
_MAX_MEMBERS = 16
_MAX_HEADER_BYTES = 64 * 1024


#: Default bounds: values of ``x`` (1 GiB as float32) and classes.
NPZ_MAX_VALUES = 2**28
NPZ_MAX_CLASSES = 1000

LAYOUTS = ("NCHW", "NHWC")
_CHANNEL_SIZES = (1, 3, 4)


def to_nchw(x: np.ndarray, layout: str | None) -> tuple[np.ndarray, str]:
    """``x`` as N x C x H x W (a view) and the layout it had: ``layout``, or guessed from the axes of
    size 1, 3 or 4 (axis 1 or 3, exactly one); grey N x H x W gets a channel axis."""
    if x.ndim == 3:  # grey N x H x W
        return x[:, None], "NHW"
    if layout is None:
        candidates = [name for name, axis in (("NCHW", 1), ("NHWC", 3)) if x.shape[axis] in _CHANNEL_SIZES]
        if len(candidates) != 1:
            raise NpzError(
                f"x: cannot tell the channels axis of shape {tuple(x.shape)} (axis 1 or 3 of size 1, 3 or 4 "
                "expected, exactly one); give layout 'NCHW' or 'NHWC'"
            )
        layout = candidates[0]
    if layout == "NHWC":
        return np.transpose(x, (0, 3, 1, 2)), layout
    return x, layout



class NpzError(ValueError):
    """The file is not a usable dataset; the message names the array and the problem."""


@dataclass(frozen=True)
class ArrayHeader:
    """One ``.npy`` member as its header describes it."""

    name: str
    member: str  # the zip member's file name
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int  # where the values start in the (inflated) member

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _read_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> ArrayHeader:
    name = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else info.filename
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(
                    member, max_header_size=_MAX_HEADER_BYTES
                )
            elif version in ((2, 0), (3, 0)):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(
                    member, max_header_size=_MAX_HEADER_BYTES
                )
            else:
                raise NpzError(f"{name}: unsupported .npy format version {version}")
        except NpzError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as error:
            raise NpzError(f"{name}: not a readable .npy array") from error
        offset = member.tell()
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise NpzError(f"{name}: dtype {dtype} is not numeric (objects and records are refused)")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise NpzError(f"{name}: invalid shape {shape}")
    header = ArrayHeader(name, info.filename, dtype, tuple(shape), bool(fortran_order), offset)
    # The zip directory gives the inflated size: it must be what the header announces, no more, no less.
    expected = offset + header.size * dtype.itemsize
    if info.file_size != expected:
        raise NpzError(
            f"{name}: the archive says {info.file_size} bytes but its header announces {expected} "
            f"({header.size} values of {dtype})"
        )
    return header


def read_headers(path: str | os.PathLike[str]) -> dict[str, ArrayHeader]:
    """The header of every member of an ``.npz``, read without inflating any array's values."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > _MAX_MEMBERS:
                raise NpzError(f"npz: {len(members)} members, at most {_MAX_MEMBERS} expected")
            headers = [_read_header(archive, info) for info in members]
    except zipfile.BadZipFile as error:
        raise NpzError("npz: not an .npz archive (not a zip file)") from error
    return {header.name: header for header in headers}


def _chunks(path: str | os.PathLike[str], header: ArrayHeader) -> Iterator[np.ndarray]:
    """The member's values in storage order, at most CHUNK_BYTES at a time."""
    itemsize = header.dtype.itemsize
    per_chunk = max(1, CHUNK_BYTES // max(itemsize, 1))
    remaining = header.size
    with zipfile.ZipFile(path) as archive, archive.open(header.member) as member:
        _skip(member, header.data_offset)
        while remaining > 0:
            count = min(per_chunk, remaining)
            data = member.read(count * itemsize)
            if len(data) != count * itemsize:
                raise NpzError(f"{header.name}: truncated array data")
            yield np.frombuffer(data, dtype=header.dtype)
            remaining -= count


def _skip(member: IO[bytes], count: int) -> None:
    while count > 0:
        skipped = len(member.read(min(count, CHUNK_BYTES)))
        if skipped == 0:
            raise NpzError("npz: truncated member")
        count -= skipped


#: Longest class name in ``class_names`` (characters).
MAX_CLASS_NAME = 255


@dataclass(frozen=True)
class NpzContents:
    """What :func:`check_npz` found: the headers of the image and label arrays of each part.

    ``x``/``y`` are ``x``/``y`` or ``x_train``/``y_train``; ``x_test``/``y_test`` are set when the file
    holds its own test part; ``class_names`` when it names its classes.
    """

    x: ArrayHeader
    y: ArrayHeader
    x_test: ArrayHeader | None
    y_test: ArrayHeader | None
    num_classes: int
    class_names: list[str] | None


def _check_pair(x: ArrayHeader, y: ArrayHeader) -> None:
    if x.dtype.kind not in "uif":
        raise NpzError(f"{x.name}: dtype {x.dtype} is not numeric; use uint8 (0..255) or float")
    if x.dtype.kind in "ui" and x.dtype != np.uint8:
        raise NpzError(f"{x.name}: dtype {x.dtype} is not supported; use uint8 (0..255) or float")
    if len(x.shape) not in (3, 4):
        raise NpzError(
            f"{x.name}: expected N x C x H x W, N x H x W x C or N x H x W, got shape {x.shape}"
        )
    if len(y.shape) != 1:
        raise NpzError(f"{y.name}: expected a 1-d array of N labels, got shape {y.shape}")
    if y.dtype.kind not in "uif":
        raise NpzError(f"{y.name}: labels must be integers, got dtype {y.dtype}")
    if x.shape[0] != y.shape[0]:
        raise NpzError(f"{x.name} has {x.shape[0]} samples but {y.name} has {y.shape[0]}")
    if x.shape[0] == 0:
        raise NpzError(f"{x.name}: no samples")
    if 0 in x.shape[1:]:
        raise NpzError(f"{x.name}: empty image dimension in shape {x.shape}")


def _check_labels(path: str | os.PathLike[str], y: ArrayHeader, present: np.ndarray) -> None:
    max_classes = len(present)
    for labels in _chunks(path, y):
        if labels.dtype.kind == "f" and (
            not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels))
        ):
            raise NpzError(f"{y.name}: labels must be integers, got non-integer values (dtype {y.dtype})")
        low, high = labels.min(), labels.max()
        if low < 0:
            raise NpzError(f"{y.name}: labels must be >= 0, found {int(low)}")
        if high >= max_classes:
            raise NpzError(
                f"{y.name}: label {int(high)} out of range: at most {max_classes} classes are allowed"
            )
        present[labels.astype(np.int64)] = True


def _check_images(path: str | os.PathLike[str], x: ArrayHeader) -> None:
    if x.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            for values in _chunks(path, x):
                if not np.isfinite(values.astype(np.float32)).all():
                    raise NpzError(
                        f"{x.name}: contains NaN or infinite values (or values beyond float32's range)"
                    )


def _read_class_names(path: str | os.PathLike[str], header: ArrayHeader, max_classes: int) -> list[str]:
    if header.dtype.kind != "U" or len(header.shape) != 1:
        raise NpzError(f"class_names: expected a 1-d array of strings, got {header.dtype} {header.shape}")
    if header.dtype.itemsize > 4 * MAX_CLASS_NAME:
        raise NpzError(f"class_names: names longer than {MAX_CLASS_NAME} characters")
    if not 2 <= header.size <= max_classes:
        raise NpzError(f"class_names: {header.size} names, expected 2 to {max_classes}")
    names = [str(name) for chunk in _chunks(path, header) for name in chunk]
    if any(not name.strip() or not name.isprintable() for name in names):
        raise NpzError("class_names: names must be non-empty printable text")
    if len(set(names)) != len(names):
        raise NpzError("class_names: names must be distinct")
    return names


def check_npz(
    path: str | os.PathLike[str], *, max_values: int, max_classes: int
) -> NpzContents:
    """Check an ``.npz`` dataset with bounded memory.

    The file holds ``x`` (images) and ``y`` (labels), or ``x_train``/``y_train`` and optionally its own
    test part ``x_test``/``y_test`` (what :func:`darts_core.data.folder.save_image_folder_npz` writes);
    optionally ``class_names`` (1-d strings, label ``i`` names ``class_names[i]``).

    Headers first (:func:`read_headers`): images are ``uint8`` or float with 3 or 4 axes, at most
    ``max_values`` values in all; labels are 1-d with one label per image, of an integer or float dtype;
    a test part has the training part's image shape. Then the values, chunk by chunk: every image value
    is finite once cast to float32 (what training uses), and every label is an integer in
    ``[0, max_classes)`` (``[0, len(class_names))`` when named); at least two classes occur in training.

    Returns the headers and the number of classes (``len(class_names)``, else the largest label + 1).
    """
    headers = read_headers(path)
    if "x_train" in headers or "y_train" in headers:
        keys = ("x_train", "y_train")
        test_keys: tuple[str, str] | None = ("x_test", "y_test")
        if ("x_test" in headers) != ("y_test" in headers):
            raise NpzError(f"npz: x_test and y_test go together (found {sorted(headers)})")
        if "x_test" not in headers:
            test_keys = None
    else:
        keys, test_keys = ("x", "y"), None
    for key in (*keys, *(test_keys or ())):
        if key not in headers:
            raise NpzError(f"npz: missing array {key!r} (found {sorted(headers)})")
    x, y = headers[keys[0]], headers[keys[1]]
    x_test, y_test = (headers[test_keys[0]], headers[test_keys[1]]) if test_keys else (None, None)
    pairs = [(x, y)] + ([(x_test, y_test)] if x_test is not None and y_test is not None else [])
    for images, labels in pairs:
        _check_pair(images, labels)
    total = sum(images.size for images, _ in pairs)
    if total > max_values:
        shape = " x ".join(map(str, x.shape))
        raise NpzError(f"{x.name}: {total} values ({shape}) exceed the limit of {max_values}")
    if x_test is not None and (x_test.shape[1:] != x.shape[1:] or x_test.dtype != x.dtype):
        raise NpzError(
            f"x_test: images {x_test.dtype} {x_test.shape[1:]} differ from x_train's {x.dtype} {x.shape[1:]}"
        )

    class_names = None
    if "class_names" in headers:
        class_names = _read_class_names(path, headers["class_names"], max_classes)
    present = np.zeros(len(class_names) if class_names else max_classes, dtype=bool)
    _check_labels(path, y, present)
    found = int(present.sum())
    if found < 2:
        raise NpzError(f"{y.name}: needs at least 2 classes, found {found}")
    if y_test is not None:
        _check_labels(path, y_test, present)
    for images, _ in pairs:
        _check_images(path, images)
    num_classes = len(class_names) if class_names else int(np.flatnonzero(present).max()) + 1
    return NpzContents(x, y, x_test, y_test, num_classes, class_names)


def summarize_npz(
    path: str | os.PathLike[str],
    layout: str | None = None,
    *,
    max_values: int = NPZ_MAX_VALUES,
    max_classes: int = NPZ_MAX_CLASSES,
) -> dict[str, Any]:
    """:func:`check_npz`, then the dataset's summary: ``num_samples`` (both parts), ``num_test`` (of the
    file's own test part; 0 when it has none), ``num_classes``, ``class_names`` (``None`` when unnamed),
    ``channels``, ``height``, ``width``, ``layout`` (``NCHW``, ``NHWC`` or ``NHW``) and the stored
    ``dtype``."""
    if layout is not None and layout not in LAYOUTS:
        raise NpzError(f"npz: layout must be one of {list(LAYOUTS)}, got {layout!r}")
    contents = check_npz(path, max_values=max_values, max_classes=max_classes)
    x = contents.x
    # The layout rules applied to a value-less stand-in of x (a broadcast view: no memory).
    images, used_layout = to_nchw(np.broadcast_to(np.zeros((), dtype=x.dtype), x.shape), layout)
    num_test = 0 if contents.x_test is None else int(contents.x_test.shape[0])
    return {
        "num_samples": int(images.shape[0]) + num_test,
        "num_test": num_test,
        "num_classes": contents.num_classes,
        "class_names": contents.class_names,
        "channels": int(images.shape[1]),
        "height": int(images.shape[2]),
        "width": int(images.shape[3]),
        "layout": used_layout,
        "dtype": str(x.dtype),
    }

"""darts_core.data.npz: headers checked before values, values checked in bounded chunks."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import write_npz_of_zeros

from darts_core.data.npz import NpzError, check_npz, read_headers
from darts_core.data.registry import DatasetError, load_dataset, validate_npz

BOMB_SHAPE = (10000, 3, 128, 128)  # 491,520,000 uint8 values: 0.5 GB inflated, 0.5 MB deflated


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "zeros.npz"
    write_npz_of_zeros(path, BOMB_SHAPE)
    return path


def _save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def test_a_zip_bomb_is_refused_from_its_header_without_inflating_it(zip_bomb: Path) -> None:
    assert zip_bomb.stat().st_size < 1024 * 1024
    headers = read_headers(zip_bomb)
    assert headers["x"].shape == BOMB_SHAPE and headers["x"].dtype == np.uint8
    with pytest.raises(DatasetError, match=r"x: 491520000 values \(10000 x 3 x 128 x 128\) exceed the limit"):
        validate_npz(zip_bomb)
    # Measured in a fresh process: refusing it costs no memory (inflated, x alone is 469 MiB).
    script = (
        "import resource, sys, json\n"
        "import darts_core.data.npz as npz\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    npz.check_npz(sys.argv[1], max_values=2**28, max_classes=1000)\n"
        "except npz.NpzError as error:\n"
        "    message = str(error)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'grew_kib': after - before, 'message': message}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(zip_bomb)], capture_output=True, text=True, check=True, timeout=300
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "exceed the limit" in result["message"]
    assert result["grew_kib"] < 32 * 1024, result


def test_the_value_bound_also_holds_below_the_header_check(tmp_path: Path) -> None:
    """Values stream through fixed chunks: a valid archive larger than one chunk is checked whole."""
    x = np.zeros((600, 3, 64, 64), dtype=np.float32)  # 29 MiB: several chunks
    x[599, 2, 63, 63] = np.nan  # in the last chunk
    path = _save(tmp_path / "late-nan.npz", x=x, y=np.arange(600) % 3)
    with pytest.raises(NpzError, match="x: contains NaN or infinite values"):
        check_npz(path, max_values=2**28, max_classes=10)
    x[599, 2, 63, 63] = 0
    path = _save(tmp_path / "fine.npz", x=x, y=np.arange(600) % 3)
    contents = check_npz(path, max_values=2**28, max_classes=10)
    assert contents.x.shape == (600, 3, 64, 64) and contents.num_classes == 3
    with pytest.raises(NpzError, match=r"x: 7372800 values .* exceed the limit of 1000000"):
        check_npz(path, max_values=10**6, max_classes=10)


def test_labels_are_bounded_by_max_classes(tmp_path: Path) -> None:
    x = np.zeros((4, 1, 4, 4), dtype=np.uint8)
    path = _save(tmp_path / "huge-label.npz", x=x, y=np.array([0, 1, 2, 50_000_000]))
    with pytest.raises(DatasetError, match=r"y: label 50000000 out of range: at most 1000 classes"):
        validate_npz(path)
    with pytest.raises(DatasetError, match=r"y: label 50000000 out of range"):
        load_dataset({"name": "npz", "path": str(path), "layout": "NCHW"})
    assert validate_npz(path, "NCHW", max_classes=50_000_001)["num_classes"] == 50_000_001


def test_finiteness_is_checked_after_the_cast_to_float32(tmp_path: Path) -> None:
    x = np.zeros((4, 1, 4, 4), dtype=np.float64)
    x[0, 0, 0, 0] = 1e300  # finite as float64, inf as float32
    path = _save(tmp_path / "beyond.npz", x=x, y=np.array([0, 1, 0, 1]))
    with pytest.raises(DatasetError, match="beyond float32's range"):
        validate_npz(path)
    with pytest.raises(DatasetError, match="beyond float32's range"):
        load_dataset({"name": "npz", "path": str(path), "layout": "NCHW"})


def test_a_member_whose_directory_size_disagrees_with_its_header_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros((4, 1, 4, 4), dtype=np.uint8))
    lying = buffer.getvalue()[:-16]  # the header announces 16 more bytes than the member holds
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", lying)
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.array([0, 1, 0, 1]))
        archive.writestr("y.npy", buffer.getvalue())
    with pytest.raises(NpzError, match="x: the archive says .* bytes but its header announces"):
        read_headers(path)


def test_validate_npz_never_names_the_files_path(tmp_path: Path) -> None:
    path = _save(tmp_path / "one-class.npz", x=np.zeros((4, 1, 4, 4), np.uint8), y=np.zeros(4, np.int64))
    with pytest.raises(DatasetError) as error:
        validate_npz(path, layout="NCHW")
    assert str(tmp_path) not in str(error.value)

"""Dataset registry: every kind, determinism, normalisation, and every npz / spec error."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from darts_core.data.registry import DatasetError, ImageDataset, load_dataset, validate_npz
from darts_core.spec.dataset_spec import builtin_datasets


def _assert_well_formed(ds: ImageDataset, channels: int, size: tuple[int, int], num_classes: int) -> None:
    assert ds.x_train.dtype == ds.x_test.dtype and ds.x_train.dtype in (torch.float32, torch.uint8)
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert ds.x_train.shape[1:] == (channels, *size)
    assert ds.x_test.shape[1:] == (channels, *size)
    assert ds.x_train.shape[0] == ds.y_train.shape[0] and ds.x_test.shape[0] == ds.y_test.shape[0]
    assert ds.in_channels == channels
    assert ds.image_size == size
    assert ds.num_classes == num_classes
    assert 0 <= int(ds.y_train.min()) and int(ds.y_train.max()) < num_classes
    # normalised per channel with the training statistics
    # (uint8 images on the device batch by batch: ds.normalize gives the model's input)
    mean = ds.normalize(ds.x_train).mean(dim=(0, 2, 3))
    std = ds.normalize(ds.x_train).std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(channels), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones(channels), atol=1e-4, rtol=0)
    json.dumps(ds.describe())


def _train_test_overlap(ds: ImageDataset) -> int:
    train = {row.numpy().tobytes() for row in ds.x_train}
    return sum(row.numpy().tobytes() in train for row in ds.x_test)


# ---------------------------------------------------------------------------------------- digits


def test_digits_shapes_split_and_normalisation() -> None:
    ds = load_dataset({"name": "digits"})
    _assert_well_formed(ds, 1, (8, 8), 10)
    assert ds.name == "digits"
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 1797
    assert ds.x_test.shape[0] == pytest.approx(0.2 * 1797, abs=10)
    # stratified: every class is in both parts in about the same proportion
    train_counts = torch.bincount(ds.y_train, minlength=10).double()
    test_counts = torch.bincount(ds.y_test, minlength=10).double()
    ratio = test_counts / (train_counts + test_counts)
    assert ((ratio - 0.2).abs() < 0.02).all()
    # shuffled: the training labels are not grouped by class
    assert (ds.y_train[1:] != ds.y_train[:-1]).float().mean() > 0.8
    describe = ds.describe()
    assert describe["num_samples"] == 1797 and describe["channels"] == 1 and describe["height"] == 8
    assert describe["num_train"] == ds.x_train.shape[0]
    # the stored statistics undo the normalisation: original pixels are 0..16 / 16
    raw = ds.x_train * describe["channel_std"][0] + describe["channel_mean"][0]
    assert float(raw.min()) == pytest.approx(0.0, abs=1e-5)
    assert float(raw.max()) == pytest.approx(1.0, abs=1e-5)
    # the test split is normalised with the training statistics, not its own
    assert float(ds.x_test.mean()) != pytest.approx(0.0, abs=1e-6)


def test_digits_split_is_deterministic_per_seed() -> None:
    first = load_dataset({"name": "digits", "seed": 1, "test_fraction": 0.3})
    again = load_dataset({"name": "digits", "seed": 1, "test_fraction": 0.3})
    other = load_dataset({"name": "digits", "seed": 2, "test_fraction": 0.3})
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    assert not torch.equal(first.y_train, other.y_train)
    assert first.x_test.shape[0] == pytest.approx(0.3 * 1797, abs=10)


# ---------------------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_defaults_and_determinism() -> None:
    ds = load_dataset({"name": "synthetic"})
    _assert_well_formed(ds, 3, (16, 16), 4)
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 512
    assert torch.bincount(ds.y_train, minlength=4).min() > 90  # balanced classes
    again = load_dataset({"name": "synthetic"})
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_train, again.y_train)
    other = load_dataset({"name": "synthetic", "seed": 1})
    assert not torch.equal(ds.x_train, other.x_train)


def test_synthetic_parameters() -> None:
    spec = {"name": "synthetic", "num_samples": 60, "channels": 1, "image_size": [5, 7], "num_classes": 3}
    ds = load_dataset(spec | {"noise": 0.1, "test_fraction": 0.5})
    _assert_well_formed(ds, 1, (5, 7), 3)
    assert ds.x_train.shape[0] == 30 and ds.x_test.shape[0] == 30
    square = load_dataset({"name": "synthetic", "num_samples": 40, "image_size": 2})
    assert square.image_size == (2, 2)


def test_explicit_none_and_numpy_scalars_mean_the_defaults_and_values() -> None:
    spec = {"name": "synthetic", "num_samples": np.int64(40), "noise": np.float32(0.25), "seed": None}
    ds = load_dataset(spec | {"test_fraction": None, "image_size": None})
    assert ds.image_size == (16, 16) and ds.x_test.shape[0] == 8
    reference = load_dataset({"name": "synthetic", "num_samples": 40, "noise": 0.25, "seed": 0})
    assert torch.equal(ds.x_train, reference.x_train)


def test_synthetic_is_learnable_by_a_tiny_network() -> None:
    ds = load_dataset({"name": "synthetic", "num_samples": 300, "image_size": 8, "seed": 3})
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, ds.num_classes),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(10):
        for start in range(0, ds.x_train.shape[0], 60):
            batch = slice(start, start + 60)
            loss = nn.functional.cross_entropy(net(ds.x_train[batch]), ds.y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    assert accuracy >= 0.9  # chance is 0.25


# ---------------------------------------------------------------------------------------- npz


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _labels(n: int, k: int = 3) -> np.ndarray:
    return np.arange(n) % k


def test_npz_nchw_uint8_scaled_and_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(30, 3, 6, 5), dtype=np.uint8)
    path = _save(tmp_path / "d.npz", x=x, y=_labels(30))
    summary = validate_npz(path)
    assert summary == {
        "num_samples": 30,
        "num_test": 0,
        "num_classes": 3,
        "class_names": None,
        "channels": 3,
        "height": 6,
        "width": 5,
        "layout": "NCHW",
        "dtype": "uint8",
    }
    ds = load_dataset({"name": "npz", "path": str(path)})
    _assert_well_formed(ds, 3, (6, 5), 3)
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 30
    # uint8 was scaled to [0, 1] before normalisation
    assert ds.channel_mean[0] == pytest.approx(float(x[:, 0].mean()) / 255.0, abs=0.1)
    assert max(ds.channel_mean) < 1.0
    # every sample lands in exactly one split
    assert _train_test_overlap(ds) == 0


def test_npz_nhwc_float_is_transposed(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 6, 5, 3)).astype(np.float32)
    path = _save(tmp_path / "d.npz", x=x, y=_labels(24, 2))
    assert validate_npz(path)["layout"] == "NHWC"
    ds = load_dataset({"name": "npz", "path": path, "test_fraction": 0.25})
    _assert_well_formed(ds, 3, (6, 5), 2)
    # pixel values survive the transpose: unnormalise one training image and find it in x
    image = ds.x_train[0] * torch.tensor(ds.channel_std).view(3, 1, 1) + torch.tensor(ds.channel_mean).view(
        3, 1, 1
    )
    as_nhwc = image.permute(1, 2, 0).numpy()
    assert min(np.abs(x - as_nhwc).max(axis=(1, 2, 3))) < 1e-5


def test_npz_grey_and_forced_layout_and_num_classes(tmp_path: Path) -> None:
    grey = _save(
        tmp_path / "grey.npz",
        x=np.zeros((20, 4, 4), dtype=np.float64) + np.arange(20)[:, None, None],
        y=_labels(20, 2),
    )
    assert validate_npz(grey)["layout"] == "NHW"
    ds = load_dataset({"name": "npz", "path": grey, "num_classes": 5})
    _assert_well_formed(ds, 1, (4, 4), 5)

    ambiguous = _save(tmp_path / "amb.npz", x=np.zeros((20, 3, 8, 3), dtype=np.float32), y=_labels(20))
    with pytest.raises(DatasetError, match=r"cannot tell the channels axis of shape \(20, 3, 8, 3\)"):
        validate_npz(ambiguous)
    assert validate_npz(ambiguous, layout="NHWC")["channels"] == 3
    assert validate_npz(ambiguous, layout="NHWC")["height"] == 3
    forced = load_dataset({"name": "npz", "path": ambiguous, "layout": "NCHW"})
    assert forced.in_channels == 3 and forced.image_size == (8, 3)

    neither = _save(tmp_path / "neither.npz", x=np.zeros((20, 5, 8, 8), dtype=np.float32), y=_labels(20))
    with pytest.raises(DatasetError, match="give layout 'NCHW' or 'NHWC'"):
        load_dataset({"name": "npz", "path": neither})


def test_npz_integral_float_labels_are_accepted(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "d.npz", x=np.zeros((10, 1, 2, 2), dtype=np.float32), y=_labels(10, 2).astype(float)
    )
    assert validate_npz(path)["num_classes"] == 2


def _npz_error_cases(tmp_path: Path) -> list[tuple[Path, str]]:
    good_x = np.zeros((10, 1, 4, 4), dtype=np.float32)
    good_y = _labels(10, 2)
    not_zip = tmp_path / "plain.npz"
    not_zip.write_bytes(b"this is not a zip archive")
    npy = tmp_path / "array.npy"
    np.save(npy, good_x)
    bad_x = good_x.copy()
    bad_x[3, 0, 1, 1] = np.nan
    inf_x = good_x.copy()
    inf_x[0, 0, 0, 0] = np.inf
    return [
        (tmp_path / "missing.npz", "npz: file not found"),
        (tmp_path, "npz: not a file"),
        (not_zip, r"npz: plain.npz is not an .npz archive"),
        (npy, r"npz: array.npy is not an .npz archive"),
        (
            _save(tmp_path / "no_x.npz", images=good_x, y=good_y),
            r"npz: missing array 'x' \(found \['images', 'y'\]\)",
        ),
        (_save(tmp_path / "no_y.npz", x=good_x), r"npz: missing array 'y'"),
        (
            _save(tmp_path / "obj.npz", x=np.array([object()] * 10), y=good_y),
            r"x: dtype object is not numeric",
        ),
        (_save(tmp_path / "str.npz", x=np.array(["a"] * 10), y=good_y), r"x: dtype <U1 is not numeric"),
        (_save(tmp_path / "bool.npz", x=good_x > 0, y=good_y), r"x: dtype bool is not numeric"),
        (
            _save(tmp_path / "i32.npz", x=good_x.astype(np.int32), y=good_y),
            r"x: dtype int32 is not supported",
        ),
        (
            _save(tmp_path / "ndim.npz", x=np.zeros((10, 16)), y=good_y),
            r"x: expected N x C x H x W.*got shape \(10, 16\)",
        ),
        (
            _save(tmp_path / "ndim5.npz", x=np.zeros((10, 1, 2, 2, 1)), y=good_y),
            r"x: expected .*\(10, 1, 2, 2, 1\)",
        ),
        (_save(tmp_path / "y2d.npz", x=good_x, y=good_y[:, None]), r"y: expected a 1-d array .*\(10, 1\)"),
        (_save(tmp_path / "n.npz", x=good_x, y=good_y[:9]), r"x has 10 samples but y has 9"),
        (_save(tmp_path / "empty.npz", x=good_x[:0], y=good_y[:0]), r"x: no samples"),
        (
            _save(tmp_path / "yfrac.npz", x=good_x, y=good_y + 0.5),
            r"y: labels must be integers, got non-integer",
        ),
        (
            _save(tmp_path / "ystr.npz", x=good_x, y=np.array(["cat"] * 10)),
            r"y: labels must be integers, got dtype",
        ),
        (_save(tmp_path / "neg.npz", x=good_x, y=good_y - 1), r"y: labels must be >= 0, found -1"),
        (_save(tmp_path / "nan.npz", x=bad_x, y=good_y), r"x: contains NaN or infinite values"),
        (_save(tmp_path / "inf.npz", x=inf_x, y=good_y), r"x: contains NaN or infinite values"),
        (
            _save(tmp_path / "one.npz", x=good_x, y=np.zeros(10, dtype=np.int64)),
            r"y: needs at least 2 classes, found 1",
        ),
    ]


def test_every_npz_error_is_named(tmp_path: Path) -> None:
    cases = _npz_error_cases(tmp_path)
    for path, message in cases:
        with pytest.raises(DatasetError, match=message):
            validate_npz(path)
        with pytest.raises(DatasetError, match=message):
            load_dataset({"name": "npz", "path": str(path)})
    assert issubclass(DatasetError, ValueError)


def test_npz_spec_errors(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", x=np.zeros((10, 1, 4, 4), dtype=np.float32), y=_labels(10, 3))
    with pytest.raises(DatasetError, match=r"y: label 2 out of range for num_classes=2"):
        load_dataset({"name": "npz", "path": path, "num_classes": 2})
    with pytest.raises(DatasetError, match=r"npz: layout must be one of \['NCHW', 'NHWC'\], got 'CHW'"):
        load_dataset({"name": "npz", "path": path, "layout": "CHW"})
    with pytest.raises(DatasetError, match="npz: missing 'path'"):
        load_dataset({"name": "npz"})
    with pytest.raises(DatasetError, match="npz: path must be a file path"):
        load_dataset({"name": "npz", "path": 3})


# ---------------------------------------------------------------------------------------- cifar10


def _write_cifar(root: Path, per_batch: int = 4, protocol: int = 2) -> np.ndarray:
    """A tiny cifar-10-batches-py directory: same files and pickled dict layout, a few images each."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_data = []
    for index, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [(index + i) % 10 for i in range(per_batch)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [b"x.png"] * per_batch,
        }
        with (root / name).open("wb") as handle:
            pickle.dump(batch, handle, protocol=protocol)
        if name != "test_batch":
            train_data.append(data)
    return np.concatenate(train_data)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_local_directory(tmp_path: Path, protocol: int) -> None:
    train_data = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = load_dataset({"name": "cifar10", "root": str(tmp_path / "cifar-10-batches-py")})
    _assert_well_formed(ds, 3, (32, 32), 10)
    assert ds.x_train.shape[0] == 20 and ds.x_test.shape[0] == 4
    assert ds.y_train[:4].tolist() == [0, 1, 2, 3]  # data_batch_1 first, in file order
    # rows are stored channel-major (1024 red, 1024 green, 1024 blue values), kept as uint8
    assert ds.x_train.dtype == torch.uint8 and ds.class_names[0] == "airplane"
    raw = ds.x_train[0].float() / 255.0
    expected = torch.from_numpy(train_data[0].reshape(3, 32, 32).astype(np.float32) / 255.0)
    torch.testing.assert_close(raw, expected, atol=1e-5, rtol=0)


def test_cifar10_numpy1_pickles_load(tmp_path: Path) -> None:
    """The published files were pickled with numpy 1.x, whose arrays name ``numpy.core.multiarray``."""
    root = tmp_path / "cifar"
    _write_cifar(root, protocol=2)
    for file in root.iterdir():
        content = file.read_bytes()
        assert b"numpy._core.multiarray" in content
        file.write_bytes(content.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation warning either
        ds = load_dataset({"name": "cifar10", "root": root})
    assert ds.x_train.shape == (20, 3, 32, 32)


def test_cifar10_parent_root_and_limits(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset({"name": "cifar10", "root": tmp_path, "limit": 6, "test_limit": 2})
    assert ds.x_train.shape[0] == 6 and ds.x_test.shape[0] == 2
    assert ds.y_train.tolist() == [0, 1, 2, 3, 1, 2]


def test_cifar10_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar10: missing 'root'"):
        load_dataset({"name": "cifar10"})
    with pytest.raises(DatasetError, match="cifar10: root is not a directory"):
        load_dataset({"name": "cifar10", "root": tmp_path / "nowhere"})
    root = tmp_path / "cifar"
    _write_cifar(root)
    (root / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="cifar10: missing file data_batch_3"):
        load_dataset({"name": "cifar10", "root": root})
    # a pickle referencing anything but numpy arrays is refused before it can run
    with (root / "data_batch_3").open("wb") as handle:
        pickle.dump({b"data": Path("x"), b"labels": []}, handle)
    with pytest.raises(DatasetError, match=r"cifar10: cannot read data_batch_3: global pathlib.*not allowed"):
        load_dataset({"name": "cifar10", "root": root})
    with (root / "data_batch_3").open("wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(DatasetError, match=r"data_batch_3 data must be uint8 N x 3072"):
        load_dataset({"name": "cifar10", "root": root})
    with pytest.raises(DatasetError, match=r"cifar10: limit must be an integer >= 1, got 0"):
        load_dataset({"name": "cifar10", "root": root, "limit": 0})


# ---------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"name": "imagenet"},
            r"unknown dataset 'imagenet'; expected one of "
            r"\['cifar10', 'digits', 'folder', 'npz', 'synthetic'\]",
        ),
        ({}, r"unknown dataset None"),
        ("digits", r"spec: expected a mapping"),
        ({"name": "digits", "path": "x.npz"}, r"digits: unknown keys \['path'\]"),
        ({"name": "synthetic", "size": 8, "colour": 1}, r"synthetic: unknown keys \['colour', 'size'\]"),
        ({"name": "cifar10", "root": ".", "download": True}, r"cifar10: unknown keys \['download'\]"),
        ({"name": "npz", "path": "x.npz", "x": 1}, r"npz: unknown keys \['x'\]"),
        ({"name": "digits", "test_fraction": 1.0}, r"digits: test_fraction must lie in \(0.0, 1.0\)"),
        ({"name": "digits", "test_fraction": 0}, r"digits: test_fraction must lie in"),
        ({"name": "digits", "test_fraction": "0.2"}, r"digits: test_fraction must be a number"),
        ({"name": "digits", "seed": -1}, r"digits: seed must be an integer >= 0"),
        ({"name": "digits", "seed": True}, r"digits: seed must be an integer"),
        ({"name": "digits", "test_fraction": 0.0001}, r"digits: test_fraction 0.0001 leaves no test samples"),
        ({"name": "synthetic", "num_classes": 1}, r"synthetic: num_classes must be an integer >= 2"),
        ({"name": "synthetic", "num_samples": 7}, r"synthetic: num_samples must be an integer >= 8"),
        ({"name": "synthetic", "channels": 0}, r"synthetic: channels must be an integer >= 1"),
        (
            {"name": "synthetic", "image_size": [8]},
            r"synthetic: image_size must be an integer in 1..1024 or \[H, W\]",
        ),
        ({"name": "synthetic", "image_size": 0}, r"synthetic: image_size must be"),
        ({"name": "synthetic", "noise": -1}, r"synthetic: noise must lie in \[0.0, 1000.0\)"),
        ({"name": "synthetic", "noise": 1e3}, r"synthetic: noise must lie in \[0.0, 1000.0\)"),
        ({"name": "synthetic", "channels": 65}, r"synthetic: channels must be at most 64"),
        ({"name": "synthetic", "num_samples": 200_001}, r"synthetic: num_samples must be at most 200000"),
        ({"name": "synthetic", "seed": 2**32}, r"synthetic: seed must be at most 4294967295"),
        ({"name": "synthetic", "num_classes": 1001}, r"synthetic: num_classes must be at most 1000"),
        ({"name": "synthetic", "channels": 65}, r"synthetic: channels must be at most 64"),
        ({"name": "synthetic", "image_size": 2048}, r"synthetic: image_size must be an integer in 1..1024"),
        (
            {"name": "synthetic", "num_samples": 10**5, "image_size": 64},
            r"synthetic: num_samples x channels x height x width = 1228800000 values exceeds",
        ),
    ],
)
def test_bad_specs_are_named(spec, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(spec)


def test_builtin_datasets_describe_what_loads() -> None:
    entries = builtin_datasets()
    json.dumps(entries)
    by_name = {entry["name"]: entry for entry in entries}
    assert set(by_name) == {"digits", "synthetic", "cifar10"}
    for entry in entries:
        assert {"name", "description", "num_classes", "shape", "parameters"} <= set(entry)
    assert by_name["cifar10"]["parameters"]["root"] is None
    assert "local" in by_name["cifar10"]["description"]
    for name in ("digits", "synthetic"):
        ds = load_dataset({"name": name, **by_name[name]["parameters"]})
        assert [ds.in_channels, *ds.image_size] == by_name[name]["shape"]
        assert ds.num_classes == by_name[name]["num_classes"]
        assert ds.describe()["num_samples"] == by_name[name]["num_samples"]


def test_image_dataset_checks_its_tensors() -> None:
    x, y = torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1])
    ImageDataset("t", x, y, x, y, 2)
    with pytest.raises(DatasetError, match="x_train: expected a float32 or uint8 tensor"):
        ImageDataset("t", x.double(), y, x, y, 2)
    with pytest.raises(DatasetError, match="y_test: expected an int64 tensor"):
        ImageDataset("t", x, y, x, y.int(), 2)
    with pytest.raises(DatasetError, match=r"y_train: labels must lie in \[0, 1\)"):
        ImageDataset("t", x, y, x, y, 1)
    with pytest.raises(DatasetError, match="x_train has 4 samples but y_train has 3"):
        ImageDataset("t", x, y[:3], x, y, 2)
    with pytest.raises(DatasetError, match=r"x_test images \(1, 3, 3\) differ"):
        ImageDataset("t", x, y, torch.zeros(4, 1, 3, 3), y, 2)


def test_pixel_statistics_are_exact_and_take_memory_of_a_chunk_not_of_the_dataset() -> None:
    import tracemalloc

    from darts_core.data.registry import _pixel_statistics

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(1500, 3, 16, 16), dtype=np.uint8)  # 1,152,000 bytes
    scaled = x.astype(np.float64) / 255.0
    expected_mean, expected_std = scaled.mean(axis=(0, 2, 3)), scaled.std(axis=(0, 2, 3))
    tracemalloc.start()
    try:
        mean, std = _pixel_statistics(x, chunk_bytes=64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.allclose(mean, expected_mean, rtol=0, atol=1e-12)
    assert np.allclose(std, expected_std, rtol=0, atol=1e-12)
    assert peak < 4 * 64 * 1024, peak  # a float64 copy of the images alone would be 9,216,000 bytes
    flat = np.full((10, 1, 4, 4), 7, dtype=np.uint8)
    assert _pixel_statistics(flat) == ((7 / 255,), (1.0,))  # no spread: std 1, nothing divides by 0

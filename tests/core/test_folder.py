"""darts_core.data.folder: image folders read into uint8 arrays, hostile folders refused by name."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from darts_core.data.folder import FolderError, ImageFolder, read_image_folder, save_image_folder_npz
from darts_core.data.registry import DatasetError, load_dataset, validate_npz


def _pixels(seed: int, size: tuple[int, int] = (8, 8), grey: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = size if grey else (*size, 3)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _write(path: Path, pixels: np.ndarray, format: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=format)
    return path


def _classes(root: Path, counts: dict[str, int], size: tuple[int, int] = (8, 8), grey: bool = False) -> Path:
    seed = 0
    for name, count in counts.items():
        for index in range(count):
            _write(root / name / f"{index:03d}.png", _pixels(seed, size, grey))
            seed += 1
    return root


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header announces ``width x height`` RGB pixels, followed by no real image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 64)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def test_a_class_folder_is_read_with_sorted_classes_and_exact_pixels(tmp_path: Path) -> None:
    root = tmp_path / "flowers"
    # Not in sorted order on purpose; torchvision sorts the class folders by name.
    rose = [_write(root / "rose" / f"{i}.png", _pixels(i)) for i in range(3)]
    _write(root / "daisy" / "a.jpg", _pixels(10), "JPEG")
    _write(root / "daisy" / "b.webp", _pixels(11), "WEBP")
    _write(root / "daisy" / "nested" / "c.bmp", _pixels(12), "BMP")
    frames = [Image.fromarray(_pixels(13)), Image.fromarray(_pixels(14))]
    (root / "tulip").mkdir()
    frames[0].save(root / "tulip" / "anim.gif", save_all=True, append_images=frames[1:])
    _write(root / "tulip" / "still.png", _pixels(15))

    folder = read_image_folder(root)

    assert folder.class_names == ["daisy", "rose", "tulip"]
    assert folder.class_counts == {"daisy": 3, "rose": 3, "tulip": 2}
    assert folder.x_train.dtype == np.uint8 and folder.x_train.shape == (8, 3, 8, 8)
    assert folder.y_train.dtype == np.int64
    assert folder.x_test is None and folder.y_test is None
    assert folder.skipped == []
    # Lossless formats keep their pixels exactly; labels follow the sorted class names.
    first_rose = int(np.flatnonzero(folder.y_train == 1)[0])
    expected_rose = np.asarray(Image.open(rose[0])).transpose(2, 0, 1)
    np.testing.assert_array_equal(folder.x_train[first_rose], expected_rose)
    # The GIF's first frame (GIF is palette-based: compare with Pillow's own RGB of frame 0).
    with Image.open(root / "tulip" / "anim.gif") as gif:
        expected = np.asarray(gif.convert("RGB")).transpose(2, 0, 1)
    assert any(np.array_equal(folder.x_train[i], expected) for i in np.flatnonzero(folder.y_train == 2))


def test_junk_is_ignored_or_skipped_and_listed(tmp_path: Path) -> None:
    root = _classes(tmp_path / "d", {"cat": 2, "dog": 2})
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "dog" / ".hidden.png").write_bytes(b"garbage")
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._000.png").write_bytes(b"\0\5\26\7")
    (root / ".git").mkdir()
    (root / "README.md").write_text("a folder of cats and dogs")
    os.symlink(root / "cat" / "000.png", root / "dog" / "link.png")
    Image.fromarray(_pixels(3)).save(root / "dog" / "scan.tiff", format="TIFF")

    folder = read_image_folder(root)

    assert folder.class_names == ["cat", "dog"]
    assert folder.x_train.shape[0] == 4
    assert sorted(folder.skipped) == [
        ("README.md", "not in a class folder"),
        ("cat/notes.txt", "not an image"),
        ("dog/link.png", "a link"),
        ("dog/scan.tiff", "unsupported image format TIFF"),
    ]


def test_grey_images_give_one_channel_unless_channels_forces_three(tmp_path: Path) -> None:
    root = _classes(tmp_path / "g", {"a": 2, "b": 2}, grey=True)
    grey = read_image_folder(root)
    assert grey.x_train.shape == (4, 1, 8, 8)
    rgb = read_image_folder(root, channels=3)
    assert rgb.x_train.shape == (4, 3, 8, 8)
    np.testing.assert_array_equal(rgb.x_train[:, 0], grey.x_train[:, 0])
    # One colour image among grey ones: RGB for all.
    _write(root / "a" / "colour.png", _pixels(99))
    assert read_image_folder(root).channels == 3
    assert read_image_folder(root, channels=1).channels == 1


def test_differing_sizes_need_image_size_then_are_resized(tmp_path: Path) -> None:
    root = _classes(tmp_path / "s", {"a": 2, "b": 2})
    _write(root / "b" / "big.png", _pixels(5, (16, 12)))
    with pytest.raises(FolderError, match=r"images differ in size .*b/big.png is 12 x 16.*give image_size"):
        read_image_folder(root)
    folder = read_image_folder(root, image_size=(6, 4), resize="nearest")
    assert folder.x_train.shape == (5, 3, 6, 4)
    expected = np.asarray(Image.open(root / "b" / "big.png").resize((4, 6), Image.Resampling.NEAREST))
    index = 4  # sorted by class then name: a/000, a/001, b/000, b/001, b/big
    np.testing.assert_array_equal(folder.x_train[index], expected.transpose(2, 0, 1))
    assert read_image_folder(root, image_size=8).image_size == (8, 8)


def test_a_train_test_split_is_used_as_given(tmp_path: Path) -> None:
    _classes(tmp_path / "s" / "train", {"a": 2, "b": 3})
    _classes(tmp_path / "s" / "val", {"a": 1, "b": 1})
    folder = read_image_folder(tmp_path / "s")
    assert folder.class_names == ["a", "b"]
    assert folder.x_train.shape[0] == 5 and folder.x_test is not None and folder.x_test.shape[0] == 2
    assert folder.y_test is not None and folder.y_test.tolist() == [0, 1]
    assert folder.class_counts == {"a": 3, "b": 4}
    _classes(tmp_path / "s" / "test", {"a": 1})
    with pytest.raises(FolderError, match="both test/ and val/"):
        read_image_folder(tmp_path / "s")


def test_a_test_class_missing_from_train_is_refused(tmp_path: Path) -> None:
    _classes(tmp_path / "s" / "train", {"a": 2, "b": 2})
    _classes(tmp_path / "s" / "test", {"a": 1, "c": 1})
    with pytest.raises(FolderError, match=r"test: classes \['c'\] have no images in train"):
        read_image_folder(tmp_path / "s")


def test_truncated_and_corrupt_images_are_named(tmp_path: Path) -> None:
    root = _classes(tmp_path / "t", {"a": 2, "b": 2}, size=(16, 16))
    whole = (root / "b" / "001.png").read_bytes()
    (root / "b" / "001.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FolderError, match=r"b/001.png: corrupt or truncated image"):
        read_image_folder(root)
    (root / "b" / "001.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(FolderError, match=r"b/001.png: corrupt image"):
        read_image_folder(root)


def test_decompression_bombs_are_refused_from_the_header(tmp_path: Path) -> None:
    root = _classes(tmp_path / "b", {"a": 2, "b": 2})
    # 5000 x 5000: under Pillow's own guard, over the folder limit; refused before decoding (the data
    # behind the header would not even decode).
    _png_header_only(root / "a" / "wide.png", 5000, 5000)
    with pytest.raises(FolderError, match=r"a/wide.png: 5000 x 5000 = 25000000 pixels exceed the limit"):
        read_image_folder(root)
    (root / "a" / "wide.png").unlink()
    # 40000 x 40000: Pillow's own guard refuses it on open.
    _png_header_only(root / "a" / "huge.png", 40000, 40000)
    with pytest.raises(FolderError, match=r"a/huge.png: refused as a decompression bomb"):
        read_image_folder(root, max_image_pixels=2**40)


def test_class_and_size_bounds(tmp_path: Path) -> None:
    with pytest.raises(FolderError, match=r"class 'b': needs at least 2 images"):
        read_image_folder(_classes(tmp_path / "one", {"a": 2, "b": 1}))
    with pytest.raises(FolderError, match=r"needs at least 2 class folders, found 1"):
        read_image_folder(_classes(tmp_path / "single", {"a": 3}))
    many = _classes(tmp_path / "many", {f"c{i}": 2 for i in range(4)})
    with pytest.raises(FolderError, match=r"4 class folders exceed the limit of 3 classes"):
        read_image_folder(many, max_classes=3)
    with pytest.raises(FolderError, match=r"8 images x 3 x 8 x 8 = 1536 values exceed the limit of 1000"):
        read_image_folder(many, max_values=1000)
    with pytest.raises(FolderError, match="not a folder"):
        read_image_folder(tmp_path / "absent")
    with pytest.raises(FolderError, match="channels must be 1 or 3"):
        read_image_folder(many, channels=2)
    with pytest.raises(FolderError, match="image_size must be"):
        read_image_folder(many, image_size=0)


def test_non_utf8_names_are_refused(tmp_path: Path) -> None:
    root = _classes(tmp_path / "u", {"a": 2, "b": 2})
    bad = os.path.join(os.fsencode(root / "a"), b"\xff\xfe.png")
    Image.fromarray(_pixels(7)).save(os.fsdecode(bad), format="PNG")
    with pytest.raises(FolderError, match=r"the name is not UTF-8"):
        read_image_folder(root)


def test_the_stored_npz_keeps_uint8_class_names_and_the_split(tmp_path: Path) -> None:
    _classes(tmp_path / "s" / "train", {"b": 3, "a": 2})
    _classes(tmp_path / "s" / "test", {"a": 1, "b": 2})
    folder = read_image_folder(tmp_path / "s")
    path = tmp_path / "stored.npz"
    save_image_folder_npz(folder, path)
    with np.load(path, allow_pickle=False) as stored:
        assert sorted(stored.files) == ["class_names", "x_test", "x_train", "y_test", "y_train"]
        assert stored["x_train"].dtype == np.uint8
        np.testing.assert_array_equal(stored["x_train"], folder.x_train)
        assert stored["class_names"].tolist() == ["a", "b"]
    summary = validate_npz(path)
    assert summary["num_samples"] == 8 and summary["num_test"] == 3
    assert summary["class_names"] == ["a", "b"] and summary["dtype"] == "uint8"
    dataset = load_dataset({"name": "npz", "path": str(path)})
    assert dataset.class_names == ("a", "b")
    assert dataset.x_train.shape[0] == 5 and dataset.x_test.shape[0] == 3  # the split as given
    assert dataset.describe()["class_names"] == ["a", "b"]
    assert list(tmp_path.glob("*.tmp")) == []


def test_an_unsplit_folder_is_stored_and_split_by_the_loader(tmp_path: Path) -> None:
    folder = read_image_folder(_classes(tmp_path / "d", {"x": 5, "y": 5}))
    save_image_folder_npz(folder, tmp_path / "d.npz")
    a = load_dataset({"name": "npz", "path": str(tmp_path / "d.npz"), "test_fraction": 0.2, "seed": 3})
    b = load_dataset({"name": "folder", "path": str(tmp_path / "d"), "test_fraction": 0.2, "seed": 3})
    assert a.x_test.shape[0] == 2 and a.class_names == b.class_names == ("x", "y")
    np.testing.assert_array_equal(a.x_train.numpy(), b.x_train.numpy())
    np.testing.assert_array_equal(a.y_test.numpy(), b.y_test.numpy())


def test_bad_class_names_in_an_npz_are_named(tmp_path: Path) -> None:
    x = np.zeros((4, 1, 2, 2), dtype=np.uint8)
    y = np.array([0, 1, 0, 2])
    np.savez(tmp_path / "short.npz", x_train=x, y_train=y, class_names=np.array(["a", "b"]))
    with pytest.raises(DatasetError, match=r"y_train: label 2 out of range: at most 2 classes"):
        validate_npz(tmp_path / "short.npz")
    np.savez(tmp_path / "dup.npz", x_train=x, y_train=y % 2, class_names=np.array(["a", "a"]))
    with pytest.raises(DatasetError, match=r"class_names: names must be distinct"):
        validate_npz(tmp_path / "dup.npz")
    np.savez(tmp_path / "half.npz", x_train=x, y_train=y % 2, x_test=x)
    with pytest.raises(DatasetError, match=r"x_test and y_test go together"):
        validate_npz(tmp_path / "half.npz")
    np.savez(tmp_path / "shape.npz", x_train=x, y_train=y % 2, x_test=x[:, :, :1], y_test=y % 2)
    with pytest.raises(DatasetError, match=r"x_test: images .* differ from x_train's"):
        validate_npz(tmp_path / "shape.npz")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"channels": 2}, r"folder: channels: Input should be 1 or 3"),
        ({"image_size": 0}, r"folder: image_size"),
        ({"resize": "magic"}, r"folder: resize: Input should be"),
        ({"colour": True}, r"folder: unknown keys \['colour'\]"),
        ({"path": ""}, r"folder: path: String should have at least 1 character"),
    ],
)
def test_folder_spec_errors_name_the_field(tmp_path: Path, extra: dict, message: str) -> None:
    spec = {"name": "folder", "path": str(_classes(tmp_path / "d", {"a": 2, "b": 2})), **extra}
    with pytest.raises(DatasetError, match=message):
        load_dataset(spec)


def test_load_dataset_reads_a_folder(tmp_path: Path) -> None:
    root = _classes(tmp_path / "d", {"b": 4, "a": 4}, grey=True)
    dataset = load_dataset({"name": "folder", "path": str(root), "image_size": 4, "test_fraction": 0.25})
    assert dataset.name == "folder" and dataset.class_names == ("a", "b")
    assert dataset.in_channels == 1 and dataset.image_size == (4, 4)
    assert dataset.x_train.shape[0] == 6 and dataset.x_test.shape[0] == 2
    with pytest.raises(DatasetError, match=r"folder: class 'a': needs at least 2 images"):
        (root / "a" / "001.png").unlink()
        (root / "a" / "002.png").unlink()
        (root / "a" / "003.png").unlink()
        load_dataset({"name": "folder", "path": str(root)})


def test_image_folder_counts_are_per_class() -> None:
    folder = ImageFolder(
        x_train=np.zeros((3, 1, 2, 2), np.uint8),
        y_train=np.array([0, 1, 1]),
        x_test=np.zeros((1, 1, 2, 2), np.uint8),
        y_test=np.array([1]),
        class_names=["a", "b"],
    )
    assert folder.class_counts == {"a": 1, "b": 3} and folder.num_samples == 4


def test_a_folder_dataset_costs_its_pixels_and_is_normalised_per_batch(tmp_path: Path) -> None:
    import torch

    from darts_core.data.device_images import DeviceImages, dataset_images_on_device

    root = _classes(tmp_path / "d", {"a": 6, "b": 6})
    dataset = load_dataset({"name": "folder", "path": str(root), "test_fraction": 0.25})
    assert dataset.x_train.dtype == torch.uint8
    assert dataset.x_train.element_size() * dataset.x_train.nelement() == 8 * 3 * 8 * 8  # one byte a value
    images = dataset_images_on_device(dataset, dataset.x_train, torch.device("cpu"))
    assert isinstance(images, DeviceImages) and images.shape == dataset.x_train.shape
    pixels = dataset.x_train[[2, 0]].double() / 255.0
    mean = torch.tensor(dataset.channel_mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(dataset.channel_std, dtype=torch.float64).view(1, -1, 1, 1)
    expected = ((pixels - mean) / std).float()
    torch.testing.assert_close(images[torch.tensor([2, 0])], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(dataset.normalize(dataset.x_train[[2, 0]]), expected, atol=1e-5, rtol=0)
    # The statistics are those of the training pixels scaled to [0, 1].
    scaled = dataset.x_train.double() / 255.0
    torch.testing.assert_close(
        torch.tensor(dataset.channel_mean, dtype=torch.float64), scaled.mean(dim=(0, 2, 3)), atol=1e-9, rtol=0
    )


def test_a_folder_trains_and_its_weights_name_the_classes(tmp_path: Path) -> None:
    from darts_core.spec.genotype import Genotype
    from darts_core.spec.training_spec import TrainingJobConfig
    from darts_core.train.job import run_training_job
    from darts_core.train.weights import read_trained_data, save_trained

    root = _classes(tmp_path / "d", {"cat": 8, "dog": 8})
    dataset = load_dataset({"name": "folder", "path": str(root), "test_fraction": 0.25})
    genotype = Genotype(
        normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("avg_pool_3x3", 0), ("skip_connect", 2)],
        reduce=[("max_pool_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 1), ("skip_connect", 2)],
    )
    config = TrainingJobConfig.from_spec(
        {
            "network": {"init_channels": 4, "cells": 2},
            "training": {"epochs": 1, "batch_size": 4, "valid_fraction": 0.0},
            "resources": {"device": "cpu"},
        }
    )
    result = run_training_job(genotype, config, dataset)
    assert 0.0 <= result.test_accuracy <= 1.0
    save_trained(result.network, tmp_path / "model.safetensors", **dataset.weights_metadata())
    data = read_trained_data(tmp_path / "model.safetensors")
    assert data["class_names"] == ["cat", "dog"]
    assert data["input_shape"] == [3, 8, 8]

"""darts_core.data.augment: the crop/flip math, determinism, bit-identical resume, untouched evaluation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from darts_core.data import augment as augment_module
from darts_core.data.augment import (
    RandomCropFlip,
    default_crop_padding,
    epoch_generator,
    resolve_augmentation,
)
from darts_core.data.registry import ImageDataset, load_dataset
from darts_core.search import loop as search_loop
from darts_core.spec.genotype import Genotype
from darts_core.spec.search_spec import SearchConfig
from darts_core.spec.training_spec import TrainingJobConfig
from darts_core.train import job as training_job
from darts_core.train.job import run_training_job
from darts_core.train.records import TrainEpoch, TrainingStopped

GENOTYPE = Genotype(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("avg_pool_3x3", 0), ("skip_connect", 2)],
    reduce=[("max_pool_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 1), ("skip_connect", 2)],
)


def test_crop_and_flip_of_a_constructed_image() -> None:
    images = torch.arange(2 * 2 * 4 * 5, dtype=torch.float32).view(2, 2, 4, 5) + 1  # no zero inside
    crop = RandomCropFlip(padding=2, horizontal_flip=True)
    generator = torch.Generator().manual_seed(7)
    out = crop(images, generator)
    # The same draws, in the documented order: row offsets, column offsets, flips.
    replay = torch.Generator().manual_seed(7)
    dy = torch.randint(0, 5, (2,), generator=replay)
    dx = torch.randint(0, 5, (2,), generator=replay)
    flip = torch.rand(2, generator=replay) < 0.5
    padded = F.pad(images, (2, 2, 2, 2))
    for b in range(2):
        expected = padded[b, :, int(dy[b]) : int(dy[b]) + 4, int(dx[b]) : int(dx[b]) + 5]
        if flip[b]:
            expected = expected.flip(-1)  # the crop is taken, then mirrored
        torch.testing.assert_close(out[b], expected, rtol=0, atol=0)
    assert out.shape == images.shape


def test_offsets_cover_the_padding_and_flips_are_fair() -> None:
    image = torch.zeros(1, 1, 3, 3)
    image[0, 0, 1, 1] = 1.0  # one lit pixel: its position after the crop gives the offset
    batch = image.expand(4000, 1, 3, 3).contiguous()
    out = RandomCropFlip(padding=1, horizontal_flip=False)(batch, torch.Generator().manual_seed(0))
    found = out.view(4000, 9).argmax(dim=1)
    lit = out.view(4000, 9).max(dim=1).values == 1
    # Offsets -1..1 on each axis: the pixel lands anywhere in the 3 x 3 window, each place ~1/9 of the time.
    assert lit.all()
    counts = torch.bincount(found, minlength=9).float() / 4000
    assert torch.all((counts - 1 / 9).abs() < 0.03), counts
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(4000, 1, 1, 4).contiguous()
    flipped = RandomCropFlip(padding=0, horizontal_flip=True)(ramp, torch.Generator().manual_seed(1))
    mirrored = (flipped[:, 0, 0, 0] == 3).float().mean()
    assert abs(float(mirrored) - 0.5) < 0.03
    assert torch.equal(flipped[flipped[:, 0, 0, 0] == 0], ramp[: int((flipped[:, 0, 0, 0] == 0).sum())])


def test_deterministic_for_a_seed_and_channels_last_kept() -> None:
    images = torch.randn(16, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    crop = RandomCropFlip(padding=1)
    a = crop(images, epoch_generator(3, 1, 2))
    b = crop(images, epoch_generator(3, 1, 2))
    c = crop(images, epoch_generator(3, 2, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert RandomCropFlip(0, False)(images, epoch_generator(0, 0, 0)) is images  # off: nothing drawn


def test_defaults_by_dataset() -> None:
    assert default_crop_padding(32, 32) == 4 and default_crop_padding(64, 48) == 6
    assert default_crop_padding(8, 8) == 1
    assert resolve_augmentation(None, None, "cifar10", (32, 32)) == RandomCropFlip(4, True)
    assert resolve_augmentation(None, None, "folder", (16, 16)) == RandomCropFlip(2, True)
    assert resolve_augmentation(None, None, "npz", (16, 16), ("a", "b")) == RandomCropFlip(2, True)
    assert not resolve_augmentation(None, None, "digits", (8, 8)).active
    assert not resolve_augmentation(None, None, "synthetic", (16, 16)).active
    assert resolve_augmentation(3, False, "digits", (8, 8)) == RandomCropFlip(3, False)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"crop_padding": -1}, "training.augmentation.crop_padding"),
        ({"horizontal_flip": 1}, "horizontal_flip"),
    ],
)
def test_the_spec_fields_are_bounded_and_named(value: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchConfig.from_spec({"training": {"augmentation": value}})
    with pytest.raises(ValueError, match=message):
        TrainingJobConfig.from_spec({"training": {"augmentation": value}})
    assert SearchConfig.from_spec({}).to_spec()["training"]["augmentation"] == {
        "crop_padding": None,
        "horizontal_flip": None,
    }


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory: pytest.TempPathFactory) -> ImageDataset:
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir()
        for index in range(12):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{index}.png")
    return load_dataset({"name": "folder", "path": str(root), "test_fraction": 0.25})


def _training_config() -> TrainingJobConfig:
    return TrainingJobConfig.from_spec(
        {
            "network": {"init_channels": 4, "cells": 2},
            "training": {"epochs": 2, "batch_size": 4, "valid_fraction": 0.2},
            "resources": {"device": "cpu"},
        }
    )


def _marking(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Augmented batches get +1000: whatever reaches an evaluation with that mark was augmented."""
    calls: list[int] = []
    original = RandomCropFlip.__call__

    def marked(self: RandomCropFlip, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        calls.append(images.shape[0])
        return original(self, images, generator) + 1000.0

    monkeypatch.setattr(augment_module.RandomCropFlip, "__call__", marked)
    return calls


def _spy(monkeypatch: pytest.MonkeyPatch, module: object) -> list[float]:
    seen: list[float] = []
    original: Callable = module._evaluate  # type: ignore[attr-defined]

    def spied(network: torch.nn.Module, images: object, *args: object, **kwargs: object) -> object:
        seen.append(max(float(images[i : i + 1].max()) for i in range(len(images))))  # type: ignore
        return original(network, images, *args, **kwargs)

    monkeypatch.setattr(module, "_evaluate", spied)
    return seen


def test_training_augments_every_training_batch_and_no_evaluation(
    monkeypatch: pytest.MonkeyPatch, folder_dataset: ImageDataset
) -> None:
    calls = _marking(monkeypatch)
    evaluated = _spy(monkeypatch, training_job)
    run_training_job(GENOTYPE, _training_config(), folder_dataset)
    num_train = folder_dataset.x_train.shape[0] - round(folder_dataset.x_train.shape[0] * 0.2)
    assert sum(calls) >= 2 * (num_train - 1)  # every batch of both epochs (a batch of one is skipped)
    assert evaluated and max(evaluated) < 100  # validation and test batches never carry the mark


def test_search_augments_the_weight_batches_only(
    monkeypatch: pytest.MonkeyPatch, folder_dataset: ImageDataset
) -> None:
    calls = _marking(monkeypatch)
    evaluated = _spy(monkeypatch, search_loop)
    steps: list[tuple[float, float]] = []
    original_step = search_loop.DartsSearch.step

    def step(self: object, train: tuple, valid: tuple) -> object:
        steps.append((float(train[0].max()), float(valid[0].max())))
        return original_step(self, train, valid)  # type: ignore[arg-type]

    monkeypatch.setattr(search_loop.DartsSearch, "step", step)
    config = SearchConfig.from_spec(
        {
            "search_space": {"internal_nodes": 2},
            "network": {"init_channels": 4, "cells": 2},
            "training": {"epochs": 1, "batch_size": 4},
            "resources": {"device": "cpu"},
        }
    )
    search_loop.run_search(folder_dataset, config)
    assert steps and len(calls) == len(steps)
    assert all(train > 500 and valid < 100 for train, valid in steps)  # architecture batches untouched
    assert evaluated and max(evaluated) < 100


def test_training_resume_with_augmentation_is_bit_identical(
    tmp_path: Path, folder_dataset: ImageDataset
) -> None:
    config = _training_config()
    straight = run_training_job(GENOTYPE, config, folder_dataset)
    seen: list[TrainEpoch] = []
    with pytest.raises(TrainingStopped):
        run_training_job(
            GENOTYPE,
            config,
            folder_dataset,
            checkpoint_dir=tmp_path,
            on_epoch=seen.append,
            should_stop=lambda: bool(seen),
        )
    torch.manual_seed(999)
    resumed = run_training_job(GENOTYPE, config, folder_dataset, checkpoint_dir=tmp_path)
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in straight.history]
    for (name, a), (_, b) in zip(
        straight.network.state_dict().items(), resumed.network.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name

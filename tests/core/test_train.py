"""Retraining a genotype (train_genotype): schedule, determinism, options and errors."""

from __future__ import annotations

import math

import pytest
import torch

from darts_core.data.registry import ImageDataset, load_dataset
from darts_core.device import resolve_device
from darts_core.nn.genotype_network import GenotypeNetwork
from darts_core.spec.genotype import DARTS_V2, Genotype
from darts_core.train.job import apply_cutout
from darts_core.train.records import TrainEpoch
from darts_core.train.train_genotype import train_genotype

SMALL = Genotype(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("avg_pool_3x3", 0)],
    reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1)],
)
TINY = {"init_channels": 4, "cells": 3, "batch_size": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def synthetic() -> ImageDataset:
    """96 training and 24 test images, 3 x 8 x 8, 4 classes of smooth templates plus noise."""
    spec = {"num_samples": 120, "channels": 3, "image_size": 8, "num_classes": 4, "noise": 0.3, "seed": 1}
    return load_dataset({"name": "synthetic", **spec})


def test_history_schedule_and_result(synthetic: ImageDataset) -> None:
    seen: list[TrainEpoch] = []
    result = train_genotype(SMALL, synthetic, epochs=3, lr=0.05, lr_min=0.001, on_epoch=seen.append, **TINY)
    assert seen == result.history
    assert [record.epoch for record in seen] == [1, 2, 3]
    for index, record in enumerate(seen):
        # Cosine annealing from lr to lr_min, stepped per epoch; drop-path ramps linearly from 0.
        expected_lr = 0.001 + (0.05 - 0.001) * (1 + math.cos(math.pi * index / 3)) / 2
        assert record.lr == pytest.approx(expected_lr)
        assert record.drop_path_prob == pytest.approx(0.2 * index / 3)
        assert 0.0 <= record.train_acc <= 1.0 and 0.0 <= record.test_acc <= 1.0
        assert math.isfinite(record.train_loss) and math.isfinite(record.test_loss)
        assert record.seconds > 0
    assert result.test_accuracy == seen[-1].test_acc
    assert result.test_loss == seen[-1].test_loss
    assert isinstance(result.network, GenotypeNetwork) and not result.network.training
    assert result.parameters == sum(p.numel() for p in result.network.parameters())
    summary = result.to_dict()
    assert summary["test_accuracy"] == result.test_accuracy and len(summary["history"]) == 3


def test_learns_an_easy_dataset(synthetic: ImageDataset) -> None:
    result = train_genotype(SMALL, synthetic, epochs=3, lr=0.05, **TINY)
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.test_accuracy >= 0.9  # 4 classes: chance is 0.25


def test_same_seed_same_run_other_seed_other_run(synthetic: ImageDataset) -> None:
    def losses(seed: int) -> list[float]:
        result = train_genotype(SMALL, synthetic, epochs=1, seed=seed, **TINY)
        return [result.history[0].train_loss, result.test_loss]

    assert losses(3) == losses(3)
    assert losses(3) != losses(4)


def test_auxiliary_head_and_cutout(synthetic: ImageDataset) -> None:
    result = train_genotype(
        DARTS_V2, synthetic, epochs=1, auxiliary=True, cutout=True, cutout_length=4, **TINY
    )
    assert result.network.auxiliary_head is not None
    assert math.isfinite(result.history[0].train_loss)
    # The reported size leaves the auxiliary head out, as DARTS does.
    head = sum(p.numel() for p in result.network.auxiliary_head.parameters())
    assert result.parameters == sum(p.numel() for p in result.network.parameters()) - head


def test_cutout_zeroes_one_clipped_square_per_image() -> None:
    images = torch.ones(64, 2, 10, 10)
    out = apply_cutout(images, 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert torch.equal(out[:, 0], out[:, 1])  # the same square on every channel
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert torch.all(zeros <= 16) and torch.all(zeros >= 4)  # a 4x4 square, at least a 2x2 corner inside
    assert (zeros == 16).any() and (zeros < 16).any()  # some inside the image, some clipped at a border
    assert torch.all(images == 1)  # the input is left untouched


def test_bad_arguments_are_rejected_naming_them() -> None:
    digits = load_dataset({"name": "digits"})
    assert digits.in_channels == 1 and digits.image_size == (8, 8)
    cases = [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"cells": 0}, "cells"),
        ({"lr": -1.0}, "lr"),
        ({"lr_min": 1.0}, "lr_min"),
        ({"drop_path_prob": 1.0}, "drop_path_prob"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"device": "tpu"}, "device"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            train_genotype(SMALL, digits, **kwargs)
    with pytest.raises(ValueError, match="dataset: missing attribute"):
        train_genotype(SMALL, object())
    with pytest.raises(ValueError, match="genotype must be a Genotype"):
        train_genotype(SMALL.to_json(), digits, epochs=1)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("meta")


# The digits accuracy figure (DARTS_V2, default spec, >= 0.97) is tests/core/test_training_job.py's.

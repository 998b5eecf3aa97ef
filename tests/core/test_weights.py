"""darts_core.train.weights (save_trained / load_trained) and darts_core.nn.multiply_adds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

import darts_core
from darts_core.nn.genotype_network import GenotypeNetwork
from darts_core.nn.multiply_adds import count_multiply_adds
from darts_core.spec.genotype import DARTS_V2, Genotype
from darts_core.train.weights import WEIGHTS_FORMAT, load_trained, save_trained

SMALL = Genotype(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("avg_pool_3x3", 0)],
    reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1)],
)


def _trained_like(auxiliary: bool = True) -> GenotypeNetwork:
    """A network whose weights and BN statistics are not the initial ones."""
    torch.manual_seed(0)
    network = GenotypeNetwork(SMALL, 3, 5, init_channels=4, cells=3, auxiliary=auxiliary)
    network.train()
    network(torch.randn(8, 3, 8, 8))  # moves the BN running statistics
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return network.eval()


def test_weights_round_trip_to_the_same_logits(tmp_path: Path) -> None:
    network = _trained_like()
    path = tmp_path / "model.safetensors"
    save_trained(network, path)
    assert [item.name for item in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left

    loaded = darts_core.load_trained(path)  # the library's one-call contract
    assert isinstance(loaded, GenotypeNetwork) and not loaded.training
    assert loaded.genotype == SMALL and loaded.auxiliary and loaded.num_cells == 3
    images = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(images), network(images))
    for (name, tensor), (other_name, other) in zip(
        network.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert name == other_name and torch.equal(tensor, other)

    # A plain safetensors file: any safetensors reader sees the tensors and our metadata.
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == WEIGHTS_FORMAT and metadata["format_version"] == "1"
    assert json.loads(metadata["genotype"]) == SMALL.to_json()
    assert json.loads(metadata["network"]) == {
        "in_channels": 3, "num_classes": 5, "init_channels": 4, "cells": 3, "auxiliary": True,
    }  # fmt: skip


def test_bad_files_are_rejected_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_trained(tmp_path / "missing.safetensors")

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_trained(garbage)

    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a darts_core trained-weights file"):
        load_trained(foreign)

    good = tmp_path / "good.safetensors"
    save_trained(_trained_like(), good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match=str(truncated)):
        load_trained(truncated)

    # Our metadata over weights of another network: the strict load refuses it.
    mismatched = tmp_path / "mismatched.safetensors"
    with safetensors.safe_open(str(good), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = {"classifier.weight": torch.zeros(5, 64)}
    safetensors.torch.save_file(tensors, str(mismatched), metadata=metadata)
    with pytest.raises(ValueError, match="do not fit the network"):
        load_trained(mismatched)

    newer = tmp_path / "newer.safetensors"
    safetensors.torch.save_file(tensors, str(newer), metadata={**metadata, "format_version": "99"})
    with pytest.raises(ValueError, match="newer"):
        load_trained(newer)

    with pytest.raises(ValueError, match="network must be a GenotypeNetwork"):
        save_trained(nn.Linear(2, 2), tmp_path / "linear.safetensors")  # type: ignore[arg-type]


def test_multiply_adds_match_a_hand_count() -> None:
    network = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),  # 5x5 out: 25 x 3 x (2 x 9) = 1350
        nn.BatchNorm2d(3),  # not counted
        nn.ReLU(),
        nn.Conv2d(3, 4, 1, bias=False),  # 25 x 4 x 3 = 300
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4),  # 3x3 out: 9 x 4 x (1 x 9) = 324
        nn.Conv2d(4, 6, (1, 3), padding=(0, 1), groups=2),  # 3x3 out: 9 x 6 x (2 x 3) = 324
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 7),  # 7 x 6 = 42
    )
    network.train()
    assert count_multiply_adds(network, (2, 5, 5)) == 1350 + 300 + 324 + 324 + 42
    assert network.training  # the mode is given back
    with pytest.raises(ValueError, match="input_shape"):
        count_multiply_adds(network, (1, 2, 5, 5))


def test_multiply_adds_of_a_genotype_network_leave_the_auxiliary_head_out() -> None:
    with_head = GenotypeNetwork(DARTS_V2, 3, 10, init_channels=8, cells=5, auxiliary=True)
    without = GenotypeNetwork(DARTS_V2, 3, 10, init_channels=8, cells=5, auxiliary=False)
    count = count_multiply_adds(with_head, (3, 16, 16))
    assert count == count_multiply_adds(without, (3, 16, 16)) > 0
    # Halving the image side quarters the convolution work (the classifier's few stay).
    smaller = count_multiply_adds(without, (3, 8, 8))
    classifier = without.classifier.in_features * without.classifier.out_features
    assert smaller - classifier == pytest.approx((count - classifier) / 4, rel=0.05)

"""A small alternating DARTS search on a toy problem picks the operation that explains the data.

Data: two inputs ``a`` (uniform in [-pi, pi]) and ``b`` (normal), each ``(N, 4)``, and a target that is
a sine of one input plus a fixed random linear map of the other (plus a little noise). The search space
is one cell with one internal node (two edges: from ``a`` and from ``b``) over three user operations:
``none``, ``linear`` (a learnable ``nn.Linear``) and ``sine`` (a fixed ``sin``). First-order DARTS
alternates an architecture step on the validation split (only the SpecialParameter, through
``create_darts_optimizers_fn``) and a weight step on the training split.
"""

import math

import pytest
import torch
from torch import nn

import darts_core as arch


class Sine(nn.Module):
    """Element-wise ``sin``: ``(N, F) -> (N, F)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


PRIMITIVES = {
    "none": lambda C, stride, affine: arch.Zero2d(stride),
    "linear": lambda C, stride, affine: nn.Linear(C, C),
    "sine": lambda C, stride, affine: Sine(),
}
FEATURES = 4


def sample(n: int, sine_on_a: bool, mix: torch.Tensor, generator: torch.Generator):
    a = (torch.rand(n, FEATURES, generator=generator) * 2 - 1) * math.pi
    b = torch.randn(n, FEATURES, generator=generator)
    y = torch.sin(a) + b @ mix if sine_on_a else a @ mix + torch.sin(b)
    return a, b, y + 0.05 * torch.randn(n, FEATURES, generator=generator)


def toy_search(seed: int, sine_on_a: bool, steps: int = 100, n: int = 64) -> tuple[list[str], float, float]:
    """Run the search; returns the genotype and the validation loss before and after."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    mix = torch.randn(FEATURES, FEATURES, generator=generator)
    splits = {"train": sample(n, sine_on_a, mix, generator), "valid": sample(n, sine_on_a, mix, generator)}
    cell = arch.Cell(
        PRIMITIVES, FEATURES, FEATURES, FEATURES, False, False, internal_nodes=1, with_preprocessing=False
    )
    optimizers, _ = arch.create_darts_optimizers_fn(
        splits, cell, lambda params: torch.optim.Adam(params, lr=0.01), darts_weight_dataset_name="valid"
    )
    optimizers["valid"].param_groups[0]["lr"] = 0.05  # architecture learning rate

    def loss_on(name: str) -> torch.Tensor:
        a, b, y = splits[name]
        return nn.functional.mse_loss(cell([a, b]), y)

    initial = loss_on("valid").item()
    for _ in range(steps):
        for name in ("valid", "train"):  # architecture step, then weight step
            optimizers[name].zero_grad()
            loss_on(name).backward()
            optimizers[name].step()
    return cell.get_genotype(), initial, loss_on("valid").item()


pytestmark = pytest.mark.usefixtures("one_thread")


def test_toy_search_picks_the_operation_that_explains_the_data():
    seeds = range(10)
    picks = []
    for seed in seeds:
        sine_on_a = seed % 2 == 0  # both orientations, so a bias toward one operation cannot pass
        expected = ["sine", "linear"] if sine_on_a else ["linear", "sine"]
        genotype, initial, final = toy_search(seed, sine_on_a)
        assert final < 0.5 * initial, f"seed {seed}: validation loss {initial:.3f} -> {final:.3f}"
        assert "none" not in genotype
        picks.append(genotype == expected)
    assert sum(picks) >= 8, f"right genotype for {sum(picks)} of {len(picks)} seeds: {picks}"

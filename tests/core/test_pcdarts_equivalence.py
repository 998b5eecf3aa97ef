"""darts_core's PC-DARTS step computes what the PC-DARTS reference computes.

The baseline (``benchmarks/pcdarts_reference.py``) follows the PC-DARTS reference code: every edge
slices, runs its eight operations on ``C / K`` channels (``none`` as ``x * 0``, a ReLU per operation),
max-pools the bypassed channels of stride-2 edges, concatenates, shuffles and is multiplied by its
softmaxed edge weight; the step is the DARTS reference's (``benchmarks/reference.py``), with the betas
among the architecture parameters. darts_core sums the edges of a node before a single shuffle, folds
alpha x beta into the BatchNorms and shares the slices, ReLUs and poolings; from the same initial state
the losses, the architecture gradients (alphas and betas) and every updated parameter agree within 1e-5
in fp32 after first- and second-order steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks import pcdarts_reference, reference  # noqa: E402
from darts_core.nn.search_network import SearchNetwork  # noqa: E402
from darts_core.search.loop import DartsSearch  # noqa: E402

IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE, BATCH, K = 3, 5, 8, 4, 4
TOLERANCE = 1e-5
# As in test_benchmark_equivalence.py: the second order's finite difference divides float32 rounding
# by 2 eps, so its alpha gradient is held to 5e-5; losses and parameters stay within TOLERANCE.
SECOND_ORDER_GRADIENT_TOLERANCE = 5e-5


def _build_pair(cells: int) -> tuple[SearchNetwork, pcdarts_reference.PCDartsReferenceNetwork]:
    torch.manual_seed(0)
    network = SearchNetwork(
        IN_CHANNELS, NUM_CLASSES, init_channels=8, cells=cells, partial_channels=K, edge_normalization=True
    )
    with torch.no_grad():  # architecture weights of a search in progress: edges and ops clearly apart
        for tensor in network.arch_parameters():
            tensor.normal_(0.0, 0.5)
    baseline = pcdarts_reference.PCDartsReferenceNetwork(
        IN_CHANNELS, NUM_CLASSES, init_channels=8, cells=cells, steps=4, k=K
    )
    reference.load_from_search_network(baseline, network)
    return network, baseline


def _batches(steps: int) -> list[tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(1)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(BATCH, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        return images, torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)

    return [(batch(), batch()) for _ in range(steps)]


def test_forward_and_gradients_match_the_reference() -> None:
    network, baseline = _build_pair(cells=5)
    images = torch.randn(BATCH, IN_CHANNELS, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(BATCH) % NUM_CLASSES
    ours = F.cross_entropy(network(images), labels)
    theirs = baseline.loss(images, labels)
    assert abs(ours.item() - theirs.item()) <= TOLERANCE
    ours_grads = torch.autograd.grad(ours, [*network.arch_parameters(), *network.weight_parameters()])
    theirs_grads = torch.autograd.grad(theirs, [*baseline.arch_parameters(), *baseline.parameters()])
    assert len(ours_grads) == len(theirs_grads)
    for index, (a, b) in enumerate(zip(ours_grads, theirs_grads, strict=True)):
        assert (a - b).abs().max().item() <= TOLERANCE, f"gradient #{index} differs"
    # The betas really receive a gradient (edge normalization is in the graph).
    assert ours_grads[2].abs().max().item() > 100 * TOLERANCE


@pytest.mark.parametrize("order", ["first", "second"])
def test_step_matches_the_reference(order: str) -> None:
    network, baseline = _build_pair(cells=3)
    initial = [p.detach().clone() for p in network.parameters()]
    search = DartsSearch(network, order=order)
    reference_search = reference.ReferenceSearch(baseline, order=order)
    names = {id(p): name for name, p in network.named_parameters()}

    for step, (train_batch, valid_batch) in enumerate(_batches(2), start=1):
        result = search.step(train_batch, valid_batch).to_floats()
        valid_loss, train_loss = reference_search.step(train_batch, valid_batch)
        assert abs(result["valid_loss"] - valid_loss) <= TOLERANCE, (step, result["valid_loss"], valid_loss)
        assert abs(result["train_loss"] - train_loss) <= TOLERANCE, (step, result["train_loss"], train_loss)
        tolerance = TOLERANCE if order == "first" else SECOND_ORDER_GRADIENT_TOLERANCE
        for tensor, expected in zip(
            network.arch_parameters(), reference_search.last_arch_gradients, strict=True
        ):
            difference = (tensor.grad - expected).abs().max().item()
            assert difference <= tolerance, (
                f"step {step}: {names[id(tensor)]} gradient off by {difference:.2g}"
            )
            assert expected.abs().max().item() > 100 * TOLERANCE
        pairs = [
            *zip(network.arch_parameters(), baseline.arch_parameters(), strict=True),
            *zip(network.weight_parameters(), baseline.parameters(), strict=True),
        ]
        for ours, theirs in pairs:
            difference = (ours.detach() - theirs.detach()).abs().max().item()
            assert difference <= TOLERANCE, (
                f"after step {step}: {names[id(ours)]} differs by {difference:.3g}"
            )

    moved = [
        (p.detach() - p0).abs().max().item() for p, p0 in zip(network.parameters(), initial, strict=True)
    ]
    assert min(moved[:4]) > 10 * TOLERANCE, moved[:4]  # alphas and betas moved
    assert max(moved[4:]) > 100 * TOLERANCE


def test_reference_shuffle_is_darts_core_shuffle() -> None:
    from darts_core.nn.mixed_op import channel_shuffle

    x = torch.randn(2, 12, 3, 3)
    assert torch.equal(channel_shuffle(x, 4), pcdarts_reference.shuffle_channels(x, 4))

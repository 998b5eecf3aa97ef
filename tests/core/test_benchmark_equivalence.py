"""darts_core's search step computes exactly what the DARTS reference computes.

The baseline of ``benchmarks/search_step.py`` (``benchmarks/reference.py``) follows the DARTS reference
code: every operation applies its own ReLU, ``none`` is ``x * 0``, the first-order architecture step
backpropagates into every weight, and the second-order step builds a new model copy and takes the
finite-difference Hessian-vector product in place. darts_core skips or shares all of that work; these
tests check that, from the same initial state, the losses and every updated parameter (weights and
alphas) agree within 1e-5 in fp32, step after step (the second step exercises SGD's momentum buffer,
which the unrolled step of the second order reads).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from darts_core.nn.search_network import SearchNetwork
from darts_core.search.loop import DartsSearch

_REFERENCE_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "reference.py"


def _load_reference_module():
    name = "darts_benchmark_reference"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _REFERENCE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


reference = _load_reference_module()

IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE, BATCH = 3, 5, 8, 4
TOLERANCE = 1e-5
# The second-order alpha gradient contains a central finite difference, (g+ - g-) / (2 eps) with
# eps = 0.01 / |v|: it divides float32 rounding by 2 eps, so a mere change of summation order (another
# convolution algorithm, channels_last) moves it by about 1e-5. Losses, weights and alphas are still
# held to TOLERANCE.
SECOND_ORDER_GRADIENT_TOLERANCE = 5e-5


def _build_pair(cells: int) -> tuple[SearchNetwork, reference.ReferenceNetwork]:
    torch.manual_seed(0)
    network = SearchNetwork(IN_CHANNELS, NUM_CLASSES, init_channels=4, cells=cells, internal_nodes=4)
    # Alphas of the size of a search in progress, so the softmax weights differ clearly between ops.
    with torch.no_grad():
        for alpha in network.arch_parameters():
            alpha.normal_(0.0, 0.5)
    baseline = reference.ReferenceNetwork(IN_CHANNELS, NUM_CLASSES, init_channels=4, cells=cells, steps=4)
    reference.load_from_search_network(baseline, network)
    return network, baseline


def _batches(steps: int) -> list[tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(1)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(BATCH, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)
        return images, labels

    return [(batch(), batch()) for _ in range(steps)]


def _assert_same_state(network: SearchNetwork, baseline: reference.ReferenceNetwork, step: int) -> None:
    alphas = zip(network.arch_parameters(), baseline.arch_parameters(), strict=True)
    weights = zip(network.weight_parameters(), baseline.parameters(), strict=True)
    pairs = [*(("alpha", a, b) for a, b in alphas), *(("weight", a, b) for a, b in weights)]
    names = {id(p): name for name, p in network.named_parameters()}
    for kind, ours, theirs in pairs:
        difference = (ours.detach() - theirs.detach()).abs().max().item()
        assert difference <= TOLERANCE, (
            f"after step {step}: {kind} {names[id(ours)]} differs from the reference by {difference:.3g}"
        )


def _initial_copy(network: SearchNetwork) -> list[torch.Tensor]:
    return [p.detach().clone() for p in network.parameters()]


@pytest.mark.parametrize("order", ["first", "second"])
def test_step_matches_the_reference(order: str) -> None:
    network, baseline = _build_pair(cells=3)
    initial = _initial_copy(network)
    search = DartsSearch(network, order=order)
    reference_search = reference.ReferenceSearch(baseline, order=order)

    for step, (train_batch, valid_batch) in enumerate(_batches(2), start=1):
        result = search.step(train_batch, valid_batch).to_floats()
        valid_loss, train_loss = reference_search.step(train_batch, valid_batch)
        assert abs(result["valid_loss"] - valid_loss) <= TOLERANCE, (step, result["valid_loss"], valid_loss)
        assert abs(result["train_loss"] - train_loss) <= TOLERANCE, (step, result["train_loss"], train_loss)
        # Adam normalises the alpha update, so compare the alpha gradients themselves too.
        gradient_tolerance = TOLERANCE if order == "first" else SECOND_ORDER_GRADIENT_TOLERANCE
        for index, (alpha, expected) in enumerate(
            zip(network.arch_parameters(), reference_search.last_arch_gradients, strict=True)
        ):
            difference = (alpha.grad - expected).abs().max().item()
            message = f"step {step}: alpha #{index} gradient off by {difference:.2g}"
            assert difference <= gradient_tolerance, message
            assert expected.abs().max().item() > 100 * TOLERANCE
        _assert_same_state(network, baseline, step)

    # The comparison is not vacuous: the alphas and the weights moved by far more than the tolerance.
    after = network.parameters()
    moved = [(p.detach() - p0).abs().max().item() for p, p0 in zip(after, initial, strict=True)]
    assert min(moved[:2]) > 10 * TOLERANCE, moved[:2]
    assert max(moved[2:]) > 100 * TOLERANCE


def test_second_order_alpha_gradient_differs_from_first_order() -> None:
    """The second-order correction is really computed (else both orders could agree by accident)."""
    grads = {}
    for order in ("first", "second"):
        network, _ = _build_pair(cells=3)
        (train_batch, valid_batch), = _batches(1)
        grads[order] = DartsSearch(network, order=order).arch_gradients(train_batch, valid_batch)
    difference = max((a - b).abs().max().item() for a, b in zip(grads["first"], grads["second"], strict=True))
    assert difference > 100 * TOLERANCE


def test_reference_network_matches_search_network_forward() -> None:
    network, baseline = _build_pair(cells=5)
    images = torch.randn(BATCH, IN_CHANNELS, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(BATCH) % NUM_CLASSES
    ours = F.cross_entropy(network(images), labels)
    theirs = baseline.loss(images, labels)
    assert abs(ours.item() - theirs.item()) <= TOLERANCE
    ours_grads = torch.autograd.grad(ours, [*network.arch_parameters(), *network.weight_parameters()])
    theirs_grads = torch.autograd.grad(theirs, [*baseline.arch_parameters(), *baseline.parameters()])
    for index, (a, b) in enumerate(zip(ours_grads, theirs_grads, strict=True)):
        assert (a - b).abs().max().item() <= TOLERANCE, f"gradient #{index} differs"


def test_loading_a_network_of_another_shape_is_refused() -> None:
    network = SearchNetwork(IN_CHANNELS, NUM_CLASSES, init_channels=4, cells=3)
    baseline = reference.ReferenceNetwork(IN_CHANNELS, NUM_CLASSES, init_channels=6, cells=3)
    with pytest.raises(ValueError, match="shape"):
        reference.load_from_search_network(baseline, network)

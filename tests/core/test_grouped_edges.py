"""darts_core.nn.grouped_edges: the edges of one state run grouped give each edge's MixedOp output."""

from __future__ import annotations

import copy

import pytest
import torch

from darts_core.nn import ops
from darts_core.nn.grouped_edges import run_edges_of_state
from darts_core.nn.mixed_op import MixedOp

PRIMITIVES = ops.DARTS_PRIMITIVES_2D


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_run_edges_of_state_gives_each_mixed_op_output_and_statistics(
    channels_last: bool, stride: int
) -> None:
    edges = [MixedOp(PRIMITIVES, 4, stride) for _ in range(3)]
    alone = copy.deepcopy(edges)
    x = _layout(torch.randn(3, 4, 8, 8), channels_last).requires_grad_()
    weights = torch.softmax(torch.randn(3, len(PRIMITIVES)), dim=-1).requires_grad_()
    outputs = run_edges_of_state(edges, x, weights, torch.relu(x), {})
    expected = [edge(x, row) for edge, row in zip(alone, weights.unbind(0), strict=True)]
    for out, ref in zip(outputs, expected, strict=True):
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() < 1e-5
    loss = sum((out * torch.linspace(-1.0, 1.0, out.numel()).view_as(out)).sum() for out in outputs)
    ref_loss = sum((out * torch.linspace(-1.0, 1.0, out.numel()).view_as(out)).sum() for out in expected)
    for a, b in zip(
        torch.autograd.grad(loss, [x, weights]), torch.autograd.grad(ref_loss, [x, weights]), strict=True
    ):
        assert (a - b).abs().max().item() < 1e-4
    for ours, theirs in zip(edges, alone, strict=True):
        for name, buffer in ours.named_buffers():
            assert torch.allclose(buffer, dict(theirs.named_buffers())[name], atol=1e-6), name

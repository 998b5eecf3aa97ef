"""buffers_preserved: forwards inside the block leave the BatchNorm running statistics untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from darts_core.nn.buffers import buffers_preserved


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4, affine=False))


def test_train_mode_forwards_inside_leave_every_buffer_as_it_was() -> None:
    net = _net().train()
    net(torch.randn(8, 3, 6, 6))  # running statistics away from their initial values
    before = {name: buffer.clone() for name, buffer in net.named_buffers()}
    identities = {name: buffer.data_ptr() for name, buffer in net.named_buffers()}
    with buffers_preserved(net):
        net(torch.randn(8, 3, 6, 6) * 5 + 2)
        assert not torch.equal(net[1].running_mean, before["1.running_mean"])  # the forward did move them
    for name, buffer in net.named_buffers():
        assert torch.equal(buffer, before[name]), name
        assert buffer.data_ptr() == identities[name]  # written back in place: optimizers, views still see it


def test_the_buffers_are_restored_when_the_block_raises() -> None:
    net = _net().train()
    before = {name: buffer.clone() for name, buffer in net.named_buffers()}
    with pytest.raises(RuntimeError, match="mid-block"), buffers_preserved(net):
        net(torch.randn(8, 3, 6, 6) + 3)
        raise RuntimeError("mid-block")
    for name, buffer in net.named_buffers():
        assert torch.equal(buffer, before[name]), name

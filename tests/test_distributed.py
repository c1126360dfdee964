"""distributed.reduce_mean: one float32 all-reduce over the given group while training, none without gradients
(reference: a fake two-rank group whose all_reduce doubles its input, as a sum over two equal ranks would)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lightning_losses import distributed


@pytest.fixture
def two_ranks(monkeypatch):
    calls = []

    def all_reduce(tensor, op=None, group=None):
        calls.append((tensor.dtype, group))
        tensor.mul_(2)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    return calls


def test_training_step_makes_one_float32_all_reduce_on_the_group(two_ranks):
    group = object()
    value = torch.tensor([3.0, 5.0], dtype=torch.float16)
    out = distributed.reduce_mean(value, group=group)
    assert two_ranks == [(torch.float32, group)]
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, value)  # (v/2)·2 over two equal ranks


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_no_collective_without_gradients(two_ranks, context):
    """Validation with uneven batch counts per rank must not wait on a collective a rank never joins."""
    with context():
        out = distributed.reduce_mean(torch.tensor([4.0]))
    assert two_ranks == []
    assert out.item() == 4.0


def test_single_process_is_identity():
    value = torch.tensor([1.0, 2.0])
    assert distributed.reduce_mean(value) is value
    assert distributed.world_size() == 1

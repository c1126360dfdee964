"""distributed.reduce_mean and Criterion.process_group: one float32 all-reduce over the given group while training,
none without gradients (reference: a fake two-rank group whose all_reduce doubles its input, as a sum over two
equal ranks would)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.distributed as dist

from lightning_losses import DETRCriterion, FCOSCriterion, distributed
from lightning_losses.serialization import init_config
from tests.references.scenes import random_maps, scene


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


def _fcos_step(criterion):
    """One FCOS training step on the seed0 scene (two images, one without boxes)."""
    generator, targets, sizes = scene("seed0", 3)
    maps = [
        random_maps(generator, 2, 3, sizes),
        random_maps(generator, 2, 4, sizes, positive=True),
        random_maps(generator, 2, 1, sizes),
    ]
    return criterion(*maps, targets)


def test_a_criterion_averages_over_its_process_group_in_one_all_reduce(two_ranks):
    """Criterion.process_group reaches dist.all_reduce: one float32 call per training step, on that group."""
    criterion = FCOSCriterion(3)
    assert criterion.process_group is None
    _fcos_step(criterion)
    assert two_ranks == [(torch.float32, None)]  # the default group
    group = object()
    criterion.process_group = group
    _fcos_step(criterion)
    assert two_ranks[1:] == [(torch.float32, group)]
    value = torch.tensor([3.0, 5.0])
    assert criterion.average_over_ranks(*value)[1].item() == 5.0  # (v/2)·2 over two equal ranks
    assert two_ranks[2:] == [(torch.float32, group)]


def test_detr_criterion_averages_its_box_count_over_the_process_group(two_ranks):
    criterion = DETRCriterion(3)
    criterion.process_group = group = object()
    logits, boxes = torch.randn(2, 5, 3), torch.rand(2, 5, 4) * 0.3 + 0.2
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 30.0]]), "labels": torch.tensor([1])}] * 2
    criterion(logits.requires_grad_(), boxes, targets, image_size=(64, 64))
    assert two_ranks == [(torch.float32, group)]


def test_process_group_is_shared_by_copies_and_left_out_of_state_and_config():
    """Set after construction: deep copies (the mixin's per-stage copies) keep the same group object, pickles
    drop it (a group belongs to its process), and neither the state_dict nor the class_path config records it."""
    criterion = FCOSCriterion(3)
    group = object()
    criterion.process_group = group
    assert copy.deepcopy(criterion).process_group is group
    assert pickle.loads(pickle.dumps(criterion)).process_group is None
    assert not any("process_group" in key for key in criterion.state_dict())
    assert "process_group" not in init_config(criterion)[1]
    assert init_config(criterion) == init_config(FCOSCriterion(3))

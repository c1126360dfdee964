"""NetsPresso ``yolov9_loss`` through ``build_losses`` / ``build_loss``: its total against the literal NetsPresso
Trainer 1.4.1 reference (``tests/references/task_aligned.py``, ``style="netspresso"``), read from NetsPresso's
``out`` / ``target`` dicts."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_losses import build_loss
from lightning_losses.compat.netspresso import CRITERIA, build_losses
from tests.references.scenes import random_targets
from tests.references.task_aligned import yolov8_loss

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

STRIDES = (8, 16, 32)
SIDE = 128


def _inputs(seed: int, reg_max: int, num_classes: int = 4):
    gen = torch.Generator().manual_seed(seed)
    maps = [
        torch.randn(2, 4 * reg_max + num_classes, SIDE // s, SIDE // s, generator=gen).requires_grad_() for s in STRIDES
    ]
    targets = random_targets(gen, (4, 2), num_classes, (SIDE, SIDE), min_size=8.0, max_size=90.0)
    return maps, targets


@pytest.mark.parametrize(("reg_max", "pred_dict"), [(16, False), (8, True)])
def test_yolov9_loss_equals_the_literal_reference(reg_max, pred_dict):
    """The NetsPresso total 0.5·cls + 7.5·iou + 1.5·dfl; ``out["pred"]`` as maps or as ``{"outputs": maps}``."""
    maps, targets = _inputs(reg_max, reg_max)
    entry = {"criterion": "yolov9_loss", "weight": None, "l1_activate_epoch": 1}
    if reg_max != 16:
        entry["reg_max"] = reg_max
    losses = build_losses([entry])
    out = {"pred": {"outputs": maps} if pred_dict else maps}
    target = {"gt": targets, "img_size": SIDE, "num_classes": 4}
    before = copy.deepcopy(targets)
    got = losses(out, target)
    want = yolov8_loss(maps, targets, STRIDES, 4, reg_max, "netspresso")
    assert set(got) == {"yolov9_loss", "yolov9_loss/loss_cls", "yolov9_loss/loss_bbox", "yolov9_loss/loss_dfl", "loss"}
    total = sum(want.values()).float()
    torch.testing.assert_close(got["loss"], total, rtol=2e-4, atol=1e-6)
    for g, w in zip(
        torch.autograd.grad(got["loss"], maps, retain_graph=True), torch.autograd.grad(total, maps), strict=True
    ):
        torch.testing.assert_close(g, w, rtol=2e-4, atol=1e-6)
    for a, b in zip(targets, before, strict=True):
        assert torch.equal(a["boxes"], b["boxes"])


def test_yolov9_loss_builds_through_every_dialect_and_checks_its_parameters():
    assert "yolov9_loss" in CRITERIA
    maps, targets = _inputs(3, 16)
    target = {"gt": targets, "img_size": (SIDE, SIDE)}
    plain = build_losses([{"criterion": "yolov9_loss", "weight": None, "l1_activate_epoch": 5}])({"pred": maps}, target)
    via_criterion = build_loss({"criterion": "yolov9_loss", "weight": 2.0})({"pred": maps}, target)
    torch.testing.assert_close(via_criterion["loss"], 2.0 * plain["loss"])
    with pytest.raises(TypeError, match="unknown parameters"):
        build_losses([{"criterion": "yolov9_loss", "weight": None, "num_classes": 3}])
    with pytest.raises(TypeError, match="unknown parameters"):
        build_losses([{"criterion": "yolov9_loss", "weight": None, "iou_type": "giou"}])

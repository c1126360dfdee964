"""Criterion.term_metrics: a term maps to the LossMetric whose one output of the call it is, and to nothing else.

Reference: the contract itself, on hand-built criteria (identity, scaling, two calls, nesting) and on every
preset, where the metric's running mean after one call must equal the returned term exactly.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from lightning_losses import (
    ATSSCriterion,
    FCOSCriterion,
    GFLCriterion,
    L1Loss,
    MSELoss,
    PIDNetCriterion,
    RetinaNetCriterion,
    YOLOXCriterion,
)
from lightning_losses.presets import Criterion
from tests.references.scenes import random_maps, scene

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")


class _Mixed(Criterion):
    """loss_l1: the child's output; loss_half: a scaled copy; loss_twice: the last of two calls; loss_reg: no child."""

    terms = ("loss_l1", "loss_half", "loss_twice", "loss_reg")

    def __init__(self) -> None:
        super().__init__()
        self.loss_l1 = L1Loss()
        self.twice = MSELoss()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, pred, target):
        loss = self.loss_l1(pred, target)
        self.twice(pred, target)
        return {
            "loss_l1": loss,
            "loss_half": loss / 2,
            "loss_twice": self.twice(pred, target),
            "loss_reg": self.scale**2,
        }


class _Wrapper(Criterion):
    """Passes an inner criterion's terms through and adds one of its own metric's."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _Mixed()
        self.extra = MSELoss(loss_weight=3.0)

    def forward(self, pred, target):
        return {**self.inner(pred, target), "loss_extra": self.extra(pred, target)}


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([1.0, -2.0, 4.0], requires_grad=True), torch.tensor([0.0, 0.0, 1.0])


def test_only_a_metrics_single_output_maps_to_it():
    criterion = _Mixed()
    assert criterion.term_metrics() == {}  # no call yet
    pred, target = _pair()
    terms = criterion(pred, target)
    assert criterion.term_metrics() == {"loss_l1": criterion.loss_l1}
    assert terms["loss_l1"].item() == pytest.approx((1 + 2 + 3) / 3)  # hand value
    assert criterion.loss_l1.compute().item() == pytest.approx(terms["loss_l1"].item())


def test_nested_criteria_report_paths_through_the_wrapper():
    wrapper = _Wrapper()
    pred, target = _pair()
    wrapper(pred, target)
    assert wrapper.term_metrics() == {"loss_l1": wrapper.inner.loss_l1, "loss_extra": wrapper.extra}
    assert wrapper.inner.term_metrics() == {"loss_l1": wrapper.inner.loss_l1}


def test_hooks_live_for_one_call_even_when_it_raises():
    criterion = _Mixed()
    with pytest.raises(ValueError, match="same shape"):
        criterion(torch.zeros(3), torch.zeros(4))  # raised inside L1Loss, with its hook in place
    assert all(not m._forward_hooks for m in criterion.modules())
    pred, target = _pair()
    criterion(pred, target)
    assert all(not m._forward_hooks for m in criterion.modules())
    restored = pickle.loads(pickle.dumps(copy.deepcopy(criterion)))
    assert restored.term_metrics() == {"loss_l1": restored.loss_l1}
    restored.loss_l1 = L1Loss()  # a replaced term module is found on the next call
    restored(pred, target)
    assert restored.term_metrics()["loss_l1"] is restored.loss_l1


def _assert_every_term_is_its_metrics_mean(criterion, terms):
    metrics = criterion.term_metrics()
    assert set(metrics) == set(criterion.terms) == set(terms)
    for term, metric in metrics.items():
        assert metric is getattr(criterion, term)
        assert metric.num_calls.item() == 1
        torch.testing.assert_close(metric.compute(), terms[term].detach().float(), rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["retinanet", "fcos", "atss", "gfl"])
def test_dense_presets_map_every_term(preset):
    classes = 3
    generator, targets, sizes = scene("seed0", classes)
    anchors = 9 if preset == "retinanet" else 1
    cls_scores = random_maps(generator, 2, anchors * classes, sizes)
    box_channels = 4 * 17 if preset == "gfl" else anchors * 4
    bbox_preds = random_maps(generator, 2, box_channels, sizes, scale=0.5, positive=preset in ("fcos", "atss"))
    maps = [cls_scores, bbox_preds]
    if preset in ("fcos", "atss"):
        maps.append(random_maps(generator, 2, 1, sizes))
    criterion = {"retinanet": RetinaNetCriterion, "fcos": FCOSCriterion, "atss": ATSSCriterion, "gfl": GFLCriterion}
    criterion = criterion[preset](classes)
    _assert_every_term_is_its_metrics_mean(criterion, criterion(*maps, targets))


def test_pidnet_maps_every_term():
    generator = torch.Generator().manual_seed(0)
    aux, logits = (torch.randn(2, 3, 8, 8, generator=generator) for _ in range(2))
    boundary = torch.randn(2, 1, 8, 8, generator=generator) * 4
    target = torch.randint(0, 3, (2, 16, 16), generator=generator)
    criterion = PIDNetCriterion(3, ohem=False)
    _assert_every_term_is_its_metrics_mean(criterion, criterion(aux, logits, boundary, target))


def test_yolox_leaves_loss_l1_out_until_it_runs():
    """Before l1_activate_epoch the returned loss_l1 is a zero of no metric: L1 is neither called nor tracked."""
    generator = torch.Generator().manual_seed(0)
    outputs = [torch.randn(2, 5 + 2, 4, 4, generator=generator), torch.randn(2, 5 + 2, 2, 2, generator=generator)]
    targets = [{"boxes": torch.tensor([[2.0, 2.0, 14.0, 14.0]]), "labels": torch.tensor([1])}] * 2
    criterion = YOLOXCriterion(2, strides=(8, 16), l1_activate_epoch=2)
    criterion.set_epoch(1)
    terms = criterion(outputs, targets)
    assert terms["loss_l1"].item() == 0.0
    assert set(criterion.term_metrics()) == {"loss_bbox", "loss_obj", "loss_cls"}
    assert criterion.loss_l1.num_calls.item() == 0
    criterion.set_epoch(2)
    for metric in criterion.term_metrics().values():
        metric.reset()
    _assert_every_term_is_its_metrics_mean(criterion, criterion(outputs, targets))
    assert criterion(outputs, targets)["loss_l1"].item() > 0

"""VarifocalLoss module against a literal MMDetection 3.x ``VarifocalLoss.forward`` reference.

``MMVarifocalLoss`` is written for these tests from MMDetection 3.x's module semantics: ``use_sigmoid`` must
be True, ``reduction_override`` picks the reduction, ``loss_weight`` multiplies the reduced value of the
functional reference ``mm_varifocal`` (tests/references/detr.py).
"""

from __future__ import annotations

import pytest
import torch

from lightning_losses import VarifocalLoss, build_loss, list_losses
from lightning_losses.losses.base import LossMetric
from tests.references.detr import mm_varifocal, soft_targets


class MMVarifocalLoss:
    def __init__(self, use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=True, reduction="mean", loss_weight=1.0):
        assert use_sigmoid is True
        assert alpha >= 0.0
        self.alpha, self.gamma, self.iou_weighted = alpha, gamma, iou_weighted
        self.reduction, self.loss_weight = reduction, loss_weight

    def __call__(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        reduction = reduction_override if reduction_override else self.reduction
        return self.loss_weight * mm_varifocal(
            pred, target, weight, self.alpha, self.gamma, self.iou_weighted, reduction, avg_factor
        )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"alpha": 0.5, "gamma": 1.0, "loss_weight": 2.5}, {"iou_weighted": False, "reduction": "sum"}],
)
def test_module_matches_mmdet_reference(kwargs):
    ours, ref = VarifocalLoss(**kwargs), MMVarifocalLoss(**kwargs)
    pred = torch.randn(10, 6) * 2
    target = soft_targets(10, 6)
    weight = torch.rand(10, 6)
    torch.testing.assert_close(ours(pred, target), ref(pred, target))
    torch.testing.assert_close(ours(pred, target, weight), ref(pred, target, weight))
    torch.testing.assert_close(
        ours(pred, target, avg_factor=3.0, reduction_override="mean"),
        ref(pred, target, avg_factor=3.0, reduction_override="mean"),
    )
    torch.testing.assert_close(
        ours(pred, target, reduction_override="none"), ref(pred, target, reduction_override="none")
    )


def test_running_mean_is_the_mean_of_returned_values():
    loss = VarifocalLoss(loss_weight=2.0)
    values = [loss(torch.randn(4, 3), soft_targets(4, 3)) for _ in range(3)]
    torch.testing.assert_close(loss.compute(), torch.stack(values).mean())


def test_three_config_dialects_build_it():
    assert "VarifocalLoss" in list_losses()
    pred, target = torch.randn(5, 4), soft_targets(5, 4)
    expected = MMVarifocalLoss(alpha=0.5, loss_weight=3.0)(pred, target)
    for cfg in (
        {"type": "VarifocalLoss", "alpha": 0.5, "loss_weight": 3.0},
        {"criterion": "VarifocalLoss", "alpha": 0.5, "weight": 3.0},
        {"class_path": "lightning_losses.VarifocalLoss", "init_args": {"alpha": 0.5, "loss_weight": 3.0}},
    ):
        built = build_loss(cfg)
        assert isinstance(built, VarifocalLoss)
        assert isinstance(built, LossMetric)
        torch.testing.assert_close(built(pred, target), expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="use_sigmoid"):
        VarifocalLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match="alpha"):
        VarifocalLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        VarifocalLoss(gamma=-2.0)
    with pytest.raises(ValueError, match="same shape"):
        VarifocalLoss()(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        VarifocalLoss(validate_args=True)(torch.full((2, 2), float("nan")), torch.zeros(2, 2))

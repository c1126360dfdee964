"""Varifocal loss against a literal MMDetection 3.x reference, hand-worked values and float64 gradcheck.

``mm_varifocal`` (tests/references/detr.py) is written from MMDetection 3.x's ``varifocal_loss`` semantics, in
that code's own style: 0/1 masks multiplied in (``target > 0``, ``target <= 0``), the sigmoid taken from
the logits, the binary cross-entropy written out with ``logsigmoid`` (not the package's call) and
``weight_reduce_loss``'s ``sum / (avg_factor + eps32)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from lightning_losses.functional import varifocal_loss
from tests.references.detr import mm_varifocal, soft_targets

EPS32 = torch.finfo(torch.float32).eps
LOG2 = math.log(2.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_hand_worked_value():
    # zero logits: positive 0.5·log2, negative 0.75·0.5²·log2
    loss = varifocal_loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.0]]), reduction="none")
    torch.testing.assert_close(loss, torch.tensor([[0.5 * LOG2, 0.75 * 0.25 * LOG2]]))
    unweighted = varifocal_loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.0]]), iou_weighted=False, reduction="none")
    torch.testing.assert_close(unweighted[0, 0], torch.tensor(LOG2))


@pytest.mark.parametrize("iou_weighted", [True, False])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.75, 2.0), (0.25, 1.5), (1.0, 0.0)])
def test_matches_mmdet_reference(iou_weighted, alpha, gamma):
    pred = torch.randn(12, 7) * 3
    target = soft_targets(12, 7)
    weight = torch.rand(12, 7)
    for reduction in ("none", "mean", "sum"):
        for avg_factor in (None, 4.5, torch.tensor(2.5)):
            if avg_factor is not None and reduction == "sum":
                with pytest.raises(ValueError, match="avg_factor"):
                    varifocal_loss(pred, target, reduction=reduction, avg_factor=avg_factor)
                continue
            for w in (None, weight):
                ours = varifocal_loss(pred, target, w, alpha, gamma, iou_weighted, reduction, avg_factor)
                ref = mm_varifocal(pred, target, w, alpha, gamma, iou_weighted, reduction, avg_factor)
                torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_gradient_matches_reference_and_detached_form():
    pred = (torch.randn(6, 5) * 2).requires_grad_()
    target = soft_targets(6, 5)
    (g_ours,) = torch.autograd.grad(varifocal_loss(pred, target, reduction="sum"), pred)
    (g_ref,) = torch.autograd.grad(mm_varifocal(pred, target, reduction="sum"), pred)
    torch.testing.assert_close(g_ours, g_ref)
    # detached focal weight: d/dx [w · BCE(x, q)] = w · (σ(x) - q), with w a constant
    (g_det,) = torch.autograd.grad(varifocal_loss(pred, target, reduction="sum", detach_focal_weight=True), pred)
    sig = pred.detach().sigmoid()
    w = torch.where(target > 0, target, 0.75 * sig.pow(2))
    torch.testing.assert_close(g_det, w * (sig - target))
    assert not torch.allclose(g_det, g_ours)


def test_gradcheck_float64():
    # (the detached form's gradient is by design not the derivative: it is checked in closed form above)
    pred = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    target = soft_targets(4, 3, torch.float64)
    weight = torch.rand(4, 3, dtype=torch.float64)

    def fn(x):
        return varifocal_loss(x, target, weight, reduction="mean", avg_factor=3.0)

    assert gradcheck(fn, (pred,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_extreme_logits_are_finite(dtype):
    pred = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]]).to(dtype).requires_grad_()
    target = torch.tensor([[0.7, 0.0, 0.0], [0.3, 0.0, 0.0]]).to(dtype)
    loss = varifocal_loss(pred, target, reduction="sum")
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pred.grad).all()
    ref = mm_varifocal(pred.detach().double(), target.double(), reduction="sum")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-2, atol=1e-2)


def test_autocast_cpu_bf16():
    pred = torch.randn(8, 4, requires_grad=True)
    target = soft_targets(8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = varifocal_loss(pred * 1.0, target)
    loss.backward()
    torch.testing.assert_close(loss, mm_varifocal(pred.detach(), target), rtol=1e-5, atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        varifocal_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="alpha"):
        varifocal_loss(torch.zeros(2, 3), torch.zeros(2, 3), alpha=-0.1)
    with pytest.raises(ValueError, match="gamma"):
        varifocal_loss(torch.zeros(2, 3), torch.zeros(2, 3), gamma=float("nan"))
    with pytest.raises(TypeError, match="pred"):
        varifocal_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="weight"):
        varifocal_loss(torch.zeros(2, 3), torch.zeros(2, 3), weight=torch.ones(3, 2))
    with pytest.raises(ValueError, match="reduction"):
        varifocal_loss(torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg")

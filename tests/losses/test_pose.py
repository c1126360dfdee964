"""KLDiscretLoss module: a thin shell over ``kl_discret_loss`` (references: a hand-worked value, the functional,
MMPose 1.x's defaults and normaliser), the registry name, the running mean, half precision, argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses import KLDiscretLoss, LossMetric, build_loss, list_losses
from lightning_losses.functional.pose import kl_discret_loss


def simcc(seed: int = 0, n: int = 2, k: int = 4, bins: tuple[int, int] = (10, 8)):
    generator = torch.Generator().manual_seed(seed)
    pred = tuple(torch.randn(n, k, b, generator=generator) for b in bins)
    target = tuple(torch.rand(n, k, b, generator=generator) for b in bins)
    return pred, target, torch.rand(n, k, generator=generator)


def test_hand_worked_value_and_loss_weight():
    """Uniform prediction over 4 bins, one-hot label: log(4)/4 per keypoint and axis; one keypoint, K = 1."""
    pred = torch.zeros(1, 1, 4)
    onehot = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]])
    assert math.isclose(float(KLDiscretLoss()(pred, onehot)), math.log(4) / 4, rel_tol=1e-6)
    got = KLDiscretLoss(loss_weight=3.0)((pred, pred), (onehot, onehot))
    assert math.isclose(float(got), 3 * 2 * math.log(4) / 4, rel_tol=1e-6)


def test_defaults_are_mmposes():
    """Reference: MMPose 1.x KLDiscretLoss(beta=1.0, label_softmax=False, label_beta=10.0, use_target_weight=True)."""
    loss = KLDiscretLoss()
    assert (loss.beta, loss.label_softmax, loss.label_beta, loss.use_target_weight) == (1.0, False, 10.0, True)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_module_equals_functional_times_weight(reduction):
    pred, target, weight = simcc()
    module = KLDiscretLoss(beta=10.0, label_softmax=True, reduction=reduction, loss_weight=0.5)
    want = 0.5 * kl_discret_loss(pred, target, weight, 10.0, True, 10.0, reduction)
    torch.testing.assert_close(module(pred, target, weight), want)


def test_use_target_weight_false_ignores_weight():
    """As MMPose: without use_target_weight every keypoint weighs 1 whatever `weight` says."""
    pred, target, weight = simcc(1)
    got = KLDiscretLoss(use_target_weight=False)(pred, target, weight)
    torch.testing.assert_close(got, kl_discret_loss(pred, target))


def test_avg_factor_and_reduction_override():
    pred, target, weight = simcc(2)
    module = KLDiscretLoss()
    summed = kl_discret_loss(pred, target, weight, reduction="sum")
    torch.testing.assert_close(module(pred, target, weight, avg_factor=3.0), summed / 3.0)
    torch.testing.assert_close(module(pred, target, weight, reduction_override="sum"), summed)


def test_running_mean_over_calls():
    pred, target, weight = simcc(3)
    module = KLDiscretLoss()
    values = [float(module(pred, target, weight * s)) for s in (1.0, 0.5, 2.0)]
    assert math.isclose(float(module.compute()), sum(values) / 3, rel_tol=1e-6)


def test_registered_under_its_class_name():
    assert "KLDiscretLoss" in list_losses()
    assert issubclass(KLDiscretLoss, LossMetric)
    loss = build_loss({"type": "KLDiscretLoss", "beta": 10.0, "label_softmax": True})
    assert isinstance(loss, KLDiscretLoss)
    assert loss.beta == 10.0
    assert loss.label_softmax


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_and_float32(dtype):
    pred, target, weight = simcc(4, bins=(512, 512))
    half = tuple((p * 20).to(dtype).requires_grad_() for p in pred)
    got = KLDiscretLoss(beta=10.0, label_softmax=True)(half, target, weight)
    assert got.dtype == torch.float32
    assert torch.isfinite(got)
    got.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad.float()).all() for p in half)
    want = kl_discret_loss(tuple(p.detach().float() for p in half), target, weight, 10.0, True, 10.0)
    torch.testing.assert_close(got, want)


def test_validate_args_rejects_non_finite_pred():
    pred, target, weight = simcc(5)
    bad = (pred[0].clone(), pred[1])
    bad[0][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"pred\[0\]"):
        KLDiscretLoss(validate_args=True)(bad, target, weight)


def test_bad_shapes_name_the_argument():
    pred, target, weight = simcc(6)
    with pytest.raises(ValueError, match="weight"):
        KLDiscretLoss()(pred, target, weight[:, :2])
    with pytest.raises(ValueError, match=r"target\[1\]"):
        KLDiscretLoss()(pred, (target[0], target[1][..., :3]), weight)

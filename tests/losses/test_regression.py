"""L1Loss, SmoothL1Loss, MSELoss, BalancedL1Loss modules against MMDetection 3.x's forward (reference below)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses import BalancedL1Loss, L1Loss, MSELoss, SmoothL1Loss

F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# Reference: MMDetection 3.x models/losses/{smooth_l1_loss,mse_loss,balanced_l1_loss}.py forward(), written out.
# --------------------------------------------------------------------------------------------------
def _elementwise(name: str, diff: torch.Tensor, hp: dict) -> torch.Tensor:
    d = diff.abs()
    if name == "L1Loss":
        return d
    if name == "MSELoss":
        return diff**2
    if name == "SmoothL1Loss":
        beta = hp.get("beta", 1.0)
        return torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    alpha, gamma, beta = hp.get("alpha", 0.5), hp.get("gamma", 1.5), hp.get("beta", 1.0)
    b = math.e ** (gamma / alpha) - 1
    return torch.where(
        d < beta,
        alpha / b * (b * d + 1) * torch.log(b * d / beta + 1) - alpha * d,
        gamma * d + gamma / b - alpha * beta,
    )


def mmdet_forward(name, hp, pred, target, weight=None, avg_factor=None, reduction="mean", loss_weight=1.0):
    """L1Loss / SmoothL1Loss return (pred·weight).sum() before anything else when no weight is > 0."""
    if name in ("L1Loss", "SmoothL1Loss") and weight is not None and not torch.any(weight > 0):
        if pred.dim() == weight.dim() + 1:
            weight = weight.unsqueeze(1)
        return (pred * weight).sum()
    loss = _elementwise(name, pred - target, hp)
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        loss = {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    elif reduction == "mean":
        loss = loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)
    return loss_weight * loss


MODULES = {
    "L1Loss": (L1Loss, {}),
    "SmoothL1Loss": (SmoothL1Loss, {"beta": 0.5}),
    "MSELoss": (MSELoss, {}),
    "BalancedL1Loss": (BalancedL1Loss, {"alpha": 0.4, "gamma": 1.2, "beta": 0.8}),
}
SHORTCUT = ["L1Loss", "SmoothL1Loss"]
NO_SHORTCUT = ["MSELoss", "BalancedL1Loss"]


def _make(name: str, **kwargs):
    cls, hp = MODULES[name]
    return cls(**hp, **kwargs), hp


def _pair(n: int = 6, seed: int = 0, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=dtype) * 1.5, torch.randn(n, 4, generator=g, dtype=dtype) * 1.5


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize(
    ("reduction", "avg_factor"),
    [("none", None), ("mean", None), ("sum", None), ("mean", 2.5), ("mean", torch.tensor(4.0)), ("none", 2.5)],
)
@pytest.mark.parametrize("weight_shape", [None, (6, 4), (6, 1)])
def test_forward_matches_mmdet(name, reduction, avg_factor, weight_shape):
    """MMDetection forward: loss_weight × weight_reduce_loss(element loss, weight, reduction, avg_factor)."""
    module, hp = _make(name, reduction=reduction, loss_weight=2.5)
    pred, target = _pair()
    weight = None if weight_shape is None else torch.rand(weight_shape, dtype=F64)
    out = module(pred, target, weight=weight, avg_factor=avg_factor)
    expected = mmdet_forward(name, hp, pred, target, weight, avg_factor, reduction, loss_weight=2.5)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("override", ["none", "sum", "mean"])
def test_reduction_override(name, override):
    """reduction_override replaces the constructor's reduction for one call (MMDetection forward)."""
    module, hp = _make(name, reduction="mean", loss_weight=0.5)
    pred, target = _pair(seed=1)
    out = module(pred, target, reduction_override=override)
    torch.testing.assert_close(out, mmdet_forward(name, hp, pred, target, reduction=override, loss_weight=0.5))


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (L1Loss(loss_weight=2.0), [2.0, 6.0]),
        (MSELoss(loss_weight=2.0), [2.0, 18.0]),
        (SmoothL1Loss(beta=2.0), [0.25, 2.0]),
        (SmoothL1Loss(beta=1.0 / 9), [1 - 0.5 / 9, 3 - 0.5 / 9]),
        (BalancedL1Loss(), [1.5 + 1.5 / (math.e**3 - 1) - 0.5, 4.5 + 1.5 / (math.e**3 - 1) - 0.5]),
    ],
    ids=["l1", "mse", "smooth_l1_beta2", "smooth_l1_beta1/9", "balanced_l1"],
)
def test_hyperparameters_by_hand(module, expected):
    """Hand-worked: |d| = [1, 3]; L1·2, d²·2, smooth L1 with β, balanced L1 outlier branch γd + γ/b − αβ."""
    module.reduction = "none"
    out = module(torch.tensor([1.0, -3.0], dtype=F64), torch.zeros(2, dtype=F64))
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64))


@pytest.mark.parametrize("name", SHORTCUT)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_zero_weight_shortcut_returns_pred_times_weight_sum(name, reduction):
    """MMDetection: no weight > 0 → (pred·weight).sum(), 0-dim, without loss_weight or avg_factor, any reduction.

    Non-positive weights with negative entries make the shortcut's value non-zero, so it is observable.
    """
    module, _ = _make(name, reduction=reduction, loss_weight=3.0)
    pred, target = _pair(seed=2)
    pred.requires_grad_(True)
    weight = -torch.rand(6, 4, dtype=F64) * (torch.rand(6, 4, dtype=F64) < 0.5)
    avg_factor = None if reduction == "sum" else 7.0
    out = module(pred, target, weight=weight, avg_factor=avg_factor)
    assert out.shape == ()
    torch.testing.assert_close(out, (pred * weight).sum())
    out.backward()
    torch.testing.assert_close(pred.grad, weight)


@pytest.mark.parametrize("name", SHORTCUT)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_zero_weight_shortcut_all_zero_is_zero_with_graph(name, reduction):
    """MMDetection (RetinaNet level without positives): all-zero bbox weights → a 0-dim 0 that reaches pred."""
    module, _ = _make(name, reduction=reduction, loss_weight=3.0)
    pred = torch.randn(5, 4, requires_grad=True)
    out = module(pred, torch.randn(5, 4), weight=torch.zeros(5, 4))
    assert out.shape == ()
    assert out.item() == 0.0
    assert out.requires_grad
    out.backward()
    torch.testing.assert_close(pred.grad, torch.zeros(5, 4))


@pytest.mark.parametrize("name", SHORTCUT)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_zero_weight_shortcut_unsqueezes_per_row_weight(name, reduction):
    """MMDetection: a weight with one dim fewer than pred ((N,) for (N, 4)) is unsqueezed to (N, 1) for the shortcut."""
    module, _ = _make(name, reduction=reduction, loss_weight=3.0)
    pred, target = _pair(n=3, seed=3)
    pred.requires_grad_(True)
    weight = torch.tensor([0.0, -0.5, -2.0], dtype=F64)
    out = module(pred, target, weight=weight)
    assert out.shape == ()
    torch.testing.assert_close(out, (pred * weight[:, None]).sum())
    out.backward()
    torch.testing.assert_close(pred.grad, weight[:, None].expand(3, 4))


@pytest.mark.parametrize("name", SHORTCUT)
def test_one_positive_weight_disables_the_shortcut(name):
    """Any weight > 0 → the ordinary weighted loss (× loss_weight)."""
    module, hp = _make(name, loss_weight=3.0)
    pred, target = _pair(seed=4)
    weight = torch.zeros(6, 4, dtype=F64)
    weight[2, 1] = 1.0
    weight[0, 0] = -1.0
    out = module(pred, target, weight=weight)
    torch.testing.assert_close(out, mmdet_forward(name, hp, pred, target, weight, loss_weight=3.0))
    assert out.item() != (pred * weight).sum().item()


@pytest.mark.parametrize("name", NO_SHORTCUT)
def test_no_shortcut_for_mse_and_balanced_l1(name):
    """MMDetection's MSELoss / BalancedL1Loss have no zero-weight return: 'none' keeps (N, 4), mean × loss_weight."""
    module, hp = _make(name, loss_weight=3.0)
    pred, target = _pair(seed=5)
    zeros = torch.zeros(6, 4, dtype=F64)
    assert module(pred, target, weight=zeros, reduction_override="none").shape == (6, 4)
    weight = -torch.rand(6, 4, dtype=F64)
    out = module(pred, target, weight=weight)
    torch.testing.assert_close(out, 3.0 * (_elementwise(name, pred - target, hp) * weight).mean())
    assert not torch.allclose(out, (pred * weight).sum())


@pytest.mark.parametrize("name", list(MODULES))
def test_running_mean_equals_mean_of_returned_values(name):
    """LossMetric contract: compute() = mean of every value forward returned (reduction='none' joins as its mean)."""
    module, _ = _make(name, loss_weight=1.5)
    returned = []
    for i, override in enumerate(["mean", "sum", "none", None]):
        pred, target = _pair(seed=10 + i)
        returned.append(module(pred, target, weight=torch.rand(6, 1, dtype=F64), reduction_override=override))
    expected = torch.stack([r.mean() for r in returned]).float().mean()
    torch.testing.assert_close(module.compute(), expected)
    module.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        torch.testing.assert_close(module.compute(), torch.tensor(0.0))


@pytest.mark.parametrize("name", list(MODULES))
def test_avg_factor_with_sum_raises(name):
    """MMDetection: avg_factor with reduction='sum' is a ValueError."""
    module, _ = _make(name, reduction="sum")
    with pytest.raises(ValueError, match="avg_factor"):
        module(*_pair(), avg_factor=2.0)


@pytest.mark.parametrize("name", list(MODULES))
def test_shape_mismatch_raises(name):
    """Boundary check through the module: both shapes named."""
    module, _ = _make(name)
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 2\)"):
        module(torch.zeros(4, 4), torch.zeros(4, 2))


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_input_is_zero_with_graph(name, reduction):
    """N = 0 → 0 (not NaN) with a graph to pred."""
    module, _ = _make(name, reduction=reduction)
    pred = torch.zeros(0, 4, requires_grad=True)
    out = module(pred, torch.zeros(0, 4))
    assert out.shape == ()
    assert out.item() == 0.0
    out.backward()
    assert pred.grad is not None


@pytest.mark.parametrize("name", list(MODULES))
def test_validate_args_rejects_non_finite(name):
    """validate_args=True checks finiteness of pred and target (host sync); off by default."""
    module, _ = _make(name, validate_args=True)
    bad = torch.tensor([[0.0, float("nan"), 1.0, 2.0]])
    with pytest.raises(ValueError, match="pred"):
        module(bad, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="target"):
        module(torch.zeros(1, 4), bad)
    module_off, _ = _make(name)
    assert module_off(bad, torch.zeros(1, 4)).isnan()


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: SmoothL1Loss(beta=0.0), "beta"),
        (lambda: BalancedL1Loss(beta=-1.0), "beta"),
        (lambda: BalancedL1Loss(alpha=0.0), "alpha"),
        (lambda: L1Loss(reduction="avg"), "reduction"),
        (lambda: MSELoss(loss_weight=float("inf")), "loss_weight"),
    ],
)
def test_constructor_validation(factory, match):
    """Boundary checks at construction name the argument."""
    with pytest.raises(ValueError, match=match):
        factory()


def test_extra_repr_shows_hyperparameters():
    """The module's repr lists its own parameters (for --print_config and logs)."""
    assert "beta=0.5" in repr(SmoothL1Loss(beta=0.5))
    text = repr(BalancedL1Loss(alpha=0.4, gamma=1.2, beta=0.8, loss_weight=2.0))
    assert all(s in text for s in ("alpha=0.4", "gamma=1.2", "beta=0.8", "loss_weight=2.0"))


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_low_precision_is_finite(name, dtype):
    """CPU autocast: predictions from a Linear are half precision; the loss and gradients stay finite."""
    module, _ = _make(name, loss_weight=2.0)
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    with torch.autocast("cpu", dtype=dtype):
        loss = module(layer(torch.randn(16, 8)), torch.randn(16, 4) * 3, weight=torch.rand(16, 1), avg_factor=5.0)
    assert torch.isfinite(loss)
    loss.float().backward()
    assert torch.isfinite(layer.weight.grad).all()
    assert torch.isfinite(module.compute())

"""l1_loss, smooth_l1_loss, mse_loss, balanced_l1_loss: closed forms of MMDetection 3.x, torch.nn.functional."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses.functional import balanced_l1_loss, l1_loss, mse_loss, smooth_l1_loss

EPS32 = torch.finfo(torch.float32).eps
LOSSES = [l1_loss, smooth_l1_loss, mse_loss, balanced_l1_loss]


def _balanced_l1_closed_form(d: float, alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0) -> float:
    """MMDetection 3.x's formula with b = e^{γ/α} − 1, evaluated with ``math`` on one |diff|."""
    b = math.exp(gamma / alpha) - 1
    if d < beta:
        return alpha / b * (b * d + 1) * math.log(b * d / beta + 1) - alpha * d
    return gamma * d + gamma / b - alpha * beta


def _pair(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * 2, torch.randn(*shape, generator=g, dtype=dtype) * 2


def test_l1_and_mse_by_hand():
    """Hand-worked: pred [1, 2, -1], target [0, 4, 1] → |d| = [1, 2, 2], d² = [1, 4, 4]."""
    pred, target = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.0, 4.0, 1.0])
    torch.testing.assert_close(l1_loss(pred, target, reduction="none"), torch.tensor([1.0, 2.0, 2.0]))
    torch.testing.assert_close(mse_loss(pred, target, reduction="none"), torch.tensor([1.0, 4.0, 4.0]))
    torch.testing.assert_close(l1_loss(pred, target), torch.tensor(5.0 / 3))
    torch.testing.assert_close(mse_loss(pred, target, reduction="sum"), torch.tensor(9.0))


@pytest.mark.parametrize(
    ("beta", "diffs", "expected"),
    [
        (1.0, [0.5, -0.5, 3.0, 1.0], [0.125, 0.125, 2.5, 0.5]),
        (2.0, [1.0, 3.0, 0.0, -2.0], [0.25, 2.0, 0.0, 1.0]),
        (1.0 / 9, [0.05, 1.0], [0.5 * 0.05**2 * 9, 1.0 - 0.5 / 9]),
    ],
)
def test_smooth_l1_by_hand(beta, diffs, expected):
    """MMDetection 3.x: 0.5·d²/β if |d| < β else |d| − 0.5·β (hand-worked values)."""
    pred = torch.tensor(diffs, dtype=torch.float64)
    out = smooth_l1_loss(pred, torch.zeros_like(pred), beta=beta, reduction="none")
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize(
    ("alpha", "gamma", "beta"),
    [(0.5, 1.5, 1.0), (0.3, 1.0, 0.5), (1.0, 2.0, 2.0)],
)
def test_balanced_l1_matches_seed_closed_form(alpha, gamma, beta):
    """MMDetection 3.x's formula with b = e^{γ/α} − 1 on both branches; the loss depends only on |pred − target|."""
    diffs = [0.0, 0.1, -0.1, 0.5 * beta, beta * 0.999, beta, 1.7 * beta, -3.0]
    pred = torch.tensor(diffs, dtype=torch.float64)
    out = balanced_l1_loss(pred, torch.zeros_like(pred), alpha=alpha, gamma=gamma, beta=beta, reduction="none")
    expected = [_balanced_l1_closed_form(abs(d), alpha, gamma, beta) for d in diffs]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def test_balanced_l1_default_value_at_two():
    """Hand-worked (α .5, γ 1.5, β 1): d = 2 → 2γ + γ/(e³ − 1) − αβ = 2.578586."""
    out = balanced_l1_loss(torch.tensor([2.0]), torch.zeros(1), reduction="sum")
    assert math.isclose(out.item(), 3.0 + 1.5 / (math.e**3 - 1) - 0.5, rel_tol=1e-6)


@pytest.mark.parametrize(("alpha", "gamma", "beta"), [(0.5, 1.5, 1.0), (0.3, 1.0, 0.5), (1.0, 2.0, 2.0)])
def test_balanced_l1_is_continuous_at_beta(alpha, gamma, beta):
    """Both branches meet at |d| = β (log(b + 1) = γ/α makes them equal for any β)."""
    d = torch.tensor([beta * (1 - 1e-12), beta, beta * (1 + 1e-12)], dtype=torch.float64)
    out = balanced_l1_loss(d, torch.zeros_like(d), alpha=alpha, gamma=gamma, beta=beta, reduction="none")
    torch.testing.assert_close(out, out[1].expand(3), atol=1e-9, rtol=0)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.5, 1.5), (0.25, 1.0)])
def test_balanced_l1_gradient_is_the_papers(alpha, gamma):
    """Libra R-CNN (β = 1): ∂ℓ/∂x = α·ln(b|x| + 1) inside, γ outside; 0 at the origin, continuous at |x| = 1."""
    b = math.exp(gamma / alpha) - 1
    d = torch.tensor([1e-9, 0.2, 0.6, 0.999999, 1.000001, 2.5], dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(d, torch.zeros_like(d), alpha=alpha, gamma=gamma, reduction="sum").backward()
    expected = [alpha * math.log(b * x + 1) if x < 1 else gamma for x in d.tolist()]
    torch.testing.assert_close(d.grad, torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=1e-6)
    assert abs(d.grad[0].item()) < 1e-7
    assert abs(d.grad[3].item() - d.grad[4].item()) < 1e-5


def test_balanced_l1_gradient_general_beta():
    """Derivative of MMDetection 3.x's inlier branch: α·ln(bd/β + 1) + α(bd + 1)/(bd + β) − α (so α(1/β − 1) at 0)."""
    alpha, gamma, beta = 0.5, 1.5, 0.5
    b = math.exp(gamma / alpha) - 1
    d = torch.tensor([1e-12, 0.1, 0.3, 0.45], dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(d, torch.zeros_like(d), alpha=alpha, gamma=gamma, beta=beta, reduction="sum").backward()
    expected = [alpha * math.log(b * x / beta + 1) + alpha * (b * x + 1) / (b * x + beta) - alpha for x in d.tolist()]
    torch.testing.assert_close(d.grad, torch.tensor(expected, dtype=torch.float64))
    assert math.isclose(d.grad[0].item(), alpha * (1 / beta - 1), rel_tol=1e-6)


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_smooth_l1_is_continuous_with_continuous_gradient_at_beta(beta):
    """Both branches give β/2 at |d| = β and slope 1 there."""
    d = torch.tensor([beta * (1 - 1e-12), beta, beta * (1 + 1e-12)], dtype=torch.float64, requires_grad=True)
    out = smooth_l1_loss(d, torch.zeros_like(d), beta=beta, reduction="none")
    torch.testing.assert_close(out, torch.full((3,), beta / 2, dtype=torch.float64))
    out.sum().backward()
    torch.testing.assert_close(d.grad, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (l1_loss, F.l1_loss),
        (mse_loss, F.mse_loss),
        (lambda p, t, reduction: smooth_l1_loss(p, t, beta=1.0, reduction=reduction), F.smooth_l1_loss),
        (
            lambda p, t, reduction: smooth_l1_loss(p, t, beta=0.3, reduction=reduction),
            lambda p, t, reduction: F.smooth_l1_loss(p, t, beta=0.3, reduction=reduction),
        ),
        (
            lambda p, t, reduction: smooth_l1_loss(p, t, beta=2.0, reduction=reduction),
            lambda p, t, reduction: F.huber_loss(p, t, delta=2.0, reduction=reduction) / 2.0,
        ),
    ],
    ids=["l1", "mse", "smooth_l1", "smooth_l1_beta0.3", "huber_scaled"],
)
def test_matches_torch_functional(ours, theirs, reduction):
    """torch.nn.functional (same semantics without weight/avg_factor); smooth L1 = Huber(δ = β) / β."""
    pred, target = _pair(3, 5, 4)
    pred.requires_grad_(True)
    out, ref = ours(pred, target, reduction=reduction), theirs(pred, target, reduction=reduction)
    torch.testing.assert_close(out, ref)
    (g_out,) = torch.autograd.grad(out.sum(), pred)
    (g_ref,) = torch.autograd.grad(ref.sum(), pred)
    torch.testing.assert_close(g_out, g_ref)


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize(
    ("reduction", "avg_factor"),
    [("none", None), ("mean", None), ("sum", None), ("mean", 3.5), ("mean", torch.tensor(0.0)), ("none", 2.0)],
)
@pytest.mark.parametrize("weight_shape", [None, (6, 4), (6, 1), (4,)])
def test_weight_reduction_avg_factor_paths(loss_fn, reduction, avg_factor, weight_shape):
    """MMDetection's rule on the element-wise loss: × weight (broadcast), then none / mean / sum / Σ/(avg + eps32)."""
    pred, target = _pair(6, 4, seed=1)
    elementwise = loss_fn(pred, target, reduction="none")
    weight = None if weight_shape is None else torch.rand(weight_shape, dtype=torch.float64)
    weighted = elementwise if weight is None else elementwise * weight
    if avg_factor is None:
        expected = {"none": weighted, "mean": weighted.sum() / weighted.numel(), "sum": weighted.sum()}[reduction]
    else:
        expected = weighted if reduction == "none" else weighted.sum() / (float(avg_factor) + EPS32)
    out = loss_fn(pred, target, weight=weight, reduction=reduction, avg_factor=avg_factor)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_avg_factor_with_sum_raises(loss_fn):
    """MMDetection: avg_factor with reduction='sum' is a ValueError."""
    pred, target = _pair(2, 4)
    with pytest.raises(ValueError, match="avg_factor"):
        loss_fn(pred, target, reduction="sum", avg_factor=2.0)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_shape_mismatch_raises_naming_both_shapes(loss_fn):
    """Boundary check: pred (3, 4) vs target (3, 5) → ValueError with both shapes."""
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        loss_fn(torch.zeros(3, 4), torch.zeros(3, 5))


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_integer_pred_raises_type_error(loss_fn):
    """pred must be floating point (the message names `pred`)."""
    with pytest.raises(TypeError, match="pred"):
        loss_fn(torch.zeros(3, dtype=torch.long), torch.zeros(3))


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_integer_target_is_cast_to_pred_dtype(loss_fn):
    """An integer target is compared in pred's dtype (same result as a float target)."""
    pred = torch.tensor([0.5, 2.0, -1.5])
    target = torch.tensor([0, 1, -3])
    torch.testing.assert_close(loss_fn(pred, target), loss_fn(pred, target.float()))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p, t: smooth_l1_loss(p, t, beta=0.0), "beta"),
        (lambda p, t: smooth_l1_loss(p, t, beta=-1.0), "beta"),
        (lambda p, t: balanced_l1_loss(p, t, beta=0.0), "beta"),
        (lambda p, t: balanced_l1_loss(p, t, alpha=0.0), "alpha"),
        (lambda p, t: balanced_l1_loss(p, t, alpha=-0.5), "alpha"),
    ],
)
def test_invalid_hyperparameters_raise(call, match):
    """MMDetection 3.x asserts β > 0; α > 0 keeps b = e^{γ/α} − 1 defined."""
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2), torch.ones(2))


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_input_is_zero_with_graph(loss_fn, reduction):
    """N = 0 → 0 (not NaN) that still backpropagates to pred."""
    pred = torch.zeros(0, 4, requires_grad=True)
    out = loss_fn(pred, torch.zeros(0, 4), reduction=reduction)
    assert out.shape == ()
    assert out.item() == 0.0
    out.backward()
    assert pred.grad is not None
    assert loss_fn(pred, torch.zeros(0, 4), reduction="none").shape == (0, 4)


@pytest.mark.parametrize(
    "loss_fn",
    [
        l1_loss,
        mse_loss,
        lambda p, t, w: smooth_l1_loss(p, t, w, beta=0.7),
        lambda p, t, w: balanced_l1_loss(p, t, w, alpha=0.4, gamma=1.2, beta=0.8),
    ],
    ids=["l1", "mse", "smooth_l1", "balanced_l1"],
)
def test_gradcheck_float64(loss_fn):
    """torch.autograd.gradcheck (finite differences) on |d| in [0.1, 0.5] ∪ [1.1, 2.0] (away from 0 and β)."""
    g = torch.Generator().manual_seed(3)
    target = torch.randn(5, 4, generator=g, dtype=torch.float64)
    mag = torch.cat([0.1 + 0.4 * torch.rand(10, generator=g), 1.1 + 0.9 * torch.rand(10, generator=g)])
    sign = torch.where(torch.rand(20, generator=g) < 0.5, -1.0, 1.0)
    pred = (target + (mag * sign).view(5, 4).double()).requires_grad_(True)
    weight = torch.rand(5, 1, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss_fn, (pred, target.requires_grad_(True), weight))


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_low_precision_is_finite(loss_fn, dtype):
    """Under CPU autocast a Linear gives half-precision predictions; loss and gradients stay finite."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    x, target = torch.randn(16, 8), torch.randn(16, 4) * 3
    weight = torch.rand(16, 1)
    with torch.autocast("cpu", dtype=dtype):
        pred = layer(x)
        assert pred.dtype == dtype
        loss = loss_fn(pred, target, weight=weight, avg_factor=5.0)
    assert torch.isfinite(loss)
    loss.float().backward()
    assert torch.isfinite(layer.weight.grad).all()
    ref = loss_fn(pred.detach().float(), target, weight=weight, avg_factor=5.0)
    torch.testing.assert_close(loss.float(), ref, rtol=2e-2, atol=1e-3)

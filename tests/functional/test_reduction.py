"""weight_reduce_loss / reduce_loss: the one reduction rule (MMDetection 3.x models/losses/utils.py, notes 0.1), and
MMDetection's zero-weight rule for box losses against its literal formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_losses.functional import reduce_loss, weight_reduce_loss
from lightning_losses.functional.reduction import (
    has_positive_weight,
    zero_weight_grad,
    zero_weight_select,
    zero_weight_shortcut,
    zero_weight_value,
)

EPS32 = torch.finfo(torch.float32).eps  # 1.1920929e-07, MMDetection's avg_factor guard


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [("none", [1.0, 2.0, 6.0]), ("mean", 3.0), ("sum", 9.0)],
)
def test_reduce_loss_by_hand(reduction, expected):
    """Hand-worked: [1, 2, 6] → itself, mean 3, sum 9."""
    out = reduce_loss(torch.tensor([1.0, 2.0, 6.0]), reduction)
    torch.testing.assert_close(out, torch.tensor(expected))


def test_reduce_loss_none_returns_the_input_unchanged():
    """reduction='none' is the identity (same tensor, same shape)."""
    loss = torch.rand(2, 3)
    assert reduce_loss(loss, "none") is loss


@pytest.mark.parametrize("function", [reduce_loss, weight_reduce_loss])
def test_invalid_reduction_raises(function):
    """An unknown reduction is a ValueError that names the argument."""
    with pytest.raises(ValueError, match="reduction"):
        function(torch.ones(3), reduction="max")


@pytest.mark.parametrize("avg_factor", [None, 4.0])
def test_mean_of_empty_is_zero_with_graph(avg_factor):
    """Design choice (not MMDetection, where mean of nothing is NaN): an empty mean is 0 and keeps the graph."""
    x = torch.zeros(0, 4, requires_grad=True)
    out = weight_reduce_loss(x * 2, reduction="mean", avg_factor=avg_factor)
    assert out.shape == ()
    assert out.item() == 0.0
    assert out.requires_grad
    out.backward()
    assert x.grad is not None
    assert x.grad.shape == (0, 4)
    assert reduce_loss(torch.zeros(0), "mean").item() == 0.0


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [("none", [[1.0, 2.0], [6.0, 8.0]]), ("mean", 17.0 / 4), ("sum", 17.0)],
)
def test_weight_multiplies_elementwise_with_broadcast(reduction, expected):
    """Hand-worked: loss [[1,2],[3,4]] × weight (2,1) [[1],[2]] = [[1,2],[6,8]]; mean divides by numel 4."""
    loss = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = weight_reduce_loss(loss, torch.tensor([[1.0], [2.0]]), reduction)
    torch.testing.assert_close(out, torch.tensor(expected))


def test_mean_divides_by_element_count_not_weight_sum():
    """MMDetection's rule: mean = Σ w·l / n, with n = numel (here 1.3333 not 2)."""
    out = weight_reduce_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 1.0]), "mean")
    torch.testing.assert_close(out, torch.tensor(4.0 / 3.0))


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("avg_factor", [0.0, 2.0, 7.5])
def test_avg_factor_divides_sum_by_avg_factor_plus_eps32(avg_factor, as_tensor):
    """MMDetection: mean with avg_factor = Σ w·l / (avg_factor + float32 eps); avg_factor 0 → Σ / 2⁻²³."""
    loss = torch.tensor([0.25, 0.75, 1.0], dtype=torch.float64)
    weight = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    factor = torch.tensor(avg_factor, dtype=torch.float64) if as_tensor else avg_factor
    out = weight_reduce_loss(loss, weight, "mean", factor)
    expected = (0.5 + 0.75 + 0.5) / (avg_factor + 1.1920928955078125e-07)
    assert math.isclose(float(out), expected, rel_tol=1e-12)


def test_avg_factor_zero_is_sum_over_eps32_exactly():
    """Hand-worked in float32: Σ = 1, avg_factor 0 → 1 / 2⁻²³ = 8388608 (an eps added, not a max(., eps))."""
    out = weight_reduce_loss(torch.tensor([0.5, 0.5]), reduction="mean", avg_factor=0)
    assert out.item() == 2.0**23


def test_avg_factor_tensor_keeps_graph_to_loss():
    """A tensor avg_factor keeps the loss differentiable: d/dl (Σ l / (a + eps)) = 1 / (a + eps)."""
    loss = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    out = weight_reduce_loss(loss, reduction="mean", avg_factor=torch.tensor(3.0, dtype=torch.float64))
    out.backward()
    torch.testing.assert_close(loss.grad, torch.full((2,), 1 / (3.0 + EPS32), dtype=torch.float64))


def test_avg_factor_with_none_returns_weighted_elementwise_loss():
    """MMDetection: reduction='none' ignores avg_factor and returns loss × weight."""
    loss = torch.tensor([1.0, 2.0])
    out = weight_reduce_loss(loss, torch.tensor([3.0, 0.5]), "none", avg_factor=10.0)
    torch.testing.assert_close(out, torch.tensor([3.0, 1.0]))


@pytest.mark.parametrize("avg_factor", [1.0, torch.tensor(1.0)])
def test_avg_factor_with_sum_raises(avg_factor):
    """MMDetection raises ValueError for avg_factor with reduction='sum'."""
    with pytest.raises(ValueError, match="sum"):
        weight_reduce_loss(torch.ones(3), reduction="sum", avg_factor=avg_factor)


@pytest.mark.parametrize("avg_factor", [-1.0, -1e-9, float("nan"), float("inf"), -float("inf")])
def test_invalid_avg_factor_value_raises(avg_factor):
    """Boundary check: a negative, NaN or infinite avg_factor is a ValueError naming the argument."""
    with pytest.raises(ValueError, match="avg_factor"):
        weight_reduce_loss(torch.ones(3), reduction="mean", avg_factor=avg_factor)


def test_non_scalar_tensor_avg_factor_raises():
    """A tensor avg_factor must hold one element; the message names its shape."""
    with pytest.raises(ValueError, match=r"avg_factor.*\(2,\)"):
        weight_reduce_loss(torch.ones(3), reduction="mean", avg_factor=torch.ones(2))


@pytest.mark.parametrize("avg_factor", [True, "2", [2.0]])
def test_avg_factor_of_wrong_type_raises(avg_factor):
    """avg_factor is a number or a scalar tensor (bool is not a number here)."""
    with pytest.raises(TypeError, match="avg_factor"):
        weight_reduce_loss(torch.ones(3), reduction="mean", avg_factor=avg_factor)


@pytest.mark.parametrize("weight_shape", [(3, 1), (2, 3), (4,)])
def test_weight_that_would_enlarge_or_mismatch_the_loss_raises(weight_shape):
    """A (3, 1) weight on a (3,) loss broadcasts to (3, 3): torch would accept it, the loss shape must not change."""
    with pytest.raises(ValueError, match=r"`weight` of shape .* does not broadcast to the loss of shape \(3,\)"):
        weight_reduce_loss(torch.ones(3), torch.ones(weight_shape), "mean")


@pytest.mark.parametrize("name", ["l1_loss", "giou_loss", "distribution_focal_loss", "cross_entropy"])
def test_losses_reject_a_column_weight_on_per_row_losses(name):
    """Per-row losses given an (N, 1) weight raise instead of returning an (N, N) grid."""
    from lightning_losses import functional as LF

    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.0], [0.0, 1.0, 5.0, 2.0]])
    args = {
        "l1_loss": (torch.zeros(3), torch.ones(3)),
        "giou_loss": (boxes, boxes.flip(0)),
        "distribution_focal_loss": (torch.zeros(3, 5), torch.tensor([0.5, 1.0, 3.9])),
        "cross_entropy": (torch.zeros(3, 4), torch.tensor([0, 1, 2])),
    }[name]
    with pytest.raises(ValueError, match="does not broadcast"):
        getattr(LF, name)(*args, weight=torch.ones(3, 1), reduction="none")


class _Ops(TorchDispatchMode):
    """Records every aten op run inside it with the number of elements it returns (or its Python value)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, object]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append((str(func), out.numel() if isinstance(out, torch.Tensor) else out))
        return out


def _literal_value(pred: torch.Tensor, weight: torch.Tensor) -> float:
    """Σ_i w_i Σ_k pred_ik as Python loops over a per-row weight (pred (N, K), weight (N,))."""
    return sum(float(weight[i]) * sum(float(v) for v in pred[i]) for i in range(pred.shape[0]))


def test_zero_weight_value_equals_the_literal_double_sum():
    """Reference: Σ_i w_i Σ_k pred_ik in Python loops (per-row weight) and (pred * weight).sum() (any other)."""
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    row_weight = torch.randn(7, generator=gen, dtype=torch.float64)
    assert zero_weight_value(pred, row_weight).item() == pytest.approx(_literal_value(pred, row_weight), rel=1e-12)
    element_weight = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(zero_weight_value(pred, element_weight), (pred * element_weight).sum())
    batched = torch.randn(2, 7, 4, generator=gen, dtype=torch.float64)
    batch_weight = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(zero_weight_value(batched, batch_weight), (batched * batch_weight[..., None]).sum())


def test_zero_weight_value_of_a_per_row_weight_makes_no_pred_sized_temporary():
    """Counted with a dispatch mode: a per-row weight multiplies row sums, so no op returns pred's element count."""
    pred, weight = torch.randn(50, 4), torch.rand(50)
    with _Ops() as rec:
        zero_weight_value(pred, weight)
    assert all(size != pred.numel() for _, size in rec.ops), rec.ops


@pytest.mark.parametrize("weights", [[0.0, 0.0, 0.0], [0.0, -1.0, -2.0], [0.0, 0.5, 0.0], [1.0, 2.0, 3.0]])
@pytest.mark.parametrize("scalar", [True, False])
def test_zero_weight_shortcut_equals_the_literal_rule(weights, scalar):
    """Reference, MMDetection 3.x's box losses: ``if not torch.any(weight > 0): return (pred * weight).sum()``,
    else the loss; values and gradients to ``pred`` and to the loss."""
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = torch.randn(() if scalar else (3,), generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.tensor(weights, dtype=torch.float64)
    out = zero_weight_shortcut(loss, pred, weight)
    ref = loss if any(w > 0 for w in weights) else (pred * weight[:, None]).sum()
    torch.testing.assert_close(out, ref)
    got = torch.autograd.grad(out, (pred, loss), torch.ones_like(out), allow_unused=True, materialize_grads=True)
    want = torch.autograd.grad(ref, (pred, loss), torch.ones_like(ref), allow_unused=True, materialize_grads=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    assert zero_weight_shortcut(loss, pred, None) is loss


def test_zero_weight_shortcut_reads_the_host_only_for_element_wise_losses():
    """A scalar loss picks on the device (no ``_local_scalar_dense``); an element-wise one reads one boolean back,
    because the result's shape depends on it."""
    pred, weight = torch.randn(3, 4), torch.zeros(3)
    with _Ops() as rec:
        zero_weight_shortcut(torch.tensor(5.0), pred, weight)
    assert not [op for op, _ in rec.ops if "_local_scalar_dense" in op]
    with _Ops() as rec:
        zero_weight_shortcut(torch.rand(3), pred, weight)
    assert len([op for op, _ in rec.ops if "_local_scalar_dense" in op]) == 1


def test_zero_weight_select_and_has_positive_weight_by_hand():
    """Hand-worked: weight [0, -1] has no positive entry, so the value 7 replaces the loss 5 (cast to its dtype)."""
    has_positive = has_positive_weight(torch.tensor([0.0, -1.0]))
    assert has_positive.shape == ()
    assert not has_positive.item()
    assert has_positive_weight(torch.tensor([0.0, 1e-6])).item()
    out = zero_weight_select(torch.tensor(5.0), torch.tensor(7.0, dtype=torch.float64), has_positive)
    assert out.dtype == torch.float32
    assert out.item() == 7.0
    assert zero_weight_select(torch.tensor(5.0), torch.tensor(7.0), torch.tensor(True)).item() == 5.0


@pytest.mark.parametrize("weights", [[0.0, 0.0, 0.0, 0.0], [0.0, -0.5, 0.0, -1.0], [0.0, 0.3, 0.0, 2.0]])
def test_zero_weight_grad_equals_autograd_of_the_literal_rule(weights):
    """Reference: autograd through ``torch.where(any(w > 0), 3 · Σ w_i ℓ_i / 2, Σ_i w_i Σ_k pred_ik)`` with
    ℓ_i = Σ_k pred_ik², given the loss branch's own gradient and a scalar upstream gradient."""
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.tensor(weights, dtype=torch.float64)
    upstream = torch.tensor(1.7, dtype=torch.float64)
    loss = 3 * (weight * (pred**2).sum(-1)).sum() / 2
    literal = torch.where((weight > 0).any(), loss, (pred * weight[:, None]).sum())
    (want,) = torch.autograd.grad(literal, pred, upstream, retain_graph=True)
    (loss_grad,) = torch.autograd.grad(loss, pred, upstream)
    got = zero_weight_grad(loss_grad, has_positive_weight(weight), upstream, weight)
    torch.testing.assert_close(got, want)

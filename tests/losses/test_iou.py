"""IoULoss, GIoULoss, DIoULoss, CIoULoss modules against MMDetection 3.x's forward (literal reference below)."""

from __future__ import annotations

import pytest
import torch

from lightning_losses import CIoULoss, DIoULoss, GIoULoss, IoULoss
from tests.references.mmdet_losses import mmdet_ciou_loss, mmdet_diou_loss, mmdet_giou_loss, mmdet_iou_loss

F64 = torch.float64
EPS32 = torch.finfo(torch.float32).eps


# --------------------------------------------------------------------------------------------------
# Reference: MMDetection 3.x models/losses/iou_loss.py module forwards, written out over the element-wise
# losses of tests/references/mmdet_losses.py.
# --------------------------------------------------------------------------------------------------
def mmdet_elementwise(kind, pred, target, eps, mode="log"):
    if kind == "iou":
        return mmdet_iou_loss(pred, target, mode, eps)
    return {"giou": mmdet_giou_loss, "diou": mmdet_diou_loss, "ciou": mmdet_ciou_loss}[kind](pred, target, eps)


def mmdet_forward(
    kind, pred, target, weight=None, avg_factor=None, reduction="mean", loss_weight=1.0, eps=1e-6, mode="log"
):
    """IoULoss skips the zero-weight return for reduction 'none'; G/D/CIoULoss always take it. (N, 4) weight → mean."""
    if weight is not None and not torch.any(weight > 0) and (kind != "iou" or reduction != "none"):
        if pred.dim() == weight.dim() + 1:
            weight = weight.unsqueeze(1)
        return (pred * weight).sum()
    if weight is not None and weight.dim() > 1:
        assert weight.shape == pred.shape
        weight = weight.mean(-1)
    loss = mmdet_elementwise(kind, pred, target, eps, mode)
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        loss = {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    elif reduction == "mean":
        loss = loss.sum() / (avg_factor + EPS32)
    return loss_weight * loss


# --------------------------------------------------------------------------------------------------
def boxes_and_targets(n: int, seed: int, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of sides 2..50 px; preds jittered (close, loose) or independent (often disjoint)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=F64) * 100
    target = torch.cat([xy, xy + 2 + torch.rand(n, 2, generator=g, dtype=F64) * 48], -1)
    wh = (target[:, 2:] - target[:, :2]).repeat(1, 2)
    rel = torch.tensor([0.05, 0.3, 3.0], dtype=F64).repeat(n // 3 + 1)[:n, None]
    moved = target + torch.randn(n, 4, generator=g, dtype=F64) * rel * wh
    pred = torch.cat([torch.minimum(moved[:, :2], moved[:, 2:]), torch.maximum(moved[:, :2], moved[:, 2:])], -1)
    return pred.to(dtype), target.to(dtype)


CASES = {
    "IoULoss-linear": ("iou", lambda **kw: IoULoss(mode="linear", **kw), "linear"),
    "IoULoss-square": ("iou", lambda **kw: IoULoss(mode="square", **kw), "square"),
    "IoULoss-log": ("iou", lambda **kw: IoULoss(**kw), "log"),
    "GIoULoss": ("giou", GIoULoss, None),
    "DIoULoss": ("diou", DIoULoss, None),
    "CIoULoss": ("ciou", CIoULoss, None),
}
ALWAYS_SHORTCUT = ["GIoULoss", "DIoULoss", "CIoULoss"]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    ("reduction", "avg_factor"),
    [("none", None), ("mean", None), ("sum", None), ("mean", 5.0), ("mean", torch.tensor(0.5)), ("none", 2.0)],
)
@pytest.mark.parametrize("weight_kind", [None, "per_box", "per_coord"])
def test_forward_matches_mmdet(case, reduction, avg_factor, weight_kind):
    """MMDetection forward: loss_weight × weight_reduce(element loss, weight or weight.mean(-1), reduction, avg)."""
    kind, factory, mode = CASES[case]
    pred, target = boxes_and_targets(12, seed=1)
    g = torch.Generator().manual_seed(2)
    weight = {
        None: None,
        "per_box": torch.rand(12, generator=g, dtype=F64),
        "per_coord": torch.rand(12, 4, generator=g, dtype=F64),
    }[weight_kind]
    module = factory(reduction=reduction, loss_weight=2.0)
    out = module(pred, target, weight=weight, avg_factor=avg_factor)
    expected = mmdet_forward(kind, pred, target, weight, avg_factor, reduction, 2.0, mode=mode or "log")
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("eps", [1e-16, 1e-3])
def test_eps_matches_mmdet(case, eps):
    """eps reaches the loss as in MMDetection (IoU clamp; GIoU overlaps eps; D/CIoU union, c², heights)."""
    kind, factory, mode = CASES[case]
    pred, target = boxes_and_targets(12, seed=3, dtype=torch.float32)
    out = factory(eps=eps, reduction="none")(pred, target)
    torch.testing.assert_close(out, mmdet_forward(kind, pred, target, reduction="none", eps=eps, mode=mode or "log"))


def test_yolox_iou_loss_config_matches_mmdet():
    """YOLOX: IoULoss(mode='square', eps=1e-16, reduction='sum', loss_weight=5.0) (notes 5.1)."""
    pred, target = boxes_and_targets(30, seed=4, dtype=torch.float32)
    out = IoULoss(mode="square", eps=1e-16, reduction="sum", loss_weight=5.0)(pred, target)
    expected = mmdet_forward("iou", pred, target, reduction="sum", loss_weight=5.0, eps=1e-16, mode="square")
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("case", [*ALWAYS_SHORTCUT, "IoULoss-log", "IoULoss-linear"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weight_shape", [(7,), (7, 4)])
def test_zero_weight_shortcut(case, reduction, weight_shape):
    """MMDetection: no weight > 0 → (pred·weight).sum() ((N,) unsqueezed to (N, 1)), 0-dim, no loss_weight.

    IoULoss takes it only when the reduction is not 'none'; with 'none' it returns loss_weight × loss × weight
    (weight averaged over its last axis). Negative entries make the value observable.
    """
    kind, factory, mode = CASES[case]
    module = factory(reduction=reduction, loss_weight=3.0)
    pred, target = boxes_and_targets(7, seed=5)
    pred.requires_grad_(True)
    g = torch.Generator().manual_seed(6)
    weight = -torch.rand(weight_shape, generator=g, dtype=F64)
    weight[0] = 0.0
    avg_factor = None if reduction == "sum" else 4.0
    out = module(pred, target, weight=weight, avg_factor=avg_factor)
    expected = mmdet_forward(kind, pred, target, weight, avg_factor, reduction, 3.0, mode=mode or "log")
    torch.testing.assert_close(out, expected)
    if kind == "iou" and reduction == "none":
        assert out.shape == (7,)
        return
    assert out.shape == ()
    shaped = weight if weight.dim() == 2 else weight[:, None]
    torch.testing.assert_close(out, (pred * shaped).sum())
    out.backward()
    torch.testing.assert_close(pred.grad, shaped.expand(7, 4))


@pytest.mark.parametrize("case", list(CASES))
def test_all_zero_weight_is_zero_with_graph(case):
    """FCOS/ATSS with no positive centerness: all-zero weights → 0 that keeps pred in the graph."""
    _, factory, _ = CASES[case]
    pred, target = boxes_and_targets(6, seed=7, dtype=torch.float32)
    pred.requires_grad_(True)
    out = factory(loss_weight=2.0)(pred, target, weight=torch.zeros(6))
    assert out.shape == ()
    assert out.item() == 0.0
    out.backward()
    torch.testing.assert_close(pred.grad, torch.zeros(6, 4))


@pytest.mark.parametrize("case", list(CASES))
def test_zero_weight_shortcut_gradient_ignores_the_skipped_loss(case):
    """MMDetection returns (pred·weight).sum() before computing the loss, so its gradient is exactly the weight (0).

    Pairs with pred = target are where a skipped element loss could have non-finite gradients (CIoU's α).
    """
    _, factory, _ = CASES[case]
    _, target = boxes_and_targets(5, seed=11, dtype=torch.float32)
    pred = target.clone().requires_grad_(True)
    out = factory(loss_weight=2.0)(pred, target, weight=torch.zeros(5))
    assert out.item() == 0.0
    out.backward()
    torch.testing.assert_close(pred.grad, torch.zeros(5, 4))


@pytest.mark.parametrize("case", list(CASES))
def test_per_coordinate_weight_of_wrong_shape_raises(case):
    """MMDetection asserts a 2-D weight has pred's shape; here a ValueError names both."""
    _, factory, _ = CASES[case]
    pred, target = boxes_and_targets(6, seed=8)
    with pytest.raises(ValueError, match=r"\(6, 4\).*\(6, 2\)"):
        factory()(pred, target, weight=torch.rand(6, 2, dtype=F64))


@pytest.mark.parametrize("case", list(CASES))
def test_running_mean_equals_mean_of_returned_values(case):
    """LossMetric contract: compute() is the mean of the returned values (a 'none' return joins as its mean)."""
    _, factory, _ = CASES[case]
    module = factory(loss_weight=2.0)
    returned = []
    for i, override in enumerate([None, "sum", "none", "mean"]):
        pred, target = boxes_and_targets(9, seed=20 + i, dtype=torch.float32)
        returned.append(module(pred, target, weight=torch.rand(9), reduction_override=override))
    torch.testing.assert_close(module.compute(), torch.stack([r.detach().mean() for r in returned]).mean())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_input_is_zero_with_graph(case, reduction):
    """N = 0 (an image without positives) → 0, not NaN, with a graph; with or without an empty weight."""
    _, factory, _ = CASES[case]
    module = factory(reduction=reduction)
    for weight in (None, torch.zeros(0)):
        pred = torch.zeros(0, 4, requires_grad=True)
        out = module(pred, torch.zeros(0, 4), weight=weight)
        assert out.shape == ()
        assert out.item() == 0.0
        out.backward()
        assert pred.grad is not None


@pytest.mark.parametrize("case", list(CASES))
def test_perfect_prediction_is_zero(case):
    """pred = target → ≈ 0 (log: −log(1) = 0 up to eps) and finite gradients, on ordinary pixel boxes."""
    _, factory, _ = CASES[case]
    _, target = boxes_and_targets(10, seed=9, dtype=torch.float32)
    pred = target.clone().requires_grad_(True)
    out = factory(loss_weight=2.0)(pred, target, weight=torch.rand(10))
    assert abs(out.item()) < 1e-5
    out.backward()
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("case", list(CASES))
def test_input_checks(case):
    """Boundary checks: both shapes named on mismatch; boxes not (N, 4) rejected; validate_args catches NaN."""
    _, factory, _ = CASES[case]
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 4\)"):
        factory()(torch.zeros(3, 4), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        factory()(torch.zeros(3, 5), torch.zeros(3, 5))
    bad = torch.tensor([[0.0, 0.0, float("nan"), 1.0]])
    with pytest.raises(ValueError, match="pred"):
        factory(validate_args=True)(bad, torch.ones(1, 4))
    with pytest.raises(ValueError, match="target"):
        factory(validate_args=True)(torch.ones(1, 4), bad)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: IoULoss(mode="exp"), "mode"),
        (lambda: IoULoss(eps=0.0), "eps"),
        (lambda: GIoULoss(eps=-1e-6), "eps"),
        (lambda: DIoULoss(reduction="avg"), "reduction"),
        (lambda: CIoULoss(loss_weight=float("nan")), "loss_weight"),
    ],
)
def test_constructor_validation(factory, match):
    """Boundary checks at construction name the argument."""
    with pytest.raises(ValueError, match=match):
        factory()


def test_extra_repr_shows_hyperparameters():
    """The repr lists mode / eps / reduction / loss_weight."""
    text = repr(IoULoss(mode="square", eps=1e-16, reduction="sum", loss_weight=5.0))
    assert all(s in text for s in ("mode='square'", "eps=1e-16", "reduction='sum'", "loss_weight=5.0"))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_low_precision_is_finite(case, dtype):
    """CPU autocast: half boxes (up to ~1000 px) → finite float32 loss and finite gradients."""
    _, factory, _ = CASES[case]
    module = factory(loss_weight=2.0)
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    _, target = boxes_and_targets(24, seed=10, dtype=torch.float32)
    target = target * 10
    with torch.autocast("cpu", dtype=dtype):
        raw = layer(torch.randn(24, 8))
        loss = module(target.to(dtype) + raw * 20, target.to(dtype), weight=torch.rand(24), avg_factor=3.0)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()

"""bbox_overlaps and IoU-family losses: hand-worked boxes, MMDetection 3.x (literal reference below), torchvision."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.ops as tvo

from lightning_losses.functional import bbox_overlaps, ciou_loss, diou_loss, giou_loss, iou_loss
from tests.references.mmdet_boxes import bbox_overlaps as mmdet_bbox_overlaps
from tests.references.mmdet_losses import mmdet_ciou_loss, mmdet_diou_loss, mmdet_giou_loss, mmdet_iou_loss
from tests.references.mmdet_losses import weight_reduce_loss as mmdet_weight_reduce_loss

EPS32 = torch.finfo(torch.float32).eps
F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# Independent reference: MMDetection 3.x, written out from its formulas (bbox_overlaps.py, iou_loss.py and
# utils.py in tests/references/mmdet_boxes.py and mmdet_losses.py). Kept literal: no shared helper with the package.
# --------------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------------
# Box generators
# --------------------------------------------------------------------------------------------------
def random_boxes(n: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 100.0) -> torch.Tensor:
    """Well-formed xyxy boxes, sides in [1, 1 + scale/2]."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=F64) * scale
    wh = torch.rand(n, 2, generator=g, dtype=F64) * scale / 2 + 1
    return torch.cat([xy, xy + wh], -1).to(dtype)


def jittered(target: torch.Tensor, seed: int, rel: float) -> torch.Tensor:
    """target with each side moved by N(0, rel·side); corners re-sorted so boxes stay well formed."""
    g = torch.Generator().manual_seed(seed)
    wh = (target[:, 2:] - target[:, :2]).repeat(1, 2)
    moved = target + torch.randn(target.shape, generator=g, dtype=F64).to(target.dtype) * rel * wh
    return torch.cat([torch.minimum(moved[:, :2], moved[:, 2:]), torch.maximum(moved[:, :2], moved[:, 2:])], -1)


def loss_pairs(n: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed pairs: close (IoU > .5 mostly), loose, and independent (often disjoint) boxes, plus degenerate rows."""
    target = random_boxes(3 * n, seed, dtype)
    pred = torch.cat(
        [
            jittered(target[:n], seed + 1, 0.05),
            jittered(target[n : 2 * n], seed + 2, 0.4),
            random_boxes(n, seed + 3, dtype),
        ]
    )
    degenerate = torch.tensor(
        [[5.0, 5.0, 5.0, 9.0], [5.0, 5.0, 9.0, 5.0], [9.0, 9.0, 5.0, 5.0], [3.0, 3.0, 3.0, 3.0]], dtype=dtype
    )
    return torch.cat([pred, degenerate]), torch.cat([target, degenerate.flip(0) + 1])


# --------------------------------------------------------------------------------------------------
# bbox_overlaps
# --------------------------------------------------------------------------------------------------
A = [0.0, 0.0, 2.0, 2.0]
B = [1.0, 1.0, 3.0, 3.0]  # overlap 1, union 7, enclosure 3x3, centers (1,1)-(2,2): ρ² = 2, c² = 18
C = [4.0, 0.0, 6.0, 2.0]  # disjoint: enclosure 6x2 = 12, union 8, ρ² = 16, c² = 40


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("iou", [1 / 7, 0.0]),
        ("iof", [1 / 4, 0.0]),
        ("giou", [1 / 7 - 2 / 9, -1 / 3]),
        ("diou", [1 / 7 - 2 / 18, -16 / 40]),
        ("ciou", [1 / 7 - 2 / 18, -16 / 40]),  # equal aspect ratios: v = 0
    ],
)
def test_bbox_overlaps_hand_worked(mode, expected):
    """Hand-worked A=[0,0,2,2] against B=[1,1,3,3] and C=[4,0,6,2], pairwise and aligned."""
    a, bc = torch.tensor([A], dtype=F64), torch.tensor([B, C], dtype=F64)
    out = bbox_overlaps(a, bc, mode=mode)
    assert out.shape == (1, 2)
    torch.testing.assert_close(out, torch.tensor([expected], dtype=F64), atol=1e-6, rtol=0)
    aligned = bbox_overlaps(a.expand(2, 4), bc, mode=mode, is_aligned=True)
    torch.testing.assert_close(aligned, torch.tensor(expected, dtype=F64), atol=1e-6, rtol=0)


def test_bbox_overlaps_ciou_hand_worked_aspect_term():
    """Hand-worked CIoU (no IoU gate in bbox_overlaps): [0,0,2,4] vs [0,0,2,3]: IoU .75, ρ² .25, c² 20, v by atan."""
    v = 4 / math.pi**2 * (math.atan(2 / 3) - math.atan(2 / 4)) ** 2
    alpha = v / (1 - 0.75 + v)
    expected = 0.75 - 0.25 / 20 - alpha * v
    b1, b2 = torch.tensor([[0.0, 0.0, 2.0, 4.0]], dtype=F64), torch.tensor([[0.0, 0.0, 2.0, 3.0]], dtype=F64)
    assert math.isclose(bbox_overlaps(b1, b2).item(), 0.75, rel_tol=1e-12)
    assert math.isclose(bbox_overlaps(b1, b2, mode="ciou").item(), expected, rel_tol=1e-6)


@pytest.mark.parametrize("mode", ["iou", "iof", "giou"])
@pytest.mark.parametrize("is_aligned", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_bbox_overlaps_matches_mmdet(mode, is_aligned, dtype):
    """MMDetection 3.x bbox_overlaps (literal reference above), incl. disjoint and degenerate boxes."""
    b1, b2 = loss_pairs(8, seed=5, dtype=dtype)
    if not is_aligned:
        b2 = b2[:13]
    out = bbox_overlaps(b1, b2, mode=mode, is_aligned=is_aligned)
    torch.testing.assert_close(out, mmdet_bbox_overlaps(b1, b2, mode=mode, is_aligned=is_aligned))


@pytest.mark.parametrize("mode", ["iou", "iof", "giou"])
def test_bbox_overlaps_batched_matches_mmdet(mode):
    """MMDetection's batched form: (B, N, 4) x (B, M, 4) → (B, N, M); aligned (B, N, 4) x (B, N, 4) → (B, N)."""
    b1 = random_boxes(2 * 5, seed=1).view(2, 5, 4)
    b2 = random_boxes(2 * 3, seed=2).view(2, 3, 4)
    out = bbox_overlaps(b1, b2, mode=mode)
    assert out.shape == (2, 5, 3)
    torch.testing.assert_close(out, mmdet_bbox_overlaps(b1, b2, mode=mode))
    b3 = jittered(b1.view(-1, 4), seed=3, rel=0.2).view(2, 5, 4)
    aligned = bbox_overlaps(b1, b3, mode=mode, is_aligned=True)
    assert aligned.shape == (2, 5)
    torch.testing.assert_close(aligned, mmdet_bbox_overlaps(b1, b3, mode=mode, is_aligned=True))


@pytest.mark.parametrize("mode", ["iou", "iof", "giou", "diou", "ciou"])
def test_bbox_overlaps_batched_equals_per_batch_and_broadcasts(mode):
    """Leading dims are independent batches; a leading 1 broadcasts (stacked unbatched results)."""
    b1 = random_boxes(2 * 4, seed=7).view(2, 4, 4)
    b2 = random_boxes(2 * 6, seed=8).view(2, 6, 4)
    out = bbox_overlaps(b1, b2, mode=mode)
    torch.testing.assert_close(out, torch.stack([bbox_overlaps(b1[i], b2[i], mode=mode) for i in range(2)]))
    out = bbox_overlaps(b1[:1], b2, mode=mode)
    assert out.shape == (2, 4, 6)
    torch.testing.assert_close(out[1], bbox_overlaps(b1[0], b2[1], mode=mode))


@pytest.mark.parametrize("mode", ["iou", "iof", "giou", "diou", "ciou"])
def test_bbox_overlaps_aligned_is_diagonal_of_pairwise(mode):
    """Aligned result = diagonal of the pairwise matrix (same boxes), for every mode."""
    b1, b2 = loss_pairs(6, seed=11, dtype=F64)
    pairwise = bbox_overlaps(b1, b2, mode=mode)
    torch.testing.assert_close(bbox_overlaps(b1, b2, mode=mode, is_aligned=True), pairwise.diagonal())


@pytest.mark.parametrize(
    ("mode", "reference", "eps", "atol"),
    [
        ("iou", tvo.box_iou, 1e-6, 1e-6),
        ("giou", tvo.generalized_box_iou, 1e-6, 1e-6),
        ("diou", tvo.distance_box_iou, 1e-7, 1e-6),
        ("ciou", tvo.complete_box_iou, 1e-7, 1e-5),
    ],
)
def test_bbox_overlaps_matches_torchvision_pairwise(mode, reference, eps, atol):
    """torchvision.ops box_iou / generalized_box_iou / distance_box_iou / complete_box_iou on well-formed boxes.

    Differences: torchvision divides by the raw union (we clamp it to ≥ eps: equal for areas ≥ 1); its DIoU adds
    eps=1e-7 to c² as we do with eps=1e-7; its CIoU has no eps on the heights and adds eps to α's denominator
    instead of clamping it (≤ 1e-6 apart for sides ≥ 1).
    """
    b1, b2 = random_boxes(20, seed=21), random_boxes(15, seed=22)
    b2[:10] = jittered(b1[:10], seed=23, rel=0.1)
    torch.testing.assert_close(bbox_overlaps(b1, b2, mode=mode, eps=eps), reference(b1, b2), atol=atol, rtol=0)


def test_bbox_overlaps_union_and_enclosure_clamped_to_eps():
    """MMDetection: union → max(union, eps), enclosure → max(encl, eps). Tiny equal boxes (area 1e-8): IoU .01."""
    tiny = torch.tensor([[0.0, 0.0, 1e-4, 1e-4]], dtype=F64)
    assert math.isclose(bbox_overlaps(tiny, tiny).item(), 1e-8 / 1e-6, rel_tol=1e-9)
    assert math.isclose(bbox_overlaps(tiny, tiny, eps=1e-12).item(), 1.0, rel_tol=1e-9)
    assert math.isclose(bbox_overlaps(tiny, tiny, mode="iof").item(), 0.01, rel_tol=1e-9)
    # GIoU: encl 1e-8 → 1e-6 and union 1e-8 → 1e-6: the penalty (encl − union)/encl is 0.
    assert math.isclose(bbox_overlaps(tiny, tiny, mode="giou").item(), 0.01, rel_tol=1e-9)
    # A zero-area box: union 0 → eps, IoU 0, not NaN.
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=F64)
    for mode in ("iou", "iof", "giou", "diou", "ciou"):
        assert bbox_overlaps(point, point, mode=mode).item() == 0.0


@pytest.mark.parametrize("mode", ["iou", "iof", "giou", "diou", "ciou"])
@pytest.mark.parametrize("is_aligned", [False, True])
def test_bbox_overlaps_degenerate_boxes_are_finite(mode, is_aligned):
    """Zero width, zero height, x2 < x1 / y2 < y1 and points give finite overlaps (IoU 0 where area ≤ 0)."""
    boxes = torch.tensor(
        [
            [5.0, 5.0, 5.0, 9.0],
            [5.0, 5.0, 9.0, 5.0],
            [9.0, 9.0, 5.0, 5.0],
            [9.0, 5.0, 5.0, 9.0],
            [3.0, 3.0, 3.0, 3.0],
            [0.0, 0.0, 0.0, 0.0],
            [4.0, 4.0, 8.0, 8.0],
        ]
    )
    out = bbox_overlaps(boxes, boxes.flip(0) if is_aligned else boxes, mode=mode, is_aligned=is_aligned)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["iou", "iof", "giou", "diou", "ciou"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bbox_overlaps_half_precision_is_computed_in_float32(mode, dtype):
    """Half boxes up to 1000 px (areas ≫ fp16 max 65504) are upcast: result float32, equal to the float32 result."""
    b1, b2 = random_boxes(10, seed=31, scale=1000.0), random_boxes(12, seed=32, scale=1000.0)
    b1, b2 = b1.to(dtype), b2.to(dtype)
    out = bbox_overlaps(b1, b2, mode=mode)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, bbox_overlaps(b1.float(), b2.float(), mode=mode), atol=0, rtol=0)


def test_bbox_overlaps_integer_boxes_are_computed_in_float():
    """Integer boxes give the float result (float32)."""
    b = torch.tensor([A, B, C])
    out = bbox_overlaps(b.long(), b.long(), mode="giou")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, bbox_overlaps(b, b, mode="giou"))


@pytest.mark.parametrize("is_aligned", [False, True])
def test_bbox_overlaps_empty(is_aligned):
    """MMDetection: rows·cols = 0 → an empty (rows, cols) or (rows,) result."""
    assert bbox_overlaps(torch.zeros(0, 4), torch.zeros(0 if is_aligned else 5, 4), is_aligned=is_aligned).shape == (
        (0,) if is_aligned else (0, 5)
    )
    assert bbox_overlaps(torch.zeros(3, 4), torch.zeros(0, 4)).shape == (3, 0)


def test_bbox_overlaps_input_checks():
    """Boundary checks: unknown mode, boxes not (..., 4), aligned boxes of different counts → ValueError."""
    with pytest.raises(ValueError, match="mode"):
        bbox_overlaps(torch.zeros(2, 4), torch.zeros(2, 4), mode="dice")
    with pytest.raises(ValueError, match=r"boxes1.*\(2, 5\)"):
        bbox_overlaps(torch.zeros(2, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"boxes2.*\(2, 3\)"):
        bbox_overlaps(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(3, 4\)"):
        bbox_overlaps(torch.zeros(2, 4), torch.zeros(3, 4), is_aligned=True)


# --------------------------------------------------------------------------------------------------
# IoU-family losses
# --------------------------------------------------------------------------------------------------
def _iou_linear(p, t, **kw):
    return iou_loss(p, t, mode="linear", **kw)


def _iou_square(p, t, **kw):
    return iou_loss(p, t, mode="square", **kw)


def _iou_log(p, t, **kw):
    return iou_loss(p, t, mode="log", **kw)


LOSSES = {
    "iou_linear": (_iou_linear, lambda p, t, eps: mmdet_iou_loss(p, t, "linear", eps)),
    "iou_square": (_iou_square, lambda p, t, eps: mmdet_iou_loss(p, t, "square", eps)),
    "iou_log": (_iou_log, lambda p, t, eps: mmdet_iou_loss(p, t, "log", eps)),
    "giou": (giou_loss, mmdet_giou_loss),
    "diou": (diou_loss, mmdet_diou_loss),
    "ciou": (ciou_loss, mmdet_ciou_loss),
}


@pytest.mark.parametrize(
    ("mode", "expected"), [("linear", 0.5), ("square", 0.75), ("log", math.log(2))], ids=["linear", "square", "log"]
)
def test_iou_loss_hand_worked(mode, expected):
    """UnitBox modes at IoU = 1/2 ([0,0,2,2] vs [0,0,2,1]): 1 − u, 1 − u², −ln u."""
    out = iou_loss(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, 2.0, 1.0]]), mode=mode)
    assert math.isclose(out.item(), expected, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("linear", [0.8, 0.8]), ("square", [0.96, 0.96]), ("log", [-math.log(0.2)] * 2)],
)
def test_iou_loss_clamps_iou_to_eps_before_every_mode(mode, expected):
    """MMDetection: ious.clamp(min=eps) first. IoU 0 (disjoint) and 1/7 (< eps = .2) both score as IoU .2."""
    pred = torch.tensor([A, A], dtype=F64)
    target = torch.tensor([C, B], dtype=F64)
    out = iou_loss(pred, target, mode=mode, eps=0.2, reduction="none")
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64))


def test_iou_loss_union_eps_is_fixed_at_1e6_not_the_loss_eps():
    """MMDetection: iou_loss calls bbox_overlaps with its default eps 1e-6; the loss eps only clamps the IoU.

    Equal tiny boxes (area 1e-8) have IoU 1e-8/1e-6 = .01 → linear loss .99 with eps=1e-16 (YOLOX's setting).
    """
    tiny = torch.tensor([[0.0, 0.0, 1e-4, 1e-4]], dtype=F64)
    assert math.isclose(iou_loss(tiny, tiny, mode="linear", eps=1e-16).item(), 0.99, rel_tol=1e-9)


def test_giou_loss_hands_its_eps_to_the_overlaps():
    """MMDetection: giou_loss passes its eps to bbox_overlaps (union and enclosure clamp)."""
    tiny = torch.tensor([[0.0, 0.0, 1e-4, 1e-4]], dtype=F64)
    assert math.isclose(giou_loss(tiny, tiny, eps=1e-6).item(), 0.99, rel_tol=1e-9)
    assert abs(giou_loss(tiny, tiny, eps=1e-12).item()) < 1e-9


@pytest.mark.parametrize(
    ("loss_fn", "pred", "target", "expected"),
    [
        (giou_loss, A, C, 1 + 1 / 3),
        (giou_loss, A, B, 1 - (1 / 7 - 2 / 9)),
        (diou_loss, A, C, 1 + 16 / 40),
        (diou_loss, A, B, 1 - 1 / 7 + 2 / 18),
        (ciou_loss, A, C, 1 + 16 / 40),  # IoU 0 ≤ .5: α gated off, CIoU = DIoU
        (
            ciou_loss,
            [0.0, 0.0, 2.0, 4.0],
            [0.0, 0.0, 2.0, 3.0],
            1
            - (
                0.75
                - 0.25 / 20
                - (4 / math.pi**2 * (math.atan(2 / 3) - math.atan(2 / 4)) ** 2) ** 2
                / (0.25 + 4 / math.pi**2 * (math.atan(2 / 3) - math.atan(2 / 4)) ** 2)
            ),
        ),
    ],
    ids=["giou_disjoint", "giou_overlap", "diou_disjoint", "diou_overlap", "ciou_gated", "ciou_aspect"],
)
def test_box_losses_hand_worked(loss_fn, pred, target, expected):
    """Closed forms: 1 − GIoU, 1 − IoU + ρ²/c², 1 − (IoU − ρ²/c² − αv) with α = v/(1 − IoU + v) when IoU > .5."""
    out = loss_fn(torch.tensor([pred], dtype=F64), torch.tensor([target], dtype=F64))
    assert math.isclose(out.item(), expected, rel_tol=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("eps", [1e-6, 1e-3])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_losses_elementwise_match_mmdet(name, eps, dtype):
    """MMDetection 3.x element-wise losses (literal reference above) on mixed and degenerate pairs."""
    ours, ref = LOSSES[name]
    pred, target = loss_pairs(16, seed=41, dtype=dtype)
    out = ours(pred, target, eps=eps, reduction="none")
    expected = ref(pred, target, eps)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize(
    ("reduction", "avg_factor"),
    [("none", None), ("mean", None), ("sum", None), ("mean", 7.0), ("mean", torch.tensor(2.5)), ("none", 3.0)],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_losses_weight_reduction_match_mmdet(name, reduction, avg_factor, weighted):
    """MMDetection weighted_loss wrapper: element loss × weight (N,), reduced, avg_factor → Σ/(avg + eps32)."""
    ours, ref = LOSSES[name]
    pred, target = loss_pairs(10, seed=43, dtype=F64)
    weight = torch.rand(pred.shape[0], dtype=F64) if weighted else None
    out = ours(pred, target, weight=weight, reduction=reduction, avg_factor=avg_factor)
    expected = mmdet_weight_reduce_loss(ref(pred, target, 1e-6), weight, reduction, avg_factor)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_giou_loss_matches_torchvision(reduction):
    """torchvision generalized_box_iou_loss on well-formed boxes; it adds eps=1e-7 where we clamp (equal here)."""
    target = random_boxes(30, seed=51)
    pred = torch.cat([jittered(target[:20], seed=52, rel=0.3), random_boxes(10, seed=53)])
    out = giou_loss(pred, target, eps=1e-7, reduction=reduction)
    torch.testing.assert_close(out, tvo.generalized_box_iou_loss(pred, target, reduction=reduction))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_diou_loss_matches_torchvision(reduction):
    """torchvision distance_box_iou_loss (eps 1e-7 on union and c²) vs ours (eps 1e-6): equal to ~1e-6 for sides ≥ 1."""
    target = random_boxes(30, seed=54)
    pred = torch.cat([jittered(target[:20], seed=55, rel=0.3), random_boxes(10, seed=56)])
    out = diou_loss(pred, target, reduction=reduction)
    ref = tvo.distance_box_iou_loss(pred, target, reduction=reduction)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(diou_loss(pred, target, eps=1e-7, reduction=reduction), ref)


def test_ciou_loss_matches_torchvision_where_alpha_is_on():
    """torchvision complete_box_iou_loss, restricted to pairs with IoU > .5 (where MMDetection's α gate is open).

    Differences: torchvision never gates α, adds eps to α's denominator, puts no eps on the heights and does not
    clamp the CIoU to [−1, 1]; for IoU > .5 and sides ≥ 1 these change the loss by < 1e-5.
    """
    target = random_boxes(40, seed=61)
    pred = jittered(target, seed=62, rel=0.08)
    keep = bbox_overlaps(pred, target, is_aligned=True) > 0.55
    pred, target = pred[keep], target[keep]
    assert pred.shape[0] >= 20
    out = ciou_loss(pred, target, reduction="none")
    torch.testing.assert_close(out, tvo.complete_box_iou_loss(pred, target), atol=1e-5, rtol=1e-5)


def test_ciou_loss_is_diou_below_the_gate_unlike_torchvision():
    """MMDetection gates α on IoU > .5: below it CIoU = DIoU, while torchvision still adds αv > 0."""
    target = random_boxes(40, seed=63)
    pred = jittered(target, seed=64, rel=0.6)
    keep = bbox_overlaps(pred, target, is_aligned=True) <= 0.5
    pred, target = pred[keep], target[keep]
    torch.testing.assert_close(ciou_loss(pred, target, reduction="none"), diou_loss(pred, target, reduction="none"))
    tv = tvo.complete_box_iou_loss(pred, target)
    assert (tv > tvo.distance_box_iou_loss(pred, target) + 1e-6).any()


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_losses_empty_input_is_zero_with_graph(name, reduction):
    """N = 0 → 0 (not NaN, as a plain mean would give) that still backpropagates."""
    ours, _ = LOSSES[name]
    pred = torch.zeros(0, 4, requires_grad=True)
    out = ours(pred, torch.zeros(0, 4), reduction=reduction)
    assert out.shape == ()
    assert out.item() == 0.0
    out.backward()
    assert pred.grad is not None
    assert ours(pred, torch.zeros(0, 4), reduction="none").shape == (0,)


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_input_checks(name):
    """Boundary checks: shape mismatch names both shapes; boxes not (..., 4) are a ValueError."""
    ours, _ = LOSSES[name]
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)"):
        ours(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"pred.*\(3, 5\)"):
        ours(torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"target.*\(3, 2\)"):
        ours(torch.zeros(3, 4), torch.zeros(3, 2))


def test_iou_loss_invalid_mode_raises():
    """mode ∈ {linear, square, log}."""
    with pytest.raises(ValueError, match="mode"):
        iou_loss(torch.zeros(1, 4), torch.zeros(1, 4), mode="exp")


@pytest.mark.parametrize("name", list(LOSSES))
def test_perfect_prediction_is_zero(name):
    """pred = target → loss ≈ 0 (log: −log(1) = 0 up to eps) with finite gradients, on ordinary pixel boxes."""
    ours, _ = LOSSES[name]
    target = random_boxes(16, seed=71)
    pred = target.clone().requires_grad_(True)
    out = ours(pred, target, reduction="none")
    torch.testing.assert_close(out, torch.zeros(16), atol=1e-5, rtol=0)
    out.sum().backward()
    assert torch.isfinite(pred.grad).all()


def test_ciou_loss_is_finite_when_float32_iou_rounds_to_one():
    """Reference bug, do the right thing (DESIGN.md): MMDetection's α = v/(1 − IoU + v) is 0/0 = NaN for pred = target.

    In float32, IoU = A/(A + 1e-6) is exactly 1 for boxes of area ≥ 32 px², so the literal reference returns NaN
    (and NaN gradients); bbox_overlaps(mode="ciou") already guards that denominator with clamp(min=eps).
    """
    box = torch.tensor([[10.0, 20.0, 30.0, 50.0]])
    assert mmdet_ciou_loss(box, box, eps=1e-6).isnan().all()
    pred = box.clone().requires_grad_(True)
    out = ciou_loss(pred, box)
    assert torch.isfinite(out)
    assert abs(out.item()) < 1e-6
    out.backward()
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("name", ["iou_linear", "iou_square", "iou_log", "giou", "diou"])
def test_gradcheck_float64(name):
    """torch.autograd.gradcheck on overlapping boxes with distinct corners (away from max/min/clamp kinks)."""
    ours, _ = LOSSES[name]
    target = random_boxes(6, seed=81, dtype=F64)
    pred = jittered(target, seed=82, rel=0.15)
    weight = torch.rand(6, dtype=F64)
    assert torch.autograd.gradcheck(
        lambda p, t: ours(p, t, weight=weight, avg_factor=3.0),
        (pred.requires_grad_(True), target.requires_grad_(True)),
    )


def test_ciou_gradcheck_below_gate_and_alpha_detached_above():
    """CIoU: gradcheck where α is gated off (IoU ≤ .5); above the gate the gradient treats α as a constant.

    MMDetection computes α under no_grad, so finite differences (which see α move) differ from autograd there;
    the reference is the gradient of the literal MMDetection ciou_loss.
    """
    target = random_boxes(30, seed=83, dtype=F64)
    pred = jittered(target, seed=84, rel=0.3)
    iou = bbox_overlaps(pred, target, is_aligned=True)
    low = (iou > 0.05) & (iou < 0.45)
    assert int(low.sum()) >= 4
    assert torch.autograd.gradcheck(
        ciou_loss, (pred[low].clone().requires_grad_(True), target[low].clone().requires_grad_(True))
    )
    target = random_boxes(12, seed=85, dtype=F64)
    target[:, 3] = target[:, 1] + (target[:, 3] - target[:, 1]) * 0.6  # aspect ratios differ: v > 0
    pred = jittered(target, seed=86, rel=0.05).requires_grad_(True)
    assert (bbox_overlaps(pred, target, is_aligned=True) > 0.5).all()
    (g_ours,) = torch.autograd.grad(ciou_loss(pred, target, reduction="sum"), pred)
    (g_ref,) = torch.autograd.grad(mmdet_ciou_loss(pred, target, eps=1e-6).sum(), pred)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_low_precision_is_finite_and_float32(name, dtype):
    """CPU autocast: half boxes from a Linear head (up to ~1000 px) give a finite float32 loss and finite grads."""
    ours, _ = LOSSES[name]
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(32, 8)
    target = random_boxes(32, seed=91, scale=1000.0)
    with torch.autocast("cpu", dtype=dtype):
        raw = layer(x)
        assert raw.dtype == dtype
        pred = target.to(dtype) + raw * 20
        loss = ours(pred, target.to(dtype), weight=torch.rand(32), avg_factor=4.0)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()

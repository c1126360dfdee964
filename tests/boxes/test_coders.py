"""Box coders: hand-worked deltas, MMDetection DeltaXYWHBBoxCoder decode clamps, distance round trips, GFL integral."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses.boxes import DeltaXYWHCoder, bbox2distance, distance2bbox, integral

MAX_RATIO = abs(math.log(16 / 1000))  # 4.135166556742356, MMDetection's wh_ratio_clip bound


def random_boxes(n: int, generator: torch.Generator, low: float = 2.0, high: float = 80.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 200
    wh = low + torch.rand(n, 2, generator=generator) * (high - low)
    return torch.cat([xy, xy + wh], dim=1)


# --------------------------------------------------------------------------------------------------
# DeltaXYWHCoder
# --------------------------------------------------------------------------------------------------
def test_encode_hand_worked_deltas() -> None:
    """Hand-worked: anchor [0,0,10,10] → gt [5,0,15,20] is (0.5, 0.5, log 1, log 2), then (d - means) / stds."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 20.0, 30.0, 30.0]])
    gts = torch.tensor([[5.0, 0.0, 15.0, 20.0], [0.0, 20.0, 20.0, 40.0]])
    # second pair: anchor c=(20,25) w=20 h=10; gt c=(10,30) w=20 h=20 → (-0.5, 0.5, 0, log 2)
    expected = torch.tensor([[0.5, 0.5, 0.0, math.log(2)], [-0.5, 0.5, 0.0, math.log(2)]])
    torch.testing.assert_close(DeltaXYWHCoder().encode(anchors, gts), expected)

    coder = DeltaXYWHCoder(means=(0.1, -0.1, 0.0, 0.5), stds=(0.1, 0.1, 0.2, 0.2))
    normalised = (expected - torch.tensor([0.1, -0.1, 0.0, 0.5])) / torch.tensor([0.1, 0.1, 0.2, 0.2])
    torch.testing.assert_close(coder.encode(anchors, gts), normalised)


@pytest.mark.parametrize(
    ("means", "stds"), [((0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0)), ((0.1, -0.2, 0.3, 0.0), (0.1, 0.1, 0.2, 0.2))]
)
def test_decode_inverts_encode(means: tuple[float, ...], stds: tuple[float, ...]) -> None:
    """Closed form: decode(a, encode(a, g)) == g whenever |log(g_wh / a_wh)| stays below the clamp."""
    g = torch.Generator().manual_seed(0)
    anchors, gts = random_boxes(500, g), random_boxes(500, g)
    coder = DeltaXYWHCoder(means=means, stds=stds)
    deltas = coder.encode(anchors, gts)
    raw_log_ratio = deltas[:, 2:] * torch.tensor(stds[2:]) + torch.tensor(means[2:])
    assert raw_log_ratio.abs().max() < MAX_RATIO
    torch.testing.assert_close(coder.decode(anchors, deltas), gts, rtol=1e-5, atol=1e-4)


def test_decode_hand_worked() -> None:
    """Hand-worked: anchor [0,0,10,10] with deltas (0.5, -1, log 2, 0) and stds (0.1, 0.1, 0.2, 0.2)."""
    coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
    raw = torch.tensor([[0.5, -1.0, math.log(2), 0.0]])
    deltas = raw / torch.tensor([0.1, 0.1, 0.2, 0.2])
    # center (5 + 5, 5 - 10) = (10, -5), size (20, 10)
    torch.testing.assert_close(
        coder.decode(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), deltas), torch.tensor([[0.0, -10.0, 20.0, 0.0]])
    )


def test_decode_clamps_log_size_at_wh_ratio_clip() -> None:
    """Closed form: dw, dh clamp to ±|log(16/1000)|: sizes 10·62.5 = 625 and 10·0.016 = 0.16; huge deltas are finite."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.0, 0.0, 1e30, -1e30], [0.0, 0.0, 50.0, -50.0]])
    boxes = DeltaXYWHCoder().decode(anchors, deltas)
    assert torch.isfinite(boxes).all()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    torch.testing.assert_close(w, torch.full((2,), 625.0), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(h, torch.full((2,), 0.16), rtol=1e-5, atol=1e-6)
    # centers untouched
    torch.testing.assert_close((boxes[:, :2] + boxes[:, 2:]) / 2, torch.full((2, 2), 5.0))


def test_decode_add_ctr_clamp_bounds_shift_and_only_upper_size() -> None:
    """MMDetection add_ctr_clamp: center shift clamped to ±ctr_clamp px, dw/dh clamped above only (exp → 0 below)."""
    coder = DeltaXYWHCoder(add_ctr_clamp=True, ctr_clamp=32.0)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[100.0, -100.0, 1e30, -1e4]])  # shift 1000 px → 32 px; dh = -1e4 → height exp(-1e4)·10 = 0
    boxes = coder.decode(anchors, deltas)
    assert torch.isfinite(boxes).all()
    cx, cy = (boxes[0, 0] + boxes[0, 2]) / 2, (boxes[0, 1] + boxes[0, 3]) / 2
    torch.testing.assert_close(torch.stack([cx, cy]), torch.tensor([5.0 + 32.0, 5.0 - 32.0]))
    torch.testing.assert_close(boxes[0, 2] - boxes[0, 0], torch.tensor(625.0), rtol=1e-5, atol=1e-3)
    assert boxes[0, 3] - boxes[0, 1] == 0.0
    # without add_ctr_clamp the same shift is not clamped and the height floors at 0.16 (float32 around y = -995)
    plain = DeltaXYWHCoder().decode(anchors, deltas)
    torch.testing.assert_close((plain[0, 0] + plain[0, 2]) / 2, torch.tensor(5.0 + 1000.0))
    torch.testing.assert_close(plain[0, 3] - plain[0, 1], torch.tensor(0.16), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_half_deltas_keep_float32_anchor_precision(dtype: torch.dtype) -> None:
    """MMDetection delta2bbox: float32 rois with half deltas decode in float32, so zero deltas return the anchor.

    (ATSSCriterion decodes the head's bbox_preds, which are half under AMP, with float32 anchors.)
    """
    anchors = torch.tensor([[1000.3, 600.1, 1064.3, 664.1], [-32.7, 17.3, 31.3, 81.3]])
    decoded = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2)).decode(anchors, torch.zeros(2, 4, dtype=dtype))
    torch.testing.assert_close(decoded.float(), anchors, rtol=0, atol=1e-3)


def test_coder_rejects_wrong_number_of_means() -> None:
    """Boundary check: means/stds need four values."""
    with pytest.raises(ValueError, match="means"):
        DeltaXYWHCoder(means=(0.0, 0.0))


# --------------------------------------------------------------------------------------------------
# distance2bbox / bbox2distance
# --------------------------------------------------------------------------------------------------
def test_distance2bbox_hand_worked() -> None:
    """Hand-worked: point (5, 5), (l, t, r, b) = (1, 2, 3, 4) → [4, 3, 8, 9]."""
    out = distance2bbox(
        torch.tensor([[5.0, 5.0], [0.0, 0.0]]), torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    )
    torch.testing.assert_close(out, torch.tensor([[4.0, 3.0, 8.0, 9.0], [0.0, 0.0, 0.0, 0.0]]))


def test_distance_round_trip() -> None:
    """Closed form: distance2bbox(p, bbox2distance(p, b)) == b and bbox2distance(p, distance2bbox(p, d)) == d."""
    g = torch.Generator().manual_seed(1)
    boxes = random_boxes(300, g)
    points = boxes[:, :2] + torch.rand(300, 2, generator=g) * (boxes[:, 2:] - boxes[:, :2])
    torch.testing.assert_close(distance2bbox(points, bbox2distance(points, boxes)), boxes)
    dist = torch.rand(300, 4, generator=g) * 50
    torch.testing.assert_close(bbox2distance(points, distance2bbox(points, dist)), dist, rtol=1e-5, atol=1e-4)


def test_bbox2distance_clamps_to_max_dis_minus_eps() -> None:
    """Hand-worked: with max_dis=16, eps=0.1 distances clamp to [0, 15.9]; without max_dis they are raw."""
    points = torch.tensor([[5.0, 5.0]])
    boxes = torch.tensor([[7.0, 3.0, 30.0, 9.0]])  # l=-2 (point left of box), t=2, r=25, b=4
    torch.testing.assert_close(bbox2distance(points, boxes), torch.tensor([[-2.0, 2.0, 25.0, 4.0]]))
    torch.testing.assert_close(bbox2distance(points, boxes, max_dis=16), torch.tensor([[0.0, 2.0, 15.9, 4.0]]))
    torch.testing.assert_close(
        bbox2distance(points, boxes, max_dis=16, eps=0.01), torch.tensor([[0.0, 2.0, 15.99, 4.0]])
    )


# --------------------------------------------------------------------------------------------------
# integral
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reg_max", [16, 7])
def test_integral_uniform_logits_give_half_reg_max(reg_max: int) -> None:
    """Closed form: uniform softmax over 0..n has mean n / 2."""
    out = integral(torch.full((3, 4 * (reg_max + 1)), 0.3), reg_max)
    torch.testing.assert_close(out, torch.full((3, 4), reg_max / 2))


def test_integral_peaked_logits_pick_their_bin_side_major() -> None:
    """Hand-worked: a +50 logit at bin j of side k gives distance j (layout: all bins of l, then t, r, b)."""
    reg_max = 16
    bins = [3, 7, 0, 16]
    logits = torch.zeros(2, 4 * (reg_max + 1))
    for side, j in enumerate(bins):
        logits[0, side * (reg_max + 1) + j] = 50.0
        logits[1, side * (reg_max + 1) + (reg_max - j)] = 50.0
    expected = torch.tensor([bins, [reg_max - j for j in bins]], dtype=torch.float32)
    torch.testing.assert_close(integral(logits, reg_max), expected, rtol=0, atol=1e-4)


def test_integral_matches_explicit_softmax_expectation() -> None:
    """Unfused formula: sum_i i · softmax(x)_i per side, on random logits with leading batch dims."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 4 * 17, generator=g) * 3
    prob = torch.softmax(logits.reshape(2, 5, 4, 17), dim=-1)
    expected = (prob * torch.arange(17, dtype=torch.float32)).sum(-1)
    torch.testing.assert_close(integral(logits, 16), expected)


def test_distance_coder_per_point_stride_round_trip_and_hand_worked():
    """Distances in stride units: bbox2distance divides by each point's stride, distance2bbox multiplies back."""
    points = torch.tensor([[4.0, 4.0], [24.0, 8.0]])
    boxes = torch.tensor([[0.0, 2.0, 12.0, 10.0], [8.0, 0.0, 40.0, 40.0]])
    stride = torch.tensor([8.0, 16.0])
    distances = bbox2distance(points, boxes, stride=stride)
    torch.testing.assert_close(distances, torch.tensor([[0.5, 0.25, 1.0, 0.75], [1.0, 0.5, 1.0, 2.0]]))
    torch.testing.assert_close(distance2bbox(points, distances, stride=stride), boxes)
    clamped = bbox2distance(points, boxes, max_dis=1, eps=0.1, stride=stride)  # clamp after the division
    torch.testing.assert_close(clamped, torch.tensor([[0.5, 0.25, 0.9, 0.75], [0.9, 0.5, 0.9, 0.9]]))

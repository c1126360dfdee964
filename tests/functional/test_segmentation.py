"""Segmentation functionals against hand-worked masks and a literal sort-based OHEM reference (PIDNet's
``OhemCrossEntropy._ohem_forward`` as described in PIDNet's OHEM loss in NetsPresso Trainer 1.4.1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses.functional.segmentation import balanced_boundary_bce, boundary_from_mask, ohem_cross_entropy


# --------------------------------------------------------------------------------------------------
# Independent reference: sort-based OHEM, pixel by pixel.
# --------------------------------------------------------------------------------------------------
def reference_ohem(score, target, thres, min_kept, ignore_index, class_weight=None):
    """Rank the valid pixels by p_y ascending; threshold = max(p_sorted[min(m, n - 1)], thres); keep p_y < threshold;
    return the plain mean of w_y · (-log p_y) over the kept pixels (NaN when nothing is kept)."""
    min_kept = max(1, min_kept)
    log_prob = F.log_softmax(score.double(), dim=1)
    pixels = []  # (p_y, loss)
    batch, _, height, width = score.shape
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                y = int(target[b, i, j])
                if y == ignore_index:
                    continue
                w = 1.0 if class_weight is None else float(class_weight[y])
                pixels.append((math.exp(float(log_prob[b, y, i, j])), -w * float(log_prob[b, y, i, j])))
    if not pixels:
        return float("nan")
    pixels.sort(key=lambda pair: pair[0])
    threshold = max(pixels[min(min_kept, len(pixels) - 1)][0], thres)
    kept = [loss for p, loss in pixels if p < threshold]
    return sum(kept) / len(kept) if kept else float("nan")


def logits_for_probs(probs: list[float]) -> torch.Tensor:
    """(1, 2, 1, n) logits whose class-0 probability is each of ``probs`` (log-odds in class 0, 0 in class 1)."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([torch.log(p / (1 - p)), torch.zeros_like(p)]).float()[None, :, None, :]


# --------------------------------------------------------------------------------------------------
# OHEM
# --------------------------------------------------------------------------------------------------
def test_ohem_keeps_every_pixel_below_thres():
    """Hand-worked: p_y = .2, .5, .95, .99 and min_kept 1 -> threshold .9, keeps .2 and .5: mean -log(.2·.5)/2."""
    pred = logits_for_probs([0.2, 0.95, 0.5, 0.99])
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    got = ohem_cross_entropy(pred, target, thres=0.9, min_kept=1)
    torch.testing.assert_close(got, torch.tensor(-(math.log(0.2) + math.log(0.5)) / 2), rtol=1e-5, atol=1e-6)


def test_ohem_raises_threshold_when_fewer_than_min_kept_are_hard():
    """Hand-worked: only .2 is below .9 but min_kept 3 -> threshold p_sorted[3] = .97, keeps .2, .93, .95."""
    pred = logits_for_probs([0.95, 0.2, 0.99, 0.97, 0.93])
    target = torch.zeros(1, 1, 5, dtype=torch.long)
    got = ohem_cross_entropy(pred, target, thres=0.9, min_kept=3)
    want = -(math.log(0.2) + math.log(0.93) + math.log(0.95)) / 3
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=1e-6)


def test_ohem_threshold_is_strict():
    """Hand-worked: the pixel at rank min_kept (and its tie) sits at the threshold and is dropped (p < τ)."""
    pred = logits_for_probs([0.2, 0.97, 0.3, 0.97, 0.99, 0.95])
    target = torch.zeros(1, 1, 6, dtype=torch.long)
    got = ohem_cross_entropy(pred, target, thres=0.9, min_kept=3)  # sorted .2 .3 .95 .97 .97 .99 -> τ = .97
    want = -(math.log(0.2) + math.log(0.3) + math.log(0.95)) / 3
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=1e-6)


def test_ohem_min_kept_beyond_valid_pixels_uses_the_largest():
    """Hand-worked: min_kept >= n valid -> τ = max(p_max, thres): all but the easiest pixel(s) at p_max are kept."""
    pred = logits_for_probs([0.95, 0.2, 0.99, 0.6])
    target = torch.tensor([[[0, 0, 0, 255]]])
    got = ohem_cross_entropy(pred, target, thres=0.5, min_kept=100)  # valid .95 .2 .99 -> τ = .99
    torch.testing.assert_close(got, torch.tensor(-(math.log(0.95) + math.log(0.2)) / 2), rtol=1e-5, atol=1e-6)


def test_ohem_min_kept_zero_acts_as_one():
    """Hand-worked: min_kept 0 is raised to 1 (as PIDNet does): p_y = .95, .97, .99 all above thres .9 ->
    τ = p_sorted[1] = .97 keeps the .95 pixel (with 0, τ = .95 would keep nothing)."""
    pred = logits_for_probs([0.99, 0.95, 0.97])
    got = ohem_cross_entropy(pred, torch.zeros(1, 1, 3, dtype=torch.long), thres=0.9, min_kept=0)
    torch.testing.assert_close(got, torch.tensor(-math.log(0.95)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("thres", "min_kept"), [(0.9, 1), (0.7, 20), (0.9, 200), (0.5, 0), (0.99, 63)])
def test_ohem_equals_sort_reference(seed, thres, min_kept):
    """Reference: reference_ohem (sort the valid pixels by p_y, threshold at rank min_kept, strict <)."""
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(2, 4, 6, 7, generator=generator) * 3
    target = torch.randint(0, 4, (2, 6, 7), generator=generator)
    target[torch.rand(2, 6, 7, generator=generator) < 0.2] = 255
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5]) if seed % 2 else None
    got = ohem_cross_entropy(pred, target, thres, min_kept, 255, weight)
    want = reference_ohem(pred, target, thres, min_kept, 255, weight)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=1e-5, atol=1e-6)


def test_ohem_gradient_flows_only_through_kept_pixels():
    """Hand-worked: the easy pixel (p = .99) is not kept, so its logits get no gradient."""
    pred = logits_for_probs([0.2, 0.99, 0.5]).requires_grad_(True)
    ohem_cross_entropy(pred, torch.zeros(1, 1, 3, dtype=torch.long), thres=0.9, min_kept=1).backward()
    assert (pred.grad[..., 1] == 0).all()
    assert (pred.grad[..., 0] != 0).all()
    assert (pred.grad[..., 2] != 0).all()


def test_ohem_all_ignored_is_zero_with_graph():
    """Reference: NetsPresso 1.4.1's PIDNet OHEM is NaN (or fails) when every pixel is ignored; here 0, with a graph."""
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    got = ohem_cross_entropy(pred, torch.full((1, 2, 2), 255), ignore_index=255)
    assert got == 0
    assert got.requires_grad
    got.backward()
    assert (pred.grad == 0).all()


def test_ohem_input_checks():
    """Errors at the boundary: target shape, float target, negative min_kept."""
    pred = torch.randn(1, 3, 2, 2)
    with pytest.raises(ValueError, match="target"):
        ohem_cross_entropy(pred, torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        ohem_cross_entropy(pred, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="min_kept"):
        ohem_cross_entropy(pred, torch.zeros(1, 2, 2, dtype=torch.long), min_kept=-1)


# --------------------------------------------------------------------------------------------------
# Balanced boundary BCE
# --------------------------------------------------------------------------------------------------
def test_balanced_boundary_bce_by_hand():
    """Hand-worked: targets 1, 0, 0, 255 with logits 2, -1, 0, 5: P = 1, N = 2, w+ = 2/3, w- = 1/3, w(255) = 0;
    the mean runs over all 4 elements."""
    pred = torch.tensor([2.0, -1.0, 0.0, 5.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 255.0]).reshape(1, 2, 2)

    def softplus(x):
        return math.log1p(math.exp(x))

    want = (2 / 3 * softplus(-2.0) + 1 / 3 * softplus(-1.0) + 1 / 3 * softplus(0.0)) / 4
    torch.testing.assert_close(balanced_boundary_bce(pred, target), torch.tensor(want))


def test_balanced_boundary_bce_equals_pidnet_weighted_bce():
    """Reference: PIDNet weighted_bce: NHWC-flattened logits, weights N/(P+N) and P/(P+N), mean over all."""
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 1, 5, 6, generator=generator)
    target = (torch.rand(2, 5, 6, generator=generator) < 0.3).float()
    flat_pred = pred.permute(0, 2, 3, 1).reshape(1, -1)
    flat_target = target.reshape(1, -1)
    pos, neg = flat_target == 1, flat_target == 0
    weight = torch.zeros_like(flat_pred)
    weight[pos] = neg.sum() / (pos.sum() + neg.sum())
    weight[neg] = pos.sum() / (pos.sum() + neg.sum())
    want = F.binary_cross_entropy_with_logits(flat_pred, flat_target, weight, reduction="mean")
    torch.testing.assert_close(balanced_boundary_bce(pred, target), want)
    torch.testing.assert_close(balanced_boundary_bce(pred, target.long()), want)


def test_balanced_boundary_bce_without_positives_is_zero():
    """Reference: NetsPresso's pidnet_loss (0/255 edges): no target equals 1 -> every weight is 0 -> loss 0."""
    pred = torch.randn(1, 1, 3, 3, requires_grad=True)
    got = balanced_boundary_bce(pred, torch.tensor([0.0, 255.0]).repeat(5)[:9].reshape(1, 3, 3))
    assert got == 0
    assert got.requires_grad


def test_balanced_boundary_bce_shape_check():
    """Errors at the boundary: pred and target shapes must match (pred may carry a channel of 1)."""
    with pytest.raises(ValueError, match="must match"):
        balanced_boundary_bce(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3))


# --------------------------------------------------------------------------------------------------
# Boundaries from a mask
# --------------------------------------------------------------------------------------------------
def test_boundary_from_two_region_mask():
    """Hand-worked: left half class 0, right half class 1 (6 x 6), 3 x 3 neighbourhood: columns 2 and 3 are
    boundary; with a 5 x 5 neighbourhood columns 1 to 4."""
    mask = torch.zeros(1, 6, 6, dtype=torch.long)
    mask[:, :, 3:] = 1
    want = torch.zeros(1, 6, 6)
    want[:, :, 2:4] = 1
    assert torch.equal(boundary_from_mask(mask), want)
    want5 = torch.zeros(1, 6, 6)
    want5[:, :, 1:5] = 1
    assert torch.equal(boundary_from_mask(mask, kernel_size=5), want5)


def test_boundary_from_mask_ignores_ignored_pixels():
    """Hand-worked: an ignored band between two classes is neither boundary nor makes its neighbours boundary."""
    mask = torch.tensor([[[0, 0, 255, 1, 1], [0, 0, 255, 1, 1]]])
    assert torch.equal(boundary_from_mask(mask, ignore_index=255), torch.zeros(1, 2, 5))
    low = torch.tensor([[[0, 0, -100, 0, 0]]])  # an ignore index below every class is not a neighbour either
    assert torch.equal(boundary_from_mask(low, ignore_index=-100), torch.zeros(1, 1, 5))
    mask[0, 0, 2] = 2  # a valid pixel of class 2 inside the band: it and its valid neighbours become boundary
    want = torch.tensor([[[0, 1, 1, 1, 0], [0, 1, 0, 1, 0]]]).float()
    assert torch.equal(boundary_from_mask(mask, ignore_index=255), want)


def test_boundary_from_mask_single_class_has_no_boundary():
    """Hand-worked: one class everywhere (and an all-ignored image) -> no boundary."""
    assert boundary_from_mask(torch.full((2, 4, 4), 3)).sum() == 0
    assert boundary_from_mask(torch.full((1, 4, 4), 255)).sum() == 0


def test_boundary_from_mask_checks():
    """Errors at the boundary: (B, H, W) mask and a positive odd kernel."""
    with pytest.raises(ValueError, match="kernel_size"):
        boundary_from_mask(torch.zeros(1, 3, 3, dtype=torch.long), kernel_size=2)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        boundary_from_mask(torch.zeros(3, 3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_counts_and_sums_accumulate_in_float32(dtype):
    """B 2 × 640²: more boundary / kept pixels than fp16 holds (65,504). Reference: the float32 computation."""
    generator = torch.Generator().manual_seed(0)
    boundary = torch.randn(2, 1, 640, 640, generator=generator)
    edges = (torch.rand(2, 640, 640, generator=generator) < 0.1).long()  # ~82k positives
    expected = balanced_boundary_bce(boundary.to(dtype).float(), edges)
    got = balanced_boundary_bce(boundary.to(dtype), edges)
    assert got.dtype == torch.float32
    assert torch.isfinite(got)
    torch.testing.assert_close(got, expected)
    logits = torch.randn(2, 4, 640, 640, generator=generator)
    labels = torch.randint(0, 4, (2, 640, 640), generator=generator)
    got = ohem_cross_entropy(logits.to(dtype), labels, min_kept=10**6)
    expected = ohem_cross_entropy(logits.to(dtype).float(), labels, min_kept=10**6)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=0)

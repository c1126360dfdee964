"""PointAssigner (FCOS): hand-worked scenes and a literal per-image MMDetection 3.x reference (MMDetection 3.x)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses.assigners import PointAssigner
from lightning_losses.boxes import PointGenerator, level_indices, pad_targets
from tests.references.mmdet_assigners import INF, mmdet_fcos_assign


def fcos_points(featmap_sizes, strides) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    per_level = PointGenerator(strides).grid_priors(featmap_sizes)
    counts = [p.shape[0] for p in per_level]
    return torch.cat(per_level), level_indices(counts), counts


def random_targets(counts: list[int], generator: torch.Generator, size: float = 256.0):
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=generator) * (size - 4)
        wh = 4 + torch.rand(n, 2, generator=generator) * (size - 4)
        out.append(
            {
                "boxes": torch.cat([xy, (xy + wh).clamp(max=size)], dim=1),
                "labels": torch.randint(0, 10, (n,), generator=generator),
            }
        )
    return out


def box_target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.long)}


# --------------------------------------------------------------------------------------------------
# Hand-worked scenes
# --------------------------------------------------------------------------------------------------
A = [4.0, 4.0, 20.0, 20.0]  # area 256; level-0 point (12, 12) has max side 8 (= hi of [-1, 8])
B = [0.0, 0.0, 16.0, 16.0]  # area 256; level-1 point (8, 8) has max side 8 (= lo of [8, 1e8])
C = [0.0, 0.0, 14.0, 14.0]  # area 196; level-1 point (8, 8) has max side 8


def test_hand_worked_ranges_inclusive_and_smallest_area_tie_break() -> None:
    """Hand-worked: inclusive range ends, smallest area wins, equal areas go to the first box (by index)."""
    points, levels, _ = fcos_points([(4, 4), (2, 2)], [8, 16])
    assigner = PointAssigner(regress_ranges=[(-1.0, 8.0), (8.0, INF)])
    targets = [
        box_target([A, B], [7, 8]),  # point 16: A and B tie on area → A
        box_target([A, B, C], [7, 8, 9]),  # point 16: C is smallest
        box_target([B], [8]),  # point 16: B at the lower range end
        box_target([B, A], [8, 7]),  # point 16: tie → B (now first)
    ]
    result = assigner.assign(points, levels, [8, 16], pad_targets(targets))
    expected = torch.zeros(4, 20, dtype=torch.long)
    expected[0, 5], expected[0, 16] = 1, 1
    expected[1, 5], expected[1, 16] = 1, 3
    expected[2, 16] = 1
    expected[3, 5], expected[3, 16] = 2, 1
    torch.testing.assert_close(result.gt_inds, expected, rtol=0, atol=0)
    expected_labels = torch.full((4, 20), -1, dtype=torch.long)
    expected_labels[0, 5], expected_labels[0, 16] = 7, 7
    expected_labels[1, 5], expected_labels[1, 16] = 7, 9
    expected_labels[2, 16] = 8
    expected_labels[3, 5], expected_labels[3, 16] = 7, 8
    torch.testing.assert_close(result.labels, expected_labels, rtol=0, atol=0)
    assert result.max_overlaps[1, 16].item() == 196.0
    assert result.max_overlaps[0, 5].item() == 256.0
    assert math.isinf(result.max_overlaps[0, 0].item())


def test_hand_worked_strictly_inside() -> None:
    """Hand-worked: points on a box side are not inside; nudging the sides out by 0.1 admits them (range unbounded)."""
    points, levels, _ = fcos_points([(4, 4)], [8])
    assigner = PointAssigner(regress_ranges=[(-1.0, INF)])
    targets = [box_target([A], [0]), box_target([[3.9, 3.9, 20.1, 20.1]], [0])]
    result = assigner.assign(points, levels, [8], pad_targets(targets))
    assert result.positive[0].nonzero().flatten().tolist() == [5]
    assert result.positive[1].nonzero().flatten().tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]


def test_hand_worked_center_sampling_region_clipped_to_box() -> None:
    """Hand-worked: box [0,0,100,20], radius 1.5·8 = 12: region [38,0,62,20] (y clipped): x ∈ {44,52,60}, y ∈ {4,12}."""
    points, levels, _ = fcos_points([(4, 16)], [8])
    gts = pad_targets([box_target([[0.0, 0.0, 100.0, 20.0]], [2])])
    sampled = PointAssigner(regress_ranges=[(-1.0, INF)], center_sampling=True).assign(points, levels, [8], gts)
    assert sampled.positive[0].nonzero().flatten().tolist() == [5, 6, 7, 21, 22, 23]
    whole = PointAssigner(regress_ranges=[(-1.0, INF)]).assign(points, levels, [8], gts)
    assert whole.positive[0].nonzero().flatten().tolist() == list(range(12)) + list(range(16, 28))
    # the range test still uses the whole box's sides: max side at (52, 4) is 52 > 40
    narrow = PointAssigner(regress_ranges=[(-1.0, 40.0)], center_sampling=True).assign(points, levels, [8], gts)
    assert narrow.positive[0].nonzero().flatten().tolist() == []


def test_center_sampling_radius_follows_the_points_level() -> None:
    """Hand-worked: box [0,0,64,64] (center 32), radius 1 stride: level 8 region (24, 40), level 16 region (16, 48)."""
    points, levels, _ = fcos_points([(8, 8), (4, 4)], [8, 16])
    gts = pad_targets([box_target([[0.0, 0.0, 64.0, 64.0]], [1])])
    assigner = PointAssigner(regress_ranges=[(-1.0, INF), (-1.0, INF)], center_sampling=True, center_sample_radius=1.0)
    result = assigner.assign(points, levels, [8, 16], gts)
    # level 0 points at 4 + 8k: only 28, 36 lie in (24, 40); level 1 points at 8 + 16k: 24, 40 lie in (16, 48)
    level0 = [y * 8 + x for y in (3, 4) for x in (3, 4)]
    level1 = [64 + y * 4 + x for y in (1, 2) for x in (1, 2)]
    assert result.positive[0].nonzero().flatten().tolist() == level0 + level1


def test_half_precision_points_keep_large_boxes() -> None:
    """Hand-worked: box [10,10,330,330] (area 102400 > float16 max 65504) gets the same positives from half points.

    Point coordinates are exact in float16; only the area bookkeeping could overflow.
    """
    points, levels, _ = fcos_points([(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)], [8, 16, 32, 64, 128])
    gts = pad_targets([box_target([[10.0, 10.0, 330.0, 330.0]], [1])])
    want = PointAssigner().assign(points, levels, [8, 16, 32, 64, 128], gts)
    assert int(want.positive.sum()) > 0
    got = PointAssigner().assign(points.half(), levels, [8, 16, 32, 64, 128], gts)
    torch.testing.assert_close(got.gt_inds, want.gt_inds, rtol=0, atol=0)


def test_empty_images_are_all_negative() -> None:
    """Hand-worked: images without boxes are all negative with labels -1 (alone or in a mixed batch)."""
    points, levels, _ = fcos_points([(4, 4), (2, 2)], [8, 16])
    empty = box_target([], [])
    assigner = PointAssigner(regress_ranges=[(-1.0, 8.0), (8.0, INF)])
    alone = assigner.assign(points, levels, [8, 16], pad_targets([empty]))
    assert alone.gt_inds.tolist() == [[0] * 20]
    assert alone.labels.tolist() == [[-1] * 20]
    mixed = assigner.assign(points, levels, [8, 16], pad_targets([box_target([A, B], [7, 8]), empty]))
    assert mixed.gt_inds[1].tolist() == [0] * 20
    assert int(mixed.positive[0].sum()) == 2


def test_too_few_regress_ranges() -> None:
    """Boundary check: one range per level."""
    points, levels, _ = fcos_points([(2, 2), (1, 1)], [8, 16])
    with pytest.raises(ValueError, match="regress ranges"):
        PointAssigner(regress_ranges=[(-1.0, INF)]).assign(points, levels, [8, 16], pad_targets([box_target([A], [0])]))


# --------------------------------------------------------------------------------------------------
# Against the literal reference on random scenes
# --------------------------------------------------------------------------------------------------
STRIDES = [8, 16, 32, 64, 128]
SIZES_256 = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]


@pytest.mark.parametrize("center_sampling", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_batched_equals_per_image_reference(center_sampling: bool, seed: int) -> None:
    """Literal per-image MMDetection FCOS targets == one batched call, box counts (6, 0, 17, 1), 1364 points."""
    g = torch.Generator().manual_seed(seed)
    points, levels, counts = fcos_points(SIZES_256, STRIDES)
    targets = random_targets([6, 0, 17, 1], g)
    assigner = PointAssigner(center_sampling=center_sampling)
    result = assigner.assign(points, levels, STRIDES, pad_targets(targets))
    assert int(result.positive.sum()) > 0
    for i, t in enumerate(targets):
        gt_inds, labels = mmdet_fcos_assign(
            points, counts, STRIDES, t["boxes"], t["labels"], center_sampling=center_sampling
        )
        torch.testing.assert_close(result.gt_inds[i], gt_inds, rtol=0, atol=0)
        torch.testing.assert_close(result.labels[i], labels, rtol=0, atol=0)
        positive = gt_inds > 0
        boxes = t["boxes"][gt_inds[positive] - 1]
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        torch.testing.assert_close(result.max_overlaps[i][positive], areas)


@pytest.mark.parametrize("center_sampling", [False, True])
def test_chunking_gives_identical_results(center_sampling: bool) -> None:
    """Invariance: max_elements=1 (one point per chunk) and a 5-point budget equal the unchunked call."""
    g = torch.Generator().manual_seed(2)
    points, levels, _ = fcos_points([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    targets = random_targets([4, 0, 9], g, size=64.0)
    ranges = [(-1.0, 16.0), (16.0, 32.0), (32.0, INF)]
    full = PointAssigner(ranges, center_sampling).assign(points, levels, [8, 16, 32], pad_targets(targets))
    for budget in (1, 3 * 9 * 8 * 5):
        chunked = PointAssigner(ranges, center_sampling, max_elements=budget).assign(
            points, levels, [8, 16, 32], pad_targets(targets)
        )
        for got, want in zip(chunked, full, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_box_containing_no_point_assigns_nothing_and_leaves_the_others() -> None:
    """Hand-worked: a 2-px box between the 8-px grid points holds no point strictly inside, so it takes nothing; the
    other box gets exactly the points it gets alone."""
    points, levels, _ = fcos_points([(4, 4)], [8])
    assigner = PointAssigner(regress_ranges=[(-1.0, INF)])
    tiny = [13.0, 13.0, 15.0, 15.0]  # points sit at 4, 12, 20, 28
    other = [0.0, 0.0, 16.0, 16.0]
    alone = assigner.assign(points, levels, [8], pad_targets([box_target([other], [1])]))
    both = assigner.assign(points, levels, [8], pad_targets([box_target([tiny, other], [0, 1])]))
    assert alone.positive[0].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert both.gt_inds.tolist() == [[2 if g else 0 for g in alone.gt_inds[0].tolist()]]
    nothing = assigner.assign(points, levels, [8], pad_targets([box_target([tiny], [0])]))
    assert not nothing.positive.any()


def test_many_boxes_equal_reference() -> None:
    """300 boxes on one image (and 40 on another): batched equals the literal per-image reference."""
    points, levels, counts = fcos_points(SIZES_256, STRIDES)
    targets = random_targets([300, 40], torch.Generator().manual_seed(7))
    result = PointAssigner().assign(points, levels, STRIDES, pad_targets(targets))
    assert int(result.positive[0].sum()) > 100
    for b, target in enumerate(targets):
        gt_inds, labels = mmdet_fcos_assign(points, counts, STRIDES, target["boxes"], target["labels"])
        assert torch.equal(result.gt_inds[b], gt_inds)
        assert torch.equal(result.labels[b], labels)


def test_compiled_chunk_kernel_equals_the_reference_ties_included(monkeypatch) -> None:
    """Through inductor (compilation forced), the fused chunk kernel gives the literal reference's assignment,
    including its tie rule: two boxes of equal area holding the same points go to the first."""
    from lightning_losses.functional.kernels import runtime, set_compile

    monkeypatch.setattr(runtime, "_compiler", runtime._Compiler())
    g = torch.Generator().manual_seed(3)
    points, levels, counts = fcos_points(SIZES_256, STRIDES)
    targets = random_targets([5, 3], g)
    twin = torch.tensor([[10.0, 10.0, 90.0, 60.0], [10.0, 10.0, 90.0, 60.0]])  # equal boxes: equal areas
    targets[1] = {
        "boxes": torch.cat([twin, targets[1]["boxes"]]),
        "labels": torch.cat([torch.tensor([4, 7]), targets[1]["labels"]]),
    }
    previous = set_compile(True)
    try:
        result = PointAssigner().assign(points, levels, STRIDES, pad_targets(targets))
        assert runtime._compiler.compiled, "the chunk kernel did not go through torch.compile"
    finally:
        set_compile(previous)
    for i, t in enumerate(targets):
        gt_inds, labels = mmdet_fcos_assign(points, counts, STRIDES, t["boxes"], t["labels"])
        torch.testing.assert_close(result.gt_inds[i], gt_inds, rtol=0, atol=0)
        torch.testing.assert_close(result.labels[i], labels, rtol=0, atol=0)
    assert int((result.gt_inds[1] == 1).sum()) > 0
    assert int((result.gt_inds[1] == 2).sum()) == 0

"""ATSSAssigner: hand-worked scenes and a literal per-image MMDetection 3.x reference (MMDetection 3.x);
atss_targets (the padded targets ATSS and GFL share) against the same reference."""

from __future__ import annotations

import pytest
import torch

from lightning_losses.assigners import ATSSAssigner, atss_targets
from lightning_losses.boxes import AnchorGenerator, pad_targets, valid_flags
from tests.references.mmdet_assigners import mmdet_atss_assign


def atss_priors(size: int = 256, strides: tuple[int, ...] = (8, 16, 32, 64, 128)) -> tuple[torch.Tensor, list[int]]:
    gen = AnchorGenerator(strides=list(strides), ratios=[1.0], octave_base_scale=8, scales_per_octave=1)
    per_level = gen.grid_priors([(-(-size // s), -(-size // s)) for s in strides])
    return torch.cat(per_level), [p.shape[0] for p in per_level]


def random_targets(counts: list[int], generator: torch.Generator, size: float = 256.0):
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=generator) * (size - 4)
        wh = 4 + torch.rand(n, 2, generator=generator) * (size / 2)
        out.append(
            {
                "boxes": torch.cat([xy, (xy + wh).clamp(max=size)], dim=1),
                "labels": torch.randint(0, 80, (n,), generator=generator),
            }
        )
    return out


def box_target(boxes: list[list[float]], labels: list[int] | None = None) -> dict[str, torch.Tensor]:
    labels = list(range(len(boxes))) if labels is None else labels
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.long)}


def assert_matches_reference(assigner: ATSSAssigner, priors, counts, targets) -> None:
    result = assigner.assign(priors, counts, pad_targets(targets))
    for i, t in enumerate(targets):
        gt_inds, max_ov, labels = mmdet_atss_assign(priors, counts, t["boxes"], t["labels"], assigner.topk)
        torch.testing.assert_close(result.gt_inds[i], gt_inds, rtol=0, atol=0)
        torch.testing.assert_close(result.labels[i], labels, rtol=0, atol=0)
        positive = gt_inds > 0
        torch.testing.assert_close(result.max_overlaps[i][positive], max_ov[positive])
        assert bool((result.max_overlaps[i][~positive] == 0).all())


# --------------------------------------------------------------------------------------------------
# Hand-worked scenes
# --------------------------------------------------------------------------------------------------
def test_hand_worked_center_must_be_inside_by_more_than_001() -> None:
    """Hand-worked: prior center (6, 5); box [-6,0,x2,10] with x2 = 5, 6, 6.005, 6.02 → only 6.02 is positive.

    Candidates are all three priors (IoUs v, 0, 0, so t = v/3 + v/√3 < v): only the center test decides.
    """
    priors = torch.tensor([[0.0, 0.0, 12.0, 10.0], [40.0, 0.0, 50.0, 10.0], [0.0, 40.0, 10.0, 50.0]])
    targets = [box_target([[-6.0, 0.0, x2, 10.0]], [4]) for x2 in (5.0, 6.0, 6.005, 6.02)]
    result = ATSSAssigner(topk=3).assign(priors, [3], pad_targets(targets))
    assert result.gt_inds.tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert result.labels.tolist() == [[-1, -1, -1], [-1, -1, -1], [-1, -1, -1], [4, -1, -1]]
    torch.testing.assert_close(result.max_overlaps[3, 0], torch.tensor(60.2 / 180.0))


def test_hand_worked_shared_prior_takes_highest_iou_then_first_box() -> None:
    """Hand-worked: p0 is positive for boxes of IoU 100/120 and 100/110 → the second; equal boxes → the first."""
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 0.0, 110.0, 10.0], [0.0, 100.0, 10.0, 110.0]])
    targets = [
        box_target([[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 11.0]], [5, 6]),
        box_target([[0.0, 0.0, 10.0, 11.0], [0.0, 0.0, 10.0, 11.0]], [5, 6]),
        box_target([[0.0, 0.0, 10.0, 12.0]], [5]),
    ]
    result = ATSSAssigner(topk=3).assign(priors, [3], pad_targets(targets))
    assert result.gt_inds.tolist() == [[2, 0, 0], [1, 0, 0], [1, 0, 0]]
    assert result.labels.tolist() == [[6, -1, -1], [5, -1, -1], [5, -1, -1]]
    torch.testing.assert_close(result.max_overlaps[:, 0], torch.tensor([100 / 110, 100 / 110, 100 / 120]))


def test_hand_worked_topk_is_per_level_with_unbiased_std() -> None:
    """Hand-worked: topk=2 per level gives IoUs (1, 0, .25, 0): t = .3125 + .4732 → only the level-0 prior.

    A global top-2 would take (1, .25) with t = .625 + .530 > 1 and find nothing.
    """
    priors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # level 0: IoU 1, distance 0
            [200.0, 200.0, 210.0, 210.0],
            [300.0, 0.0, 310.0, 10.0],
            [0.0, 0.0, 20.0, 20.0],  # level 1: IoU .25, distance 7.07
            [200.0, 0.0, 220.0, 20.0],
            [0.0, 300.0, 20.0, 320.0],
        ]
    )
    gts = pad_targets([box_target([[0.0, 0.0, 10.0, 10.0]])])
    result = ATSSAssigner(topk=2).assign(priors, [3, 3], gts)
    assert result.gt_inds.tolist() == [[1, 0, 0, 0, 0, 0]]
    # topk above the level size takes the whole level (k = min(topk, n_l)) without error
    assert ATSSAssigner(topk=9).assign(priors, [3, 3], gts).gt_inds.tolist() == [[1, 0, 0, 0, 0, 0]]
    # the reference agrees, and the unbiased threshold is as hand-computed
    cand = torch.tensor([1.0, 0.0, 0.25, 0.0])
    assert abs(float(cand.mean() + cand.std()) - (0.3125 + (0.671875 / 3) ** 0.5)) < 1e-6
    ref, _, _ = mmdet_atss_assign(priors, [3, 3], gts.boxes[0], gts.labels[0], topk=2)
    assert ref.tolist() == [1, 0, 0, 0, 0, 0]


def test_hand_worked_unbiased_std_decides() -> None:
    """Hand-worked: IoUs (.9, .5, 0): unbiased t = .4667 + .4509 = .9176 > .9 → nothing positive (a biased std, .3682,
    would give t = .8349 and take p0); with (.9, .3, 0): t = .4 + .4583 = .8583 → p0 is positive.
    """
    # one level of three priors, all of them candidates; box [0,0,10,10]; p0 IoU 90/100, p1 IoU 50/100, p2 far
    priors = torch.tensor([[0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 10.0, 5.0], [100.0, 100.0, 110.0, 110.0]])
    gts = pad_targets([box_target([[0.0, 0.0, 10.0, 10.0]])])
    result = ATSSAssigner(topk=3).assign(priors, [3], gts)
    assert result.gt_inds.tolist() == [[0, 0, 0]]
    # with p1 at IoU .3 ([0,0,10,3]) the threshold drops to .8583 and p0 (.9) becomes positive
    priors[1, 3] = 3.0
    assert ATSSAssigner(topk=3).assign(priors, [3], gts).gt_inds.tolist() == [[1, 0, 0]]


def test_half_precision_priors_assign_as_their_float32_values() -> None:
    """Hand-worked shared-prior scene with float16 priors (exact in half): bbox_overlaps upcasts, result unchanged."""
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 0.0, 110.0, 10.0], [0.0, 100.0, 10.0, 110.0]])
    gts = pad_targets([box_target([[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 11.0]], [5, 6])])
    result = ATSSAssigner(topk=3).assign(priors.half(), [3], gts)
    assert result.gt_inds.tolist() == [[2, 0, 0]]


def test_empty_images_are_all_negative() -> None:
    """Hand-worked: images without boxes get gt_inds 0, labels -1 (alone and in a mixed batch)."""
    priors, counts = atss_priors(64, (8, 16))
    empty = box_target([])
    alone = ATSSAssigner().assign(priors, counts, pad_targets([empty]))
    assert bool((alone.gt_inds == 0).all())
    assert bool((alone.labels == -1).all())
    mixed = ATSSAssigner().assign(priors, counts, pad_targets([empty, box_target([[0.0, 0.0, 64.0, 64.0]]), empty]))
    assert bool((mixed.gt_inds[[0, 2]] == 0).all())
    assert int(mixed.positive[1].sum()) > 0


def test_argument_checks() -> None:
    """Boundary checks: topk >= 1; level counts must add up to the number of priors."""
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(topk=0)
    priors, counts = atss_priors(64, (8, 16))
    with pytest.raises(ValueError, match="num_level_priors"):
        ATSSAssigner().assign(priors, [counts[0]], pad_targets([box_target([[0.0, 0.0, 8.0, 8.0]])]))


# --------------------------------------------------------------------------------------------------
# Against the literal reference on random scenes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_equals_per_image_reference(seed: int) -> None:
    """Literal per-image MMDetection ATSS == one batched call, box counts (5, 0, 12, 1), 1364 ATSS anchors."""
    g = torch.Generator().manual_seed(seed)
    priors, counts = atss_priors()
    assert_matches_reference(ATSSAssigner(), priors, counts, random_targets([5, 0, 12, 1], g))


def test_topk_and_chunking_equal_reference() -> None:
    """Literal reference with topk=4, and a tiny max_elements (one box per distance chunk) gives the same result."""
    g = torch.Generator().manual_seed(3)
    priors, counts = atss_priors(128, (8, 16, 32))
    targets = random_targets([7, 2], g, size=128.0)
    assert_matches_reference(ATSSAssigner(topk=4), priors, counts, targets)
    full = ATSSAssigner().assign(priors, counts, pad_targets(targets))
    chunked = ATSSAssigner(max_elements=1).assign(priors, counts, pad_targets(targets))
    for got, want in zip(chunked, full, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_many_boxes_equal_reference() -> None:
    """Literal reference with 1000 boxes on the 1364 anchors of a 256 × 256 image (strides 8..128); runs quickly."""
    g = torch.Generator().manual_seed(4)
    priors, counts = atss_priors()
    targets = random_targets([1000, 300], g)
    assert_matches_reference(ATSSAssigner(), priors, counts, targets)


def test_box_overlapping_no_prior_assigns_nothing_and_leaves_the_others() -> None:
    """Hand-worked: a box outside every prior has IoU 0 everywhere; the threshold is 0 and the IoU test passes, but
    no candidate's center lies inside it, so it takes nothing (MMDetection's rule) while the other box is assigned
    as when alone."""
    priors = torch.tensor([[0.0, 0.0, 12.0, 10.0], [40.0, 0.0, 50.0, 10.0], [0.0, 40.0, 10.0, 50.0]])
    inside = [0.0, 0.0, 12.0, 10.0]
    outside = [200.0, 200.0, 210.0, 205.0]
    alone = ATSSAssigner(topk=3).assign(priors, [3], pad_targets([box_target([inside], [1])]))
    both = ATSSAssigner(topk=3).assign(priors, [3], pad_targets([box_target([outside, inside], [0, 1])]))
    assert alone.gt_inds.tolist() == [[1, 0, 0]]
    assert both.gt_inds.tolist() == [[2, 0, 0]]
    assert both.labels.tolist() == [[1, -1, -1]]
    nothing = ATSSAssigner(topk=3).assign(priors, [3], pad_targets([box_target([outside], [0])]))
    assert not nothing.positive.any()


def test_compiled_distance_kernel_equals_the_reference(monkeypatch) -> None:
    """Through inductor (compilation forced) the fused distance kernel gives the literal reference's assignment,
    with box centres on prior centres and half-way between them (exact distance ties)."""
    from lightning_losses.functional.kernels import runtime, set_compile

    monkeypatch.setattr(runtime, "_compiler", runtime._Compiler())
    g = torch.Generator().manual_seed(5)
    priors, counts = atss_priors()
    targets = random_targets([6, 4], g)
    ties = torch.tensor([[20.0, 20.0, 60.0, 60.0], [8.0, 16.0, 56.0, 48.0]])  # centres (40, 40) and (32, 32)
    targets[1] = {
        "boxes": torch.cat([ties, targets[1]["boxes"]]),
        "labels": torch.cat([torch.tensor([1, 2]), targets[1]["labels"]]),
    }
    previous = set_compile(True)
    try:
        assert_matches_reference(ATSSAssigner(), priors, counts, targets)
        assert runtime._compiler.compiled, "the distance kernel did not go through torch.compile"
    finally:
        set_compile(previous)


# --------------------------------------------------------------------------------------------------
# atss_targets
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True])
def test_atss_targets_equal_reference_assignment_with_anchor_boxes_for_negatives(padded: bool) -> None:
    """Reference: per-image MMDetection ATSS assignment; a positive carries its box, a negative its own anchor;
    the classification weight is the valid flags of each image's pad shape (``None`` without one)."""
    strides = (8, 16, 32, 64, 128)
    generator = AnchorGenerator(strides=list(strides), ratios=[1.0], octave_base_scale=8, scales_per_octave=1)
    sizes = [(-(-128 // s), -(-128 // s)) for s in strides]
    maps = [torch.zeros(2, 1, h, w) for h, w in sizes]
    targets = random_targets([3, 0], torch.Generator().manual_seed(3), size=128.0)
    pad_shapes = torch.tensor([[128, 128], [64, 96]])
    got = atss_targets(generator, ATSSAssigner(), maps, targets, None, pad_shapes if padded else None)
    anchors = torch.cat(generator.grid_priors(sizes))
    torch.testing.assert_close(got.anchors, anchors, rtol=0, atol=0)
    mask = valid_flags(sizes, strides, 1, pad_shapes)
    for i, t in enumerate(targets):
        counts = [h * w for h, w in sizes]
        keep = mask[i] if padded else torch.ones(len(anchors), dtype=torch.bool)
        level_counts = [int(c.sum()) for c in keep.split(counts)]
        gt_inds = torch.zeros(len(anchors), dtype=torch.long)
        labels = torch.full((len(anchors),), -1)
        if len(t["boxes"]):
            ref = mmdet_atss_assign(anchors[keep], level_counts, t["boxes"], t["labels"], 9)
            gt_inds[keep], labels[keep] = ref[0], ref[2]
        positive = gt_inds > 0
        assert torch.equal(got.positive[i], positive)
        assert torch.equal(got.labels[i], labels)
        matched = t["boxes"][gt_inds - 1] if len(t["boxes"]) else anchors  # gt_inds - 1 = -1: masked below
        torch.testing.assert_close(got.boxes[i], torch.where(positive[:, None], matched, anchors), rtol=0, atol=0)
    assert int(got.positive[0].sum()) > 0
    assert got.num_pos_images.tolist() == [int(got.positive[0].sum()), 0]
    assert int(got.avg_factor()) == int(got.positive[0].sum()) + 1  # Σ_img max(n_pos, 1)
    if padded:
        assert torch.equal(got.label_weight, mask.float())
    else:
        assert got.label_weight is None


def test_atss_targets_priors_shape_is_checked() -> None:
    generator = AnchorGenerator(strides=[8], ratios=[1.0], octave_base_scale=8, scales_per_octave=1)
    targets = [box_target([[0.0, 0.0, 8.0, 8.0]])]
    with pytest.raises(ValueError, match=r"`priors` must have shape \(4, 4\)"):
        atss_targets(generator, ATSSAssigner(), [torch.zeros(1, 1, 2, 2)], targets, torch.zeros(3, 4))

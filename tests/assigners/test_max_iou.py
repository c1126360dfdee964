"""MaxIoUAssigner: hand-worked scene, a literal per-image MMDetection 3.x reference, torchvision's Matcher."""

from __future__ import annotations

import pytest
import torch

from lightning_losses.assigners import MaxIoUAssigner
from lightning_losses.boxes import AnchorGenerator, pad_targets, valid_flags
from tests.references.mmdet_assigners import mmdet_max_iou_assign
from tests.references.mmdet_boxes import bbox_overlaps


# --------------------------------------------------------------------------------------------------
# References: MMDetection's assigner (tests/references/mmdet_assigners.py), torchvision's Matcher.
# --------------------------------------------------------------------------------------------------
def matcher_assign(priors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """torchvision's Matcher(0.5, 0.4, allow_low_quality_matches=True), mapped to gt_inds (-2 → -1, -1 → 0, i → i+1)."""
    matcher_cls = pytest.importorskip("torchvision.models.detection._utils").Matcher
    matches = matcher_cls(0.5, 0.4, allow_low_quality_matches=True)(bbox_overlaps(boxes, priors))
    return torch.where(matches >= 0, matches + 1, torch.where(matches == -2, -1, 0))


def random_boxes(count: int, generator: torch.Generator, size: float, low: float, high: float) -> torch.Tensor:
    xy = torch.rand(count, 2, generator=generator) * (size - low)
    wh = low + torch.rand(count, 2, generator=generator) * (high - low)
    return torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)


def random_targets(counts: list[int], generator: torch.Generator, size: float = 128.0) -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": random_boxes(n, generator, size, 4.0, 70.0),
            "labels": torch.randint(0, 20, (n,), generator=generator),
        }
        for n in counts
    ]


def retina_priors(size: int = 128, strides: tuple[int, ...] = (8, 16, 32)) -> tuple[torch.Tensor, list]:
    gen = AnchorGenerator(strides=list(strides), ratios=[0.5, 1.0, 2.0], octave_base_scale=4, scales_per_octave=3)
    sizes = [(-(-size // s), -(-size // s)) for s in strides]
    return torch.cat(gen.grid_priors(sizes)), sizes


def assert_matches_reference(assigner: MaxIoUAssigner, priors, targets, prior_mask=None, **ref_kwargs) -> None:
    result = assigner.assign(priors, pad_targets(targets), prior_mask)
    for i, t in enumerate(targets):
        valid = None if prior_mask is None else prior_mask[i]
        gt_inds, max_ov, labels = mmdet_max_iou_assign(priors, t["boxes"], t["labels"], valid, **ref_kwargs)
        torch.testing.assert_close(result.gt_inds[i], gt_inds, rtol=0, atol=0)
        torch.testing.assert_close(result.labels[i], labels, rtol=0, atol=0)
        torch.testing.assert_close(result.max_overlaps[i], max_ov, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# Hand-worked scene
# --------------------------------------------------------------------------------------------------
HAND_PRIORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # p0: A IoU 1
        [0.0, 0.0, 10.0, 5.0],  # p1: A 0.5  (pos, inclusive)
        [0.0, 0.0, 10.0, 4.5],  # p2: A 0.45 (ignored)
        [0.0, 0.0, 10.0, 4.0],  # p3: A 0.4  (ignored: neg is < 0.4)
        [0.0, 0.0, 10.0, 3.9],  # p4: A 0.39 (neg)
        [100.0, 100.0, 110.0, 110.0],  # p5: nothing
        [200.0, 0.0, 210.0, 10.0],  # p6: B 0.25 (B's best, tied)
        [210.0, 10.0, 220.0, 20.0],  # p7: B 0.25 (B's best, tied)
        [200.0, 0.0, 205.0, 5.0],  # p8: B 0.0625
        [300.0, 0.0, 310.0, 10.0],  # p9: C 0.25, D 100/420 (both boxes' best)
    ]
)
HAND_TARGET = {
    "boxes": torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # A
            [200.0, 0.0, 220.0, 20.0],  # B
            [300.0, 0.0, 320.0, 20.0],  # C
            [300.0, 0.0, 320.0, 21.0],  # D
            [500.0, 500.0, 510.0, 510.0],  # E: overlaps no prior
        ]
    ),
    "labels": torch.tensor([3, 5, 1, 2, 4]),
}


def test_hand_worked_scene_thresholds_low_quality_ties_and_overwrite() -> None:
    """Hand-worked: neg < 0.4, ignore [0.4, 0.5), pos >= 0.5, B claims its two tied priors, D overwrites C at p9."""
    result = MaxIoUAssigner().assign(HAND_PRIORS, pad_targets([HAND_TARGET]))
    assert result.gt_inds.tolist() == [[1, 1, -1, -1, 0, 0, 2, 2, 0, 4]]
    assert result.labels.tolist() == [[3, 3, -1, -1, -1, -1, 5, 5, -1, 2]]
    expected_max = torch.tensor([[1.0, 0.5, 0.45, 0.4, 0.39, 0.0, 0.25, 0.25, 0.0625, 0.25]])
    torch.testing.assert_close(result.max_overlaps, expected_max)
    assert result.positive.tolist() == [[True, True, False, False, False, False, True, True, False, True]]
    assert result.matched.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 0, 3]]


def test_hand_worked_scene_options() -> None:
    """Hand-worked: first tied prior only; min_pos_iou above B/C/D's best; no low-quality step; 'best' keeps C at p9."""
    gts = pad_targets([HAND_TARGET])
    first_only = MaxIoUAssigner(gt_max_assign_all=False).assign(HAND_PRIORS, gts)
    assert first_only.gt_inds.tolist() == [[1, 1, -1, -1, 0, 0, 2, 0, 0, 4]]
    high_min = MaxIoUAssigner(min_pos_iou=0.3).assign(HAND_PRIORS, gts)
    assert high_min.gt_inds.tolist() == [[1, 1, -1, -1, 0, 0, 0, 0, 0, 0]]
    no_low = MaxIoUAssigner(match_low_quality=False).assign(HAND_PRIORS, gts)
    assert no_low.gt_inds.tolist() == [[1, 1, -1, -1, 0, 0, 0, 0, 0, 0]]
    best = MaxIoUAssigner(low_quality_match="best").assign(HAND_PRIORS, gts)
    assert best.gt_inds.tolist() == [[1, 1, -1, -1, 0, 0, 2, 2, 0, 3]]
    assert best.labels.tolist() == [[3, 3, -1, -1, -1, -1, 5, 5, -1, 1]]


def test_box_overlapping_nothing_assigns_nothing() -> None:
    """Documented deviation: E (IoU 0 with every prior) claims nothing; MMDetection with min_pos_iou=0 and torchvision's
    Matcher would make every zero-IoU prior positive for it (here all ten)."""
    alone = pad_targets([{"boxes": HAND_TARGET["boxes"][4:], "labels": HAND_TARGET["labels"][4:]}])
    for mode in ("box", "best"):
        result = MaxIoUAssigner(low_quality_match=mode).assign(HAND_PRIORS, alone)
        assert result.gt_inds.tolist() == [[0] * 10]
    # the literal MMDetection loop without the deviation does claim them all: the test above can tell the difference
    faithful, _, _ = mmdet_max_iou_assign(
        HAND_PRIORS, alone.boxes[0], alone.labels[0], skip_boxes_overlapping_nothing=False
    )
    assert faithful.tolist() == [1] * 10


def test_hand_worked_reference_agrees_with_itself() -> None:
    """The literal reference reproduces the hand-worked scene (so the random comparisons below check something real)."""
    gt_inds, _, labels = mmdet_max_iou_assign(HAND_PRIORS, HAND_TARGET["boxes"], HAND_TARGET["labels"])
    assert gt_inds.tolist() == [1, 1, -1, -1, 0, 0, 2, 2, 0, 4]
    assert labels.tolist() == [3, 3, -1, -1, -1, -1, 5, 5, -1, 2]


def test_empty_images_are_all_negative() -> None:
    """Hand-worked: images without boxes get gt_inds 0, labels -1, max_overlaps 0 (alone or next to a full image)."""
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    alone = MaxIoUAssigner().assign(HAND_PRIORS, pad_targets([empty]))
    assert alone.gt_inds.tolist() == [[0] * 10]
    assert alone.labels.tolist() == [[-1] * 10]
    assert alone.max_overlaps.tolist() == [[0.0] * 10]
    mixed = MaxIoUAssigner().assign(HAND_PRIORS, pad_targets([empty, HAND_TARGET, empty]))
    assert mixed.gt_inds[0].tolist() == [0] * 10
    assert mixed.gt_inds[2].tolist() == [0] * 10
    assert mixed.gt_inds[1].tolist() == [1, 1, -1, -1, 0, 0, 2, 2, 0, 4]


def test_prior_mask_ignores_invalid_priors_and_they_are_nobodys_best() -> None:
    """Hand-worked: with p0 (A's IoU-1 prior) invalid, p0 is -1 and A's low-quality claim falls on p1 (IoU 0.5)."""
    targets = pad_targets([HAND_TARGET, HAND_TARGET])
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 0] = False
    mask[1, [0, 1, 9]] = False
    result = MaxIoUAssigner(pos_iou_thr=0.6).assign(HAND_PRIORS, targets, mask)
    # image 0: p1 (0.5 < 0.6, ignored by threshold) is claimed by A as its best valid prior
    assert result.gt_inds[0].tolist() == [-1, 1, -1, -1, 0, 0, 2, 2, 0, 4]
    # image 1: A's best valid prior is p2 (0.45); C and D lose p9 and claim nothing else
    assert result.gt_inds[1].tolist() == [-1, -1, 1, -1, 0, 0, 2, 2, 0, -1]
    assert result.max_overlaps[1, [0, 1, 9]].tolist() == [-1.0, -1.0, -1.0]
    assert result.labels[1].tolist() == [-1, -1, 3, -1, -1, -1, 5, 5, -1, -1]


# --------------------------------------------------------------------------------------------------
# Against the literal reference on random scenes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_equals_per_image_reference(seed: int) -> None:
    """Literal per-image MMDetection loop == one batched call, box counts (7, 0, 15, 1) on 3024 RetinaNet anchors."""
    g = torch.Generator().manual_seed(seed)
    priors, _ = retina_priors()
    targets = random_targets([7, 0, 15, 1], g)
    assert_matches_reference(MaxIoUAssigner(), priors, targets)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gt_max_assign_all": False},
        {"min_pos_iou": 0.3},
        {"match_low_quality": False},
        {"pos_iou_thr": 0.6, "neg_iou_thr": 0.3},
    ],
)
def test_options_equal_per_image_reference(kwargs: dict) -> None:
    """Literal per-image MMDetection loop with the same options == the batched assigner."""
    g = torch.Generator().manual_seed(3)
    priors, _ = retina_priors()
    targets = random_targets([9, 3, 0], g)
    assert_matches_reference(MaxIoUAssigner(**kwargs), priors, targets, **kwargs)


def test_prior_mask_equals_reference_on_valid_subset() -> None:
    """MMDetection runs the assigner on the valid anchors only and unmaps: the same as passing prior_mask."""
    g = torch.Generator().manual_seed(4)
    priors, sizes = retina_priors()
    targets = random_targets([6, 11, 0], g)
    mask = valid_flags(sizes, [8, 16, 32], 9, torch.tensor([[96, 64], [128, 40], [50, 128]]))
    assert not bool(mask.all())
    assert_matches_reference(MaxIoUAssigner(), priors, targets, prior_mask=mask)


@pytest.mark.parametrize("kwargs", [{}, {"gt_max_assign_all": False}])
def test_chunking_gives_identical_results(kwargs: dict) -> None:
    """Invariance: a tiny max_elements (many chunks, one prior per chunk at the extreme) changes nothing."""
    g = torch.Generator().manual_seed(5)
    priors, sizes = retina_priors(64, (8, 16))
    targets = random_targets([5, 0, 8], g, size=64.0)
    mask = valid_flags(sizes, [8, 16], 9, torch.tensor([[64, 64], [40, 64], [64, 32]]))
    full = MaxIoUAssigner(**kwargs).assign(priors, pad_targets(targets), mask)
    for budget in (1, 3 * 8 * 4 * 7):  # one prior per chunk; seven priors per chunk
        chunked = MaxIoUAssigner(max_elements=budget, **kwargs).assign(priors, pad_targets(targets), mask)
        for got, want in zip(chunked, full, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_chunk_boundary_keeps_first_tied_prior() -> None:
    """Hand-worked: B's tied best priors p6, p7 fall in different chunks; gt_max_assign_all=False still takes p6."""
    gts = pad_targets([HAND_TARGET])
    for budget in (1, 5 * 4 * 7):  # chunks of 1 and of 7 priors (p6 | p7 split)
        result = MaxIoUAssigner(gt_max_assign_all=False, max_elements=budget).assign(HAND_PRIORS, gts)
        assert result.gt_inds.tolist() == [[1, 1, -1, -1, 0, 0, 2, 0, 0, 4]]


def test_many_boxes_equal_reference() -> None:
    """Literal per-image MMDetection loop with 300 random boxes on 5000 random priors, two images (300, 120)."""
    g = torch.Generator().manual_seed(6)
    priors = random_boxes(5000, g, 400.0, 8.0, 128.0)
    targets = [
        {"boxes": random_boxes(n, g, 400.0, 4.0, 200.0), "labels": torch.randint(0, 80, (n,), generator=g)}
        for n in (300, 120)
    ]
    assert_matches_reference(MaxIoUAssigner(), priors, targets)


@pytest.mark.parametrize("seed", [7, 8])
def test_best_mode_equals_torchvision_matcher(seed: int) -> None:
    """torchvision Matcher(0.5, 0.4, allow_low_quality_matches=True) == low_quality_match='best' (boxes all overlap)."""
    g = torch.Generator().manual_seed(seed)
    priors, _ = retina_priors()
    targets = random_targets([12, 1, 25], g)
    result = MaxIoUAssigner(low_quality_match="best").assign(priors, pad_targets(targets))
    for i, t in enumerate(targets):
        assert bool((bbox_overlaps(t["boxes"], priors).max(dim=1).values > 0).all())
        torch.testing.assert_close(result.gt_inds[i], matcher_assign(priors, t["boxes"]), rtol=0, atol=0)


def test_best_mode_equals_matcher_on_hand_scene_without_empty_box() -> None:
    """torchvision Matcher on the hand scene minus E (which overlaps nothing): p9 stays with C, its own best box."""
    boxes = HAND_TARGET["boxes"][:4]
    expected = matcher_assign(HAND_PRIORS, boxes)
    assert expected.tolist() == [1, 1, -1, -1, 0, 0, 2, 2, 0, 3]
    gts = pad_targets([{"boxes": boxes, "labels": HAND_TARGET["labels"][:4]}])
    assert MaxIoUAssigner(low_quality_match="best").assign(HAND_PRIORS, gts).gt_inds[0].tolist() == expected.tolist()


def test_half_precision_priors_assign_as_their_float32_values() -> None:
    """Hand-worked: IoU 3.998046875 / 10 = 0.39980 (float32, bbox_overlaps upcasts half boxes) is < 0.4 → negative.

    Both priors are exact in float16, so half priors must assign exactly as their float32 copies.
    """
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 3.998046875]])
    gts = pad_targets([{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}])
    want = MaxIoUAssigner().assign(priors, gts)
    assert want.gt_inds.tolist() == [[1, 0]]
    got = MaxIoUAssigner().assign(priors.half(), gts)
    assert got.gt_inds.tolist() == want.gt_inds.tolist()


def test_constructor_checks() -> None:
    """Boundary checks: unknown low_quality_match, neg_iou_thr above pos_iou_thr."""
    with pytest.raises(ValueError, match="low_quality_match"):
        MaxIoUAssigner(low_quality_match="matcher")
    with pytest.raises(ValueError, match="neg_iou_thr"):
        MaxIoUAssigner(pos_iou_thr=0.4, neg_iou_thr=0.5)


def test_memory_bound_1000_boxes_on_100k_priors() -> None:
    """Smoke (memory): 1000 boxes per image on ~93k RetinaNet anchors (704 × 704, strides 8..128), batch 2."""
    # Memory-bound check, run once: unchunked this is a (2, 1000, 92889) IoU with several float temporaries
    # (~8 GiB); the default chunk budget keeps it small. No timing is asserted (two IoU passes: ~10-20 s on 2 cores).
    g = torch.Generator().manual_seed(9)
    priors, _ = retina_priors(704, (8, 16, 32, 64, 128))
    assert priors.shape[0] > 90_000
    targets = [
        {"boxes": random_boxes(1000, g, 704.0, 8.0, 300.0), "labels": torch.randint(0, 80, (1000,), generator=g)}
        for _ in range(2)
    ]
    result = MaxIoUAssigner().assign(priors, pad_targets(targets))
    assert result.gt_inds.shape == (2, priors.shape[0])
    assert int(result.gt_inds.max()) <= 1000
    assert int(result.gt_inds.min()) >= -1
    assert bool(result.positive.any(dim=1).all())

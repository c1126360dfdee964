"""SimOTAAssigner: hand-worked scenes and a literal per-image reference in NetsPresso's / MMDetection's style.

The reference (``reference_simota``) follows the per-image procedure (NetsPresso's yolox_loss, MMDetection 3.x):
select the image's candidate priors first, build the ``(G, M)`` cost on them only with
``F.binary_cross_entropy`` on ``sqrt(σ(cls)·σ(obj))``, take each box's dynamic ``k`` from its top-10 IoUs,
pick per box in a Python loop, then give each multiply-claimed prior to the box of least cost.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses.assigners.simota import SIMOTA_STYLE_TABLE, SIMOTA_STYLES, SimOTAAssigner
from lightning_losses.boxes.targets import pad_targets

FAR = [40.0, 40.0, 41.0, 41.0]  # a predicted box that overlaps nothing in the 32 x 32 scenes


# --------------------------------------------------------------------------------------------------
# Independent reference: one image at a time.
# --------------------------------------------------------------------------------------------------
def ref_pairwise_iou(gt: torch.Tensor, pred: torch.Tensor, union_eps: float | None) -> torch.Tensor:
    """(G, M) IoU of xyxy boxes; ``union_eps=None``: no eps (NetsPresso's bboxes_iou), else union >= eps."""
    rows = []
    for g in gt:
        lt = torch.max(g[:2], pred[:, :2])
        rb = torch.min(g[2:], pred[:, 2:])
        wh = rb - lt
        inter = wh[:, 0] * wh[:, 1] * ((wh[:, 0] > 0) & (wh[:, 1] > 0))
        union = (g[2] - g[0]) * (g[3] - g[1]) + (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]) - inter
        rows.append(inter / (union if union_eps is None else union.clamp(min=union_eps)))
    return torch.stack(rows)


def reference_simota(
    pred_boxes: torch.Tensor,
    cls_logits: torch.Tensor,
    obj_logits: torch.Tensor,
    centers: torch.Tensor,
    strides: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    style: str = "netspresso",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: (gt_inds (P,) with 0 negative / i + 1 positive, IoU with the matched box, labels or -1)."""
    num_priors, num_classes = cls_logits.shape
    gt_inds = torch.zeros(num_priors, dtype=torch.long)
    overlaps = torch.zeros(num_priors)
    out_labels = torch.full((num_priors,), -1, dtype=torch.long)
    num_gt = boxes.shape[0]
    if num_gt == 0:
        return gt_inds, overlaps, out_labels
    netspresso = style == "netspresso"
    radius = (1.5 if netspresso else 2.5) * strides
    gcx = (boxes[:, 0] + boxes[:, 2]) / 2
    gcy = (boxes[:, 1] + boxes[:, 3]) / 2
    x, y = centers[:, 0], centers[:, 1]
    center_deltas = torch.stack(
        [
            x[None] - (gcx[:, None] - radius[None]),
            y[None] - (gcy[:, None] - radius[None]),
            (gcx[:, None] + radius[None]) - x[None],
            (gcy[:, None] + radius[None]) - y[None],
        ],
        dim=-1,
    )
    in_center = center_deltas.min(dim=-1).values > 0  # (G, P)
    if netspresso:
        candidate, unpenalised = in_center, in_center
    else:
        box_deltas = torch.stack(
            [x[None] - boxes[:, 0:1], y[None] - boxes[:, 1:2], boxes[:, 2:3] - x[None], boxes[:, 3:4] - y[None]], -1
        )
        in_box = box_deltas.min(dim=-1).values > 0
        candidate, unpenalised = in_box | in_center, in_box & in_center
    fg = candidate.any(dim=0)
    idx = torch.nonzero(fg)[:, 0]
    m = idx.numel()
    if m == 0:
        return gt_inds, overlaps, out_labels

    ious = ref_pairwise_iou(boxes, pred_boxes[idx], None if netspresso else 1e-6)  # (G, M)
    probs = (cls_logits[idx].sigmoid() * obj_logits[idx].sigmoid()[:, None]).sqrt()
    onehot = F.one_hot(labels, num_classes).float()
    cls_cost = F.binary_cross_entropy(
        probs[None].repeat(num_gt, 1, 1), onehot[:, None].repeat(1, m, 1), reduction="none"
    ).sum(-1)
    iou_cost = -torch.log(ious + (1e-8 if netspresso else 1e-7))
    penalty = 1e6 if netspresso else 1e5
    cost = cls_cost + 3.0 * iou_cost + penalty * (~unpenalised[:, idx]).float()

    dynamic_k = ious.topk(min(10, m), dim=1).values.sum(1).int().clamp(min=1)
    matching = torch.zeros(num_gt, m)
    for g in range(num_gt):
        matching[g, cost[g].topk(int(dynamic_k[g]), largest=False).indices] = 1.0
    claimed = matching.sum(0)
    for j in range(m):
        if claimed[j] > 1:
            matching[:, j] = 0.0
            matching[int(cost[:, j].argmin()), j] = 1.0
    positive = claimed > 0
    matched = matching[:, positive].argmax(0)
    gt_inds[idx[positive]] = matched + 1
    overlaps[idx[positive]] = (matching * ious).sum(0)[positive]
    out_labels[idx[positive]] = labels[matched]
    return gt_inds, overlaps, out_labels


def grid_centers(image: int, strides: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior centers ((x + 0.5)·s, (y + 0.5)·s) level by level, y-major, and their strides."""
    centers, level_strides = [], []
    for s in strides:
        for yy in range(image // s):
            for xx in range(image // s):
                centers.append([(xx + 0.5) * s, (yy + 0.5) * s])
                level_strides.append(float(s))
    return torch.tensor(centers), torch.tensor(level_strides)


def assign_one(
    pred_boxes: list[list[float]],
    boxes: list[list[float]],
    labels: list[int],
    style: str = "netspresso",
    stride: int = 8,
    num_classes: int = 3,
):
    """Assign one image of the 32 x 32 single-level scene; equal class/objectness logits everywhere."""
    centers, strides = grid_centers(32, (stride,))
    preds = torch.tensor(pred_boxes)[None]
    zeros = torch.zeros(1, preds.shape[1], num_classes)
    gts = pad_targets([{"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}])
    return SimOTAAssigner(style=style).assign(preds, zeros, zeros[..., 0], centers, strides, gts)


# --------------------------------------------------------------------------------------------------
# Hand-worked scenes (stride 8 on a 32 x 32 image: 4 x 4 priors, prior i = 4·y + x, center ((x+.5)·8, (y+.5)·8)).
# All class and objectness logits are 0, so every (box, prior) pair has the same class cost and the IoU
# cost alone orders the priors.
# --------------------------------------------------------------------------------------------------
def test_hand_worked_netspresso_candidates_k_and_conflict():
    """Hand-worked: concentric boxes, k = 2 each, a prior claimed twice goes to the cheaper (higher-IoU) box.

    Box 0 = B [2, 2, 14, 14] and box 1 = A [0, 0, 16, 16] share the center (8, 8); the 1.5·8 = 12 px square
    strictly holds priors 0, 1, 4, 5 only (priors 2 and 8 lie exactly 12 px away). Predictions:
    p0 = A (IoU_A 1, IoU_B 144/256), p1 = [0, 0, 15, 15] (IoU_A 225/256, IoU_B 144/225),
    p5 = B (IoU_A 144/256, IoU_B 1), p4 far; p2, p8 and p15 predict A perfectly but are no candidates.
    k_A = int(1 + .879 + .5625) = 2 -> p0, p1; k_B = int(1 + .64 + .5625) = 2 -> p5, p1.
    p1 is claimed twice; A's cost is lower (IoU .879 > .64), so p1 -> A although B comes first in the list.
    Were p2 / p8 counted, k_A would be 3 or 4 and they would be picked.
    """
    a, b = [0.0, 0.0, 16.0, 16.0], [2.0, 2.0, 14.0, 14.0]
    preds = [FAR] * 16
    preds[0], preds[1], preds[5] = a, [0.0, 0.0, 15.0, 15.0], b
    preds[2] = preds[8] = preds[15] = a
    result = assign_one(preds, [b, a], [1, 0])
    expected_inds = torch.zeros(16, dtype=torch.long)
    expected_inds[[0, 1]] = 2
    expected_inds[5] = 1
    assert torch.equal(result.gt_inds[0], expected_inds)
    expected_iou = torch.zeros(16)
    expected_iou[[0, 1, 5]] = torch.tensor([1.0, 225 / 256, 1.0])
    torch.testing.assert_close(result.max_overlaps[0], expected_iou)
    expected_labels = torch.full((16,), -1)
    expected_labels[[0, 1]] = 0
    expected_labels[5] = 1
    assert torch.equal(result.labels[0], expected_labels)


def test_hand_worked_netspresso_penalised_pick_outside_own_region():
    """Hand-worked: a box with one candidate and k = 2 takes a prior of another box's region (cost + 1e6).

    A = [-2, -2, 2, 2] (center (0, 0)) has the single candidate p0; B = [8, 8, 24, 24] has p5, p6, p9, p10.
    p0 = A, p10 = A (IoU_A 1, IoU_B 0), p5 = B, others far. k_A = int(1 + 1) = 2 (p10 is a candidate of B,
    so its IoU with A counts): A takes p0 and, of its penalised priors p5, p6, p9, p10, the one with IoU 1:
    p10. k_B = 1 -> p5. In bfloat16 the 1e6-offset costs would tie; the cost is float32 whatever the input.
    """
    a, b = [-2.0, -2.0, 2.0, 2.0], [8.0, 8.0, 24.0, 24.0]
    preds = [FAR] * 16
    preds[0], preds[10], preds[5] = a, a, b
    expected = torch.zeros(16, dtype=torch.long)
    expected[[0, 10]] = 1
    expected[5] = 2
    result = assign_one(preds, [a, b], [0, 2])
    assert torch.equal(result.gt_inds[0], expected)

    centers, strides = grid_centers(32, (8,))
    gts = pad_targets([{"boxes": torch.tensor([a, b]), "labels": torch.tensor([0, 2])}])
    zeros = torch.zeros(1, 16, 3, dtype=torch.bfloat16)
    low = SimOTAAssigner().assign(
        torch.tensor(preds, dtype=torch.bfloat16)[None], zeros, zeros[..., 0], centers, strides, gts
    )
    assert torch.equal(low.gt_inds[0], expected)


def test_hand_worked_mmdet_candidates_in_box_or_center_penalised_unless_both():
    """Hand-worked (MMDetection style): candidates lie in the box OR within 2.5·s of its center; 1e5 unless both.

    Stride 4 (8 x 8 priors, p = 8·y + x, centers (x·4 + 2, y·4 + 2)); box A = [0, 0, 32, 8], center (16, 4),
    radius 10. p0 (2, 2): in the box only; p19 (14, 10): in the center region only; p2, p3, p4 (10|14|18, 2):
    both; p35 (14, 18): neither. Predictions: p0 = A (IoU 1), p19 = [0, 0, 24, 8] (.75), p3 = [0, 0, 24, 8] (.75),
    p4 = [8, 0, 32, 8] (.75), p2 = [0, 0, 8, 8] (.25), p35 = A (IoU 1, no candidate), the rest far.
    k = int(1 + .75 + .75 + .75 + .25) = 3 (p0 and p19 count; without either k = 2; counting p35 gives 4);
    the 1e5 penalty keeps p0 and p19 out, so the positives are the three "both" priors p2, p3, p4.
    """
    box = [0.0, 0.0, 32.0, 8.0]
    preds = [FAR] * 64
    preds[0], preds[35] = box, box
    preds[19] = preds[3] = [0.0, 0.0, 24.0, 8.0]
    preds[4] = [8.0, 0.0, 32.0, 8.0]
    preds[2] = [0.0, 0.0, 8.0, 8.0]
    result = assign_one(preds, [box], [1], style="mmdet", stride=4)
    assert torch.nonzero(result.gt_inds[0]).flatten().tolist() == [2, 3, 4]
    torch.testing.assert_close(result.max_overlaps[0, [2, 3, 4]], torch.tensor([0.25, 0.75, 0.75]))
    assert result.labels[0, [2, 3, 4]].tolist() == [1, 1, 1]


def test_netspresso_style_default_radius_and_penalty():
    """Reference: NetsPresso's yolox_loss (radius 1.5, penalty 1e6, IoU eps 1e-8), MMDetection 3.x (2.5, 1e5, 1e-7)."""
    ns, mm = SimOTAAssigner(), SimOTAAssigner(style="mmdet")
    assert (ns.center_radius, ns.penalty, ns.iou_eps) == (1.5, 1e6, 1e-8)
    assert (mm.center_radius, mm.penalty, mm.iou_eps) == (2.5, 1e5, 1e-7)
    with pytest.raises(ValueError, match="style"):
        SimOTAAssigner(style="yolov5")


def test_each_style_is_one_frozen_table_entry_the_assigner_reads():
    """Reference: the same notes; the table holds every choice once, and an explicit radius still wins."""
    assert SIMOTA_STYLES == ("netspresso", "mmdet")
    ns, mm = SIMOTA_STYLE_TABLE["netspresso"], SIMOTA_STYLE_TABLE["mmdet"]
    assert (ns.center_radius, ns.in_box_candidates, ns.penalty, ns.iou_eps) == (1.5, False, 1e6, 1e-8)
    assert (mm.center_radius, mm.in_box_candidates, mm.penalty, mm.iou_eps) == (2.5, True, 1e5, 1e-7)
    for name, conventions in SIMOTA_STYLE_TABLE.items():
        assigner = SimOTAAssigner(style=name)
        assert assigner.conventions is conventions
        assert (assigner.style, assigner.center_radius) == (name, conventions.center_radius)
    assert SimOTAAssigner(style="mmdet", center_radius=1.0).center_radius == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        ns.penalty = 1.0


# --------------------------------------------------------------------------------------------------
# Batched == per-image reference on random scenes.
# --------------------------------------------------------------------------------------------------
def random_scene(seed: int, num_classes: int = 4, batch: int = 4, image: int = 64):
    """Three levels (8, 16, 32) on a 64 px image; predictions near the boxes so that k > 1 and conflicts occur."""
    generator = torch.Generator().manual_seed(seed)
    centers, strides = grid_centers(image, (8, 16, 32))
    num_priors = centers.shape[0]
    targets = []
    for b in range(batch):
        n = 0 if b == 1 else int(torch.randint(1, 7, (1,), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * (image - 20)
        wh = 4 + torch.rand(n, 2, generator=generator) * 30
        targets.append(
            {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, num_classes, (n,), generator=generator)}
        )
    pred_center = centers[None] + torch.randn(batch, num_priors, 2, generator=generator) * strides[:, None]
    pred_size = strides[:, None] * torch.exp(torch.randn(batch, num_priors, 2, generator=generator) * 0.5 + 0.7)
    pred_boxes = torch.cat([pred_center - pred_size / 2, pred_center + pred_size / 2], -1)
    cls_logits = torch.randn(batch, num_priors, num_classes, generator=generator) * 2
    obj_logits = torch.randn(batch, num_priors, generator=generator) * 2
    return pred_boxes, cls_logits, obj_logits, centers, strides, targets


@pytest.mark.parametrize("style", ["netspresso", "mmdet"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_elements", [1 << 24, 1])
def test_batched_equals_per_image_reference(style, seed, max_elements):
    """Reference: per-image reference_simota (candidates first, per-box loop, conflicts by cost argmin)."""
    pred_boxes, cls_logits, obj_logits, centers, strides, targets = random_scene(seed)
    result = SimOTAAssigner(style=style, max_elements=max_elements).assign(
        pred_boxes, cls_logits, obj_logits, centers, strides, pad_targets(targets)
    )
    num_pos = 0
    for b, target in enumerate(targets):
        inds, ious, labels = reference_simota(
            pred_boxes[b], cls_logits[b], obj_logits[b], centers, strides, target["boxes"], target["labels"], style
        )
        assert torch.equal(result.gt_inds[b], inds), f"image {b}"
        torch.testing.assert_close(result.max_overlaps[b], ious, rtol=1e-5, atol=1e-6)
        assert torch.equal(result.labels[b], labels)
        num_pos += int((inds > 0).sum())
    assert num_pos > 0


@pytest.mark.parametrize("style", ["netspresso", "mmdet"])
def test_bfloat16_inputs_assign_as_their_float32_values(style):
    """Reference: NetsPresso's yolox_loss (cost in float32, autocast off): bf16 inputs give the float32 assignment."""
    pred_boxes, cls_logits, obj_logits, centers, strides, targets = random_scene(11, batch=6)
    low = [t.bfloat16() for t in (pred_boxes, cls_logits * 3, obj_logits * 3)]
    gts = pad_targets(targets)
    assigner = SimOTAAssigner(style=style)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = assigner.assign(*low, centers, strides, gts)
    want = assigner.assign(*(t.float() for t in low), centers, strides, gts)
    assert torch.equal(got.gt_inds, want.gt_inds)
    assert got.max_overlaps.dtype == torch.float32
    torch.testing.assert_close(got.max_overlaps, want.max_overlaps)


def test_hand_worked_class_cost_decides_in_float32_for_bfloat16_inputs():
    """Hand-worked: equal IoUs (.6, k = int(4 · .6) = 2), so the class cost alone orders the four candidates.

    Box [0, 0, 16, 16], class 1; every candidate predicts [0, 0, 16, 9.6]. Class-1 logits p0 0, p1 .01,
    p4 .02, p5 .03 (exact in bfloat16): the two cheapest are p5 and p4. In bfloat16, σ(.01) and σ(.02) round
    to the same value and p1 would tie with p4; the cost is float32, so bf16 inputs give p4, p5.
    """
    centers, strides = grid_centers(32, (8,))
    preds = torch.tensor([FAR] * 16)
    preds[[0, 1, 4, 5]] = torch.tensor([0.0, 0.0, 16.0, 9.6])
    cls = torch.zeros(1, 16, 3)
    cls[0, [0, 1, 4, 5], 1] = torch.tensor([0.0, 0.01, 0.02, 0.03]).bfloat16().float()
    gts = pad_targets([{"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]]), "labels": torch.tensor([1])}])
    for dtype in (torch.float32, torch.bfloat16):
        result = SimOTAAssigner().assign(
            preds[None].to(dtype), cls.to(dtype), torch.zeros(1, 16, dtype=dtype), centers, strides, gts
        )
        assert torch.nonzero(result.gt_inds[0]).flatten().tolist() == [4, 5], dtype


def test_empty_images_and_zero_box_batch():
    """Hand-worked: an image without boxes (and a batch without any) has no positive, IoU 0, label -1."""
    pred_boxes, cls_logits, obj_logits, centers, strides, targets = random_scene(7, batch=3)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    mixed = [targets[0], empty, targets[2]]
    result = SimOTAAssigner().assign(pred_boxes, cls_logits, obj_logits, centers, strides, pad_targets(mixed))
    assert (result.gt_inds[1] == 0).all()
    assert (result.max_overlaps[1] == 0).all()
    assert (result.labels[1] == -1).all()
    assert (result.gt_inds[0] > 0).any()

    none = SimOTAAssigner().assign(pred_boxes, cls_logits, obj_logits, centers, strides, pad_targets([empty] * 3))
    assert none.gt_inds.shape == (3, centers.shape[0])
    assert (none.gt_inds == 0).all()
    assert (none.max_overlaps == 0).all()
    assert (none.labels == -1).all()


def test_dynamic_k_truncates_the_iou_sum():
    """Hand-worked: k = int(Σ top-10 IoU) truncates: IoUs 1 and .99 give k = 1, so only the best prior is kept."""
    a = [0.0, 0.0, 16.0, 16.0]
    preds = [FAR] * 16
    preds[0] = a
    preds[1] = [0.0, 0.0, 16.0, 16.0 * 0.99]  # IoU 0.99
    result = assign_one(preds, [a], [0])
    assert torch.nonzero(result.gt_inds[0]).flatten().tolist() == [0]
    assert math.isclose(float(result.max_overlaps[0, 0]), 1.0)

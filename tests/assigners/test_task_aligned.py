"""TaskAlignedAssigner against the literal per-box, per-prior reference (``tests/references/task_aligned.py``),
hand-worked cases of each rule, the memory bound and bad input."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_losses.assigners.task_aligned import TaskAlignedAssigner
from lightning_losses.boxes.targets import pad_targets
from tests.references.scenes import random_targets
from tests.references.task_aligned import ciou_netspresso, task_aligned_assign
from tests.sync_counter import SyncCounter

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

STRIDES = (8, 16, 32)
SIDE = 128


def _points() -> tuple[torch.Tensor, torch.Tensor]:
    points, strides = [], []
    for s in STRIDES:
        n = SIDE // s
        ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1) * s)
        strides.append(torch.full((n * n,), float(s)))
    return torch.cat(points), torch.cat(strides)


def _scene(seed: int, counts, num_classes: int = 4, spread: float = 3.0):
    """Logits, decoded boxes around each point (distances up to ``spread`` strides), points, targets."""
    gen = torch.Generator().manual_seed(seed)
    points, strides = _points()
    batch = len(counts)
    logits = torch.randn(batch, points.shape[0], num_classes, generator=gen) * 2
    dist = torch.rand(batch, points.shape[0], 4, generator=gen) * spread * strides[:, None]
    pred = torch.cat([points - dist[..., :2], points + dist[..., 2:]], dim=-1)
    targets = random_targets(gen, counts, num_classes, (SIDE, SIDE), min_size=4.0, max_size=90.0)
    return logits, pred, points, targets


def _reference(logits, pred, points, targets, style, min_size=None, topk=10):
    out = [
        task_aligned_assign(logits[i], pred[i], points, t["boxes"], t["labels"], style, topk=topk, min_size=min_size)
        for i, t in enumerate(targets)
    ]
    return [torch.stack(x) for x in zip(*out, strict=False)]


@pytest.mark.parametrize("style", ["ultralytics", "netspresso"])
@pytest.mark.parametrize(("seed", "counts"), [(0, (3, 5)), (1, (7, 0)), (2, (1, 9)), (3, (12, 4))])
def test_matches_the_literal_reference(style, seed, counts):
    """Reference: per box, per prior loops of the stated semantics (each style's own CIoU formula)."""
    logits, pred, points, targets = _scene(seed, counts)
    min_size = 16.0 if style == "ultralytics" else None
    assigner = TaskAlignedAssigner(style=style, min_size=min_size)
    got = assigner.assign(logits, pred, points, pad_targets(targets))
    matched, scores, ious = _reference(logits, pred, points, targets, style, min_size)
    assert torch.equal(got.gt_inds, matched + 1)
    assert int(got.positive.sum()) > 0
    torch.testing.assert_close(got.scores.double(), scores, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.max_overlaps.double(), ious, rtol=1e-5, atol=1e-6)
    labels = torch.stack(
        [t["labels"][matched[i].clamp(min=0)] if len(t["labels"]) else matched[i] for i, t in enumerate(targets)]
    )
    torch.testing.assert_close(got.labels, torch.where(matched >= 0, labels, -1))


@pytest.mark.parametrize("style", ["ultralytics", "netspresso"])
def test_chunks_of_boxes_give_the_same_assignment(style):
    """max_elements=1 runs one box per chunk: the running per-prior maximum must equal the one-chunk result."""
    logits, pred, points, targets = _scene(4, (15, 6))
    gts = pad_targets(targets)
    whole = TaskAlignedAssigner(style=style, min_size=16.0 if style == "ultralytics" else None).assign(
        logits, pred, points, gts
    )
    chunked = TaskAlignedAssigner(
        style=style, min_size=16.0 if style == "ultralytics" else None, max_elements=1
    ).assign(logits, pred, points, gts)
    for a, b in zip(whole, chunked, strict=True):
        assert torch.equal(a, b)


def test_hand_worked_scores():
    """Two candidates of one box: CIoU .4468 and .7373 (worked by hand), s = 0.5, metric √s·u⁶; the best
    positive's target is the box's best IoU, the other's is scaled by its metric ratio."""
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]])
    pred = torch.tensor([[[0.0, 0, 8, 8], [4, 0, 16, 8], [16, 0, 24, 8]]])
    gts = pad_targets([{"boxes": torch.tensor([[0.0, 0, 16, 8]]), "labels": torch.tensor([1])}])
    out = TaskAlignedAssigner(topk=2, style="netspresso").assign(torch.zeros(1, 3, 2), pred, points, gts)
    u0, u1 = out.max_overlaps[0, :2].tolist()
    assert u0 == pytest.approx(0.4468, abs=1e-4)
    assert u1 == pytest.approx(0.7373, abs=1e-4)
    ratio = (0.5**0.5 * u0**6) / (0.5**0.5 * u1**6 + 1e-9)
    assert out.scores[0].tolist() == pytest.approx([ratio * u1, u1, 0.0], rel=1e-5)
    assert out.gt_inds.tolist() == [[1, 1, 0]]
    assert out.labels.tolist() == [[1, 1, -1]]


def test_topk_bounds_the_positives_of_a_box():
    """Eight candidates with one class score: the three of largest CIoU (the reference formula) are positive."""
    points = torch.tensor([[float(x) + 0.5, 0.5] for x in range(8)])
    pred = torch.cat([points - 0.4, points + torch.linspace(0.1, 0.8, 8)[:, None]], -1)[None]
    box = torch.tensor([[0.0, 0, 8, 1]])
    gts = pad_targets([{"boxes": box, "labels": torch.tensor([0])}])
    out = TaskAlignedAssigner(topk=3, style="netspresso").assign(torch.zeros(1, 8, 1), pred, points, gts)
    best = ciou_netspresso(box.expand(8, 4), pred[0]).topk(3).indices
    assert sorted(out.positive[0].nonzero().flatten().tolist()) == sorted(best.tolist())


def test_conflicts_settled_among_candidates_or_among_every_box():
    """Boxes 0 and 1 both contain prior 0 and claim it; box 2 does not contain it but overlaps its prediction
    most: ultralytics keeps the prior with the candidate box 1, NetsPresso gives it to box 2 (target 0)."""
    points = torch.tensor([[5.0, 5.0]])
    pred = torch.tensor([[[4.0, 4.0, 14.0, 14.0]]])
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [3.0, 3.0, 12.0, 12.0], [5.5, 4.0, 14.0, 14.0]])
    gts = pad_targets([{"boxes": boxes, "labels": torch.tensor([0, 1, 2])}])
    ious = ciou_netspresso(boxes, pred[0].expand(3, 4)).clamp(0, 1)
    assert ious.argmax() == 2
    assert ious[1] > ious[0]
    ultra = TaskAlignedAssigner(topk=1, style="ultralytics").assign(torch.zeros(1, 1, 3), pred, points, gts)
    netspresso = TaskAlignedAssigner(topk=1, style="netspresso").assign(torch.zeros(1, 1, 3), pred, points, gts)
    assert ultra.gt_inds.tolist() == [[2]]
    assert ultra.labels.tolist() == [[1]]
    assert ultra.scores[0, 0] == pytest.approx(float(ious[1]), rel=1e-5)
    assert netspresso.gt_inds.tolist() == [[3]]
    assert netspresso.labels.tolist() == [[2]]
    assert netspresso.scores.tolist() == [[0.0]]
    assert netspresso.positive.all()


def test_small_boxes_are_widened_for_the_candidate_test():
    """A 4 × 4 box between points: no candidate as given; widened to 16 (ultralytics' second stride) it holds one."""
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0]])
    pred = torch.tensor([[[0.0, 0.0, 10.0, 8.0], [6.0, 0.0, 16.0, 8.0]]])
    gts = pad_targets([{"boxes": torch.tensor([[5.0, 2.0, 9.0, 6.0]]), "labels": torch.tensor([0])}])
    plain = TaskAlignedAssigner(style="ultralytics").assign(torch.zeros(1, 2, 1), pred, points, gts)
    widened = TaskAlignedAssigner(style="ultralytics", min_size=16.0).assign(torch.zeros(1, 2, 1), pred, points, gts)
    assert plain.gt_inds.tolist() == [[0, 0]]
    assert widened.gt_inds.tolist() == [[1, 1]]


def test_ultralytics_ignores_a_box_whose_coordinates_sum_to_zero_or_less():
    points = torch.tensor([[-4.0, -4.0]])
    pred = torch.tensor([[[-8.0, -8.0, 0.0, 0.0]]])
    gts = pad_targets([{"boxes": torch.tensor([[-10.0, -10.0, 1.0, 1.0]]), "labels": torch.tensor([0])}])
    ultra = TaskAlignedAssigner(style="ultralytics").assign(torch.zeros(1, 1, 1), pred, points, gts)
    netspresso = TaskAlignedAssigner(style="netspresso").assign(torch.zeros(1, 1, 1), pred, points, gts)
    assert ultra.gt_inds.tolist() == [[0]]
    assert netspresso.gt_inds.tolist() == [[1]]


@pytest.mark.parametrize("style", ["ultralytics", "netspresso"])
def test_no_boxes_and_degenerate_boxes_give_no_positives(style):
    logits, pred, points, _ = _scene(5, (1, 1))
    targets = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {
            "boxes": torch.tensor([[40.0, 40.0, 40.0, 60.0], [300.0, 300.0, 340.0, 350.0]]),
            "labels": torch.tensor([0, 1]),
        },
    ]
    out = TaskAlignedAssigner(style=style).assign(logits, pred, points, pad_targets(targets))
    assert not out.positive.any()
    assert out.scores.abs().sum() == 0
    assert torch.isfinite(out.scores).all()


class _Sizes(TorchDispatchMode):
    """Largest number of elements any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_1000_boxes_per_image_stay_within_the_chunk_budget_without_host_syncs():
    """No op makes a tensor larger than the chunk of (image, box, prior) pairs times 2 (box corners, two values a
    pair): one image's boxes × priors would be 10x that, boxes × priors × classes 800x; nothing is read back."""
    logits, pred, points, _ = _scene(6, (1, 1), num_classes=80)
    gen = torch.Generator().manual_seed(7)
    targets = random_targets(gen, (1000, 1000), 80, (SIDE, SIDE), min_size=4.0, max_size=40.0)
    gts = pad_targets(targets)
    budget = 1 << 16
    with SyncCounter() as counter, _Sizes() as rec:
        out = TaskAlignedAssigner(max_elements=budget).assign(logits, pred, points, gts)
    assert rec.largest <= 2 * budget < pred.shape[1] * 1000
    assert counter.syncs == [], counter.report()
    assert out.positive.any()


def test_bad_input_names_the_argument():
    logits, pred, points, targets = _scene(0, (2,))
    gts = pad_targets(targets)
    assigner = TaskAlignedAssigner()
    with pytest.raises(ValueError, match="cls_logits"):
        assigner.assign(logits[..., 0], pred, points, gts)
    with pytest.raises(ValueError, match="pred_boxes"):
        assigner.assign(logits, pred[..., :3], points, gts)
    with pytest.raises(ValueError, match="points"):
        assigner.assign(logits, pred, points[:-1], gts)
    with pytest.raises(ValueError, match="style"):
        TaskAlignedAssigner(style="mmdet")
    with pytest.raises(ValueError, match="topk"):
        TaskAlignedAssigner(topk=0)
    with pytest.raises(ValueError, match="min_size"):
        TaskAlignedAssigner(min_size=-1.0)


def test_inputs_are_not_modified():
    logits, pred, points, targets = _scene(1, (4, 2))
    gts = pad_targets(targets)
    copies = [t.clone() for t in (logits, pred, points, *gts)]
    TaskAlignedAssigner(min_size=16.0).assign(logits, pred, points, gts)
    for before, after in zip(copies, (logits, pred, points, *gts), strict=True):
        assert torch.equal(before, after)


def test_pairwise_ciou_is_bbox_overlaps_ciou():
    """The assigner's factored CIoU (arctangents per box) against the package's one IoU routine."""
    from lightning_losses.assigners.task_aligned import _pairwise_ciou, _power
    from lightning_losses.boxes import bbox_overlaps

    gen = torch.Generator().manual_seed(8)
    xy = torch.rand(2, 5, 2, generator=gen) * 100
    a = torch.cat([xy, xy + torch.rand(2, 5, 2, generator=gen) * 60], -1)
    xy = torch.rand(2, 40, 2, generator=gen) * 100
    b = torch.cat([xy, xy + torch.rand(2, 40, 2, generator=gen) * 60], -1)
    torch.testing.assert_close(_pairwise_ciou(a, b), bbox_overlaps(a, b, mode="ciou", eps=1e-7), rtol=0, atol=1e-7)
    x = torch.rand(50, generator=gen)
    for exponent in (0.0, 0.5, 1.0, 2.5, 6.0):
        torch.testing.assert_close(_power(x, exponent), x.pow(exponent))

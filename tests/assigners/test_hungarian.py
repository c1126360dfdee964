"""HungarianMatcher: costs against a literal per-pair reference, assignments against brute force over every
injective box → query map (small cases), and its bad-input behaviour.

``cost_matrix`` (tests/references/detr.py) computes each (query, box) cost with Python scalars from the stated
formulas: the focal class cost of Deformable DETR / RT-DETR with eps = 1e-8 inside the logarithms (or −softmax),
the L1 distance of normalised ``cxcywh`` boxes and the GIoU of their corners written out from its definition.
"""

from __future__ import annotations

import pytest
import torch

from lightning_losses.assigners.hungarian import NONFINITE_COST, HungarianMatcher, cxcywh_to_xyxy, xyxy_to_cxcywh
from tests.references.detr import brute_force, cost_matrix


def random_case(batch, queries, classes, width, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=g) * 2
    centers = torch.rand(batch, queries, 2, generator=g) * 0.6 + 0.2
    sizes = torch.rand(batch, queries, 2, generator=g) * 0.3 + 0.05
    boxes = torch.cat([centers, sizes], -1)
    gt_centers = torch.rand(batch, width, 2, generator=g) * 0.6 + 0.2
    gt_sizes = torch.rand(batch, width, 2, generator=g) * 0.3 + 0.05
    gts = torch.cat([gt_centers, gt_sizes], -1)
    labels = torch.randint(0, classes, (batch, width), generator=g)
    return logits, boxes, gts, labels


@pytest.mark.parametrize("class_cost", ["focal", "softmax"])
def test_cost_matches_per_pair_reference(class_cost):
    logits, boxes, gts, labels = random_case(2, 5, 4, 3, seed=1)
    matcher = HungarianMatcher(cost_class=1.5, cost_bbox=5.0, cost_giou=2.0, class_cost=class_cost, alpha=0.3)
    cost = matcher.cost(logits, boxes, gts, labels)
    assert cost.shape == (2, 5, 3)
    assert cost.dtype == torch.float32
    for b in range(2):
        expected = cost_matrix(
            logits[b], boxes[b], gts[b], labels[b], weights=(1.5, 5.0, 2.0), class_cost=class_cost, alpha=0.3
        )
        torch.testing.assert_close(cost[b].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("class_cost", ["focal", "softmax"])
def test_assignment_is_optimal_against_brute_force(seed, class_cost):
    queries = 4 + seed % 3
    counts = [seed % 4, 3, 0, min(queries, 4)]
    logits, boxes, gts, labels = random_case(len(counts), queries, 3, max(counts), seed)
    mask = torch.arange(max(counts))[None, :] < torch.tensor(counts)[:, None]
    matcher = HungarianMatcher(class_cost=class_cost)
    matched = matcher(logits, boxes, gts, labels, mask)
    assert matched.shape == (len(counts), max(counts))
    assert matched.dtype == torch.int64
    for b, n in enumerate(counts):
        cost = cost_matrix(logits[b], boxes[b], gts[b, :n], labels[b, :n], class_cost=class_cost)
        best, perm = brute_force(cost)
        ours = matched[b, :n].tolist()
        assert len(set(ours)) == n  # one-to-one
        assert sum(float(cost[q, j]) for j, q in enumerate(ours)) == pytest.approx(best, abs=1e-6)
        assert ours == perm  # random costs: the optimum is unique
        assert matched[b, n:].eq(0).all()


def test_solve_matches_layer_by_layer():
    layers = [random_case(3, 6, 4, 4, seed) for seed in range(3)]
    matcher = HungarianMatcher()
    costs = torch.stack([matcher.cost(*case) for case in layers])  # (L, B, Q, M)
    counts = [4, 1, 0]
    together = matcher.solve(costs, counts)
    assert together.shape == (3, 3, 4)
    for layer, case in enumerate(layers):
        mask = torch.arange(4)[None, :] < torch.tensor(counts)[:, None]
        torch.testing.assert_close(together[layer], matcher(*case, mask))


def test_more_boxes_than_queries_is_a_value_error():
    logits, boxes, gts, labels = random_case(2, 3, 2, 4, seed=0)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    with pytest.raises(ValueError, match=r"image 1 has 4 boxes but the predictions have only 3 queries"):
        HungarianMatcher()(logits, boxes, gts, labels, mask)


def test_nonfinite_predictions_get_a_finite_cost_and_are_matched_last():
    logits, boxes, gts, labels = random_case(1, 4, 3, 2, seed=3)
    boxes[0, 0] = float("nan")
    boxes[0, 1, 2] = float("inf")
    logits[0, 2] = float("nan")
    cost = HungarianMatcher().cost(logits, boxes, gts, labels)
    assert torch.isfinite(cost).all()
    assert (cost[0, :3] == NONFINITE_COST).all()
    matched = HungarianMatcher()(logits, boxes, gts, labels, torch.ones(1, 2, dtype=torch.bool))
    assert 3 in matched[0].tolist()  # the only finite query takes a box; another takes the other


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_extreme_logits(dtype):
    logits, boxes, gts, labels = random_case(2, 5, 3, 2, seed=4)
    logits = logits.sign() * 1e4
    cost = HungarianMatcher().cost(logits.to(dtype), boxes.to(dtype), gts, labels)
    assert cost.dtype == torch.float32
    assert torch.isfinite(cost).all()
    expected = torch.stack(
        [cost_matrix(logits[b].clamp(-60, 60), boxes[b].to(dtype), gts[b], labels[b]) for b in (0, 1)]
    )
    torch.testing.assert_close(cost.double(), expected, rtol=1e-3, atol=1e-3)


def test_bad_input():
    logits, boxes, gts, labels = random_case(2, 5, 3, 2, seed=0)
    matcher = HungarianMatcher()
    with pytest.raises(ValueError, match="pred_logits"):
        matcher.cost(logits[0], boxes, gts, labels)
    with pytest.raises(ValueError, match="pred_boxes"):
        matcher.cost(logits, boxes[..., :3], gts, labels)
    with pytest.raises(ValueError, match="gt_boxes"):
        matcher.cost(logits, boxes, gts[:1], labels)
    with pytest.raises(ValueError, match="gt_labels"):
        matcher.cost(logits, boxes, gts, labels[:, :1])
    with pytest.raises(TypeError, match="gt_labels"):
        matcher.cost(logits, boxes, gts, labels.float())
    with pytest.raises(ValueError, match="gt_mask"):
        matcher(logits, boxes, gts, labels, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="cost_bbox"):
        HungarianMatcher(cost_bbox=-1.0)
    with pytest.raises(ValueError, match="cost weights"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
    with pytest.raises(ValueError, match="class_cost"):
        HungarianMatcher(class_cost="sigmoid")


def test_box_conversions_round_trip():
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)
    torch.testing.assert_close(xyxy_to_cxcywh(boxes)[0], torch.tensor([0.3, 0.55, 0.4, 0.7]))

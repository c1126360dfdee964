"""ATSSCriterion against a literal reference of MMDetection 3.x ``ATSSHead.loss_by_feat``
(``tests/references/mmdet_atss_gfl.py``:
ATSSAssigner with per-level topk and the -INF trick, per-level losses, bbox avg factor = max(Σ centerness, 1))."""

from __future__ import annotations

import pytest
import torch

from lightning_losses import ATSSCriterion, CrossEntropyLoss, DIoULoss, FocalLoss, GIoULoss, LossMetric
from tests.references.mmdet_atss_gfl import ATSS_ANCHORS, ATSS_STDS, atss_assign, atss_loss_by_feat, atss_targets
from tests.references.mmdet_boxes import bbox_overlaps, delta_encode, grid_anchors
from tests.references.mmdet_dense_heads import STRIDES, total
from tests.references.scenes import (
    FEATMAP_SIZES,
    SCENES,
    assert_terms_match,
    levels_to_maps,
    random_maps,
    random_targets,
    scene,
)

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

C = 4


def _inputs(name: str) -> tuple[list, list, list, list[dict], list[tuple[int, int]]]:
    generator, targets, sizes = scene(name, C)
    cls_scores = random_maps(generator, 2, C, sizes)
    bbox_preds = random_maps(generator, 2, 4, sizes, scale=0.5)
    centerness = random_maps(generator, 2, 1, sizes)
    return cls_scores, bbox_preds, centerness, targets, sizes


@pytest.mark.parametrize("name", list(SCENES))
def test_equals_atsshead_loss_by_feat(name):
    """Reference: ATSSHead.loss_by_feat with the ATSS config (topk 9, stds .1/.2, GIoU ×2); values and grads."""
    cls_scores, bbox_preds, centerness, targets, _ = _inputs(name)
    got = ATSSCriterion(C)(cls_scores, bbox_preds, centerness, targets)
    want = total(atss_loss_by_feat(cls_scores, bbox_preds, centerness, targets, C))
    assert_terms_match(got, want, cls_scores + bbox_preds + centerness)


def test_single_level_threshold_uses_the_unbiased_std():
    """Reference on one level (9 candidates per box): some candidate IoUs lie between mean + biased std and
    mean + unbiased std, so only torch.std's default (N - 1) reproduces MMDetection's positives."""
    generator = torch.Generator().manual_seed(105)
    targets = random_targets(generator, (4, 3), C, max_size=60.0)
    sizes = [(16, 16)]
    anchors = grid_anchors(sizes, (8,), **ATSS_ANCHORS)[0]
    between = 0
    for t in targets:
        centers = (anchors[:, :2] + anchors[:, 2:]) / 2
        gt_centers = (t["boxes"][:, :2] + t["boxes"][:, 2:]) / 2
        near = torch.cdist(centers, gt_centers).topk(9, dim=0, largest=False).indices
        ious = bbox_overlaps(anchors, t["boxes"])[near, torch.arange(len(gt_centers))]
        biased = ious.mean(0) + ious.std(0, unbiased=False)
        between += int(((ious >= biased) & (ious < ious.mean(0) + ious.std(0))).sum())
    assert between > 0
    cls_scores = random_maps(generator, 2, C, sizes)
    bbox_preds = random_maps(generator, 2, 4, sizes, scale=0.5)
    centerness = random_maps(generator, 2, 1, sizes)
    got = ATSSCriterion(C, strides=(8,))(cls_scores, bbox_preds, centerness, targets)
    want = total(atss_loss_by_feat(cls_scores, bbox_preds, centerness, targets, C, strides=(8,)))
    assert_terms_match(got, want, cls_scores + bbox_preds + centerness)


def test_scenes_exercise_several_levels_and_shared_candidates():
    """The scenes are not trivial: positives on three levels, and priors that are candidates of several boxes."""
    levels = set()
    shared = 0
    for name in SCENES:
        _, targets, sizes = scene(name, C)
        anchors = grid_anchors(sizes, STRIDES, **ATSS_ANCHORS)
        flat = torch.cat(anchors)
        counts = [len(a) for a in anchors]
        starts = torch.tensor([0, *counts]).cumsum(0)
        for t in targets:
            gt_inds, _ = atss_assign(flat, counts, t["boxes"], t["labels"])
            pos = torch.nonzero(gt_inds > 0).squeeze(1)
            levels |= set((torch.bucketize(pos, starts[1:], right=True)).tolist())
            if len(t["boxes"]) > 1:
                centers = (flat[:, :2] + flat[:, 2:]) / 2
                gt_centers = (t["boxes"][:, :2] + t["boxes"][:, 2:]) / 2
                near = torch.cdist(centers, gt_centers)[: counts[0]].topk(9, dim=0, largest=False).indices
                shared += len(near.flatten()) - len(near.flatten().unique())
    assert len(levels) >= 3
    assert shared > 0


def test_per_image_pad_shapes_restrict_assignment_and_classification():
    """Reference: ATSSHead takes valid flags from each image's pad_shape (allowed_border -1 → inside = valid):
    anchors on padded cells take no part in the assignment nor in num_level_priors, and get label weight 0."""
    generator = torch.Generator().manual_seed(5)
    pad_shapes = [(128, 128), (64, 96)]
    targets = random_targets(generator, (3, 4), C, pad_shapes, max_size=60.0)
    sizes = FEATMAP_SIZES
    cls_scores = random_maps(generator, 2, C, sizes)
    bbox_preds = random_maps(generator, 2, 4, sizes, scale=0.5)
    centerness = random_maps(generator, 2, 1, sizes)
    got = ATSSCriterion(C)(cls_scores, bbox_preds, centerness, targets, image_size=torch.tensor(pad_shapes))
    want = total(atss_loss_by_feat(cls_scores, bbox_preds, centerness, targets, C, pad_shapes=pad_shapes))
    unpadded = total(atss_loss_by_feat(cls_scores, bbox_preds, centerness, targets, C))
    assert not torch.allclose(unpadded["loss_cls"], want["loss_cls"])  # the flags matter in this scene
    assert_terms_match(got, want, cls_scores + bbox_preds + centerness)


def test_perfect_deltas_give_zero_box_loss():
    """Deltas encoded (stds .1, .1, .2, .2) from each positive anchor to its box: GIoU loss ≈ 0."""
    cls_scores, _, centerness, targets, sizes = _inputs("seed0")
    anchors, labels, _, bbox_targets, _, _ = atss_targets(cls_scores, targets, C)
    per_level = []
    for a, lab, t in zip(anchors, labels, bbox_targets, strict=True):
        deltas = torch.zeros_like(t)
        pos = lab < C
        deltas[pos] = delta_encode(a[pos], t[pos], (0.0,) * 4, ATSS_STDS)
        per_level.append(deltas)
    assert sum(int((lab < C).sum()) for lab in labels) > 0
    bbox_preds = [m.requires_grad_() for m in levels_to_maps(per_level, sizes)]
    out = ATSSCriterion(C)(cls_scores, bbox_preds, centerness, targets)
    assert out["loss_bbox"].detach().item() < 1e-5
    noisy = [(m + 0.2).detach() for m in bbox_preds]
    assert ATSSCriterion(C)(cls_scores, noisy, centerness, targets)["loss_bbox"].detach().item() > 1e-2


def test_batch_without_boxes_gives_finite_cls_and_zero_box_terms_with_graph():
    cls_scores, bbox_preds, centerness, _, _ = _inputs("seed0")
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)} for _ in range(2)]
    got = ATSSCriterion(C)(cls_scores, bbox_preds, centerness, empty)
    want = total(atss_loss_by_feat(cls_scores, bbox_preds, centerness, empty, C))
    assert torch.isfinite(got["loss_cls"])
    torch.testing.assert_close(got["loss_cls"], want["loss_cls"], rtol=1e-4, atol=1e-6)
    for term in ("loss_bbox", "loss_centerness"):
        assert got[term].detach().item() == 0.0
        assert got[term].requires_grad
        for grad in torch.autograd.grad(got[term], bbox_preds + centerness, allow_unused=True):
            assert grad is None or torch.count_nonzero(grad) == 0


@pytest.mark.parametrize(
    ("term", "spec", "cls", "loss_weight"),
    [
        ("loss_bbox", {"class_path": "lightning_losses.GIoULoss", "init_args": {"loss_weight": 2.0}}, GIoULoss, 2.0),
        ("loss_bbox", {"type": "DIoULoss"}, DIoULoss, 1.0),
        ("loss_cls", {"type": "FocalLoss", "alpha": 0.5}, FocalLoss, 1.0),
        (
            "loss_centerness",
            {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": 3.0},
            CrossEntropyLoss,
            3.0,
        ),
    ],
)
def test_terms_are_built_from_configs(term, spec, cls, loss_weight):
    module = getattr(ATSSCriterion(C, **{term: spec}), term)
    assert type(module) is cls
    assert module.loss_weight == loss_weight


def test_default_terms_equal_their_explicit_config():
    """Defaults: FocalLoss(2, .25), GIoULoss(loss_weight=2), CrossEntropyLoss(use_sigmoid) — the same values
    as building them from configs."""
    default = ATSSCriterion(C)
    assert type(default.loss_bbox) is GIoULoss
    assert default.loss_bbox.loss_weight == 2.0
    configured = ATSSCriterion(
        C,
        loss_cls={"type": "FocalLoss", "gamma": 2.0, "alpha": 0.25},
        loss_bbox={"class_path": "lightning_losses.GIoULoss", "init_args": {"loss_weight": 2.0}},
        loss_centerness={"type": "CrossEntropyLoss", "use_sigmoid": True},
    )
    cls_scores, bbox_preds, centerness, targets, _ = _inputs("seed2")
    a = default(cls_scores, bbox_preds, centerness, targets)
    b = configured(cls_scores, bbox_preds, centerness, targets)
    for term in ATSSCriterion.terms:
        torch.testing.assert_close(a[term], b[term])


def test_terms_are_loss_metric_children_whose_compute_is_the_mean_of_returned_values():
    criterion = ATSSCriterion(C)
    children = dict(criterion.named_children())
    for term in ATSSCriterion.terms:
        assert isinstance(children[term], LossMetric)
    returned = [criterion(*_inputs(name)[:4]) for name in ("seed0", "seed1", "seed2")]
    for term in ATSSCriterion.terms:
        expected = torch.stack([r[term].detach() for r in returned]).mean()
        torch.testing.assert_close(getattr(criterion, term).compute(), expected)


def test_bad_inputs_raise_naming_the_argument():
    cls_scores, bbox_preds, centerness, targets, _ = _inputs("seed0")
    criterion = ATSSCriterion(C)
    with pytest.raises(ValueError, match="bbox_preds"):
        criterion(cls_scores, bbox_preds[:2], centerness, targets)
    with pytest.raises(TypeError, match="centerness"):
        criterion(cls_scores, bbox_preds, None, targets)
    with pytest.raises(ValueError, match="cls_scores"):
        criterion([torch.zeros(2, C + 1, *m.shape[-2:]) for m in cls_scores], bbox_preds, centerness, targets)
    with pytest.raises(ValueError, match="bbox_preds"):
        criterion(cls_scores, [torch.zeros(2, 6, *m.shape[-2:]) for m in bbox_preds], centerness, targets)
    with pytest.raises(ValueError, match="targets"):
        criterion(cls_scores, bbox_preds, centerness, targets[:1])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        criterion(cls_scores, bbox_preds, centerness, [{"boxes": torch.zeros(2, 4), "labels": torch.zeros(3)}] * 2)


def test_non_finite_deltas_on_negative_anchors_leave_box_terms_unchanged():
    """MMDetection scores positive anchors only: NaN / overflowing deltas elsewhere change nothing (0 · NaN)."""
    cls_scores, bbox_preds, centerness, targets, _ = _inputs("seed0")
    bbox_preds = [b.detach().requires_grad_() for b in bbox_preds]
    clean = ATSSCriterion(C)(cls_scores, bbox_preds, centerness, targets)
    grads = torch.autograd.grad(clean["loss_bbox"], bbox_preds)
    broken = []
    for b, g in zip(bbox_preds, grads, strict=True):
        negative = (g == 0).all(dim=1, keepdim=True).expand_as(b)
        poison = torch.where(torch.rand(b.shape) < 0.5, torch.full_like(b, float("nan")), torch.full_like(b, 1e38))
        broken.append(torch.where(negative, poison, b.detach()).requires_grad_())
    assert any((g == 0).all(dim=1).any() for g in grads)
    got = ATSSCriterion(C)(cls_scores, broken, centerness, targets)
    torch.testing.assert_close(got["loss_bbox"], clean["loss_bbox"])
    for g_new, g_old in zip(torch.autograd.grad(got["loss_bbox"], broken), grads, strict=True):
        torch.testing.assert_close(g_new, g_old)

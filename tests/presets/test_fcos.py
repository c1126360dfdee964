"""FCOSCriterion against a literal reference of MMDetection 3.x ``FCOSHead.loss_by_feat``
(``tests/references/mmdet_fcos.py``:
``_get_targets_single`` with the areas = INF trick, level-then-image flattening, per-term avg factors)."""

from __future__ import annotations

import pytest
import torch

from lightning_losses import CrossEntropyLoss, FCOSCriterion, FocalLoss, GIoULoss, IoULoss, L1Loss, LossMetric
from tests.references.mmdet_boxes import grid_points
from tests.references.mmdet_dense_heads import STRIDES
from tests.references.mmdet_fcos import fcos_get_targets, fcos_loss_by_feat
from tests.references.scenes import FEATMAP_SIZES, SCENES, assert_terms_match, levels_to_maps, random_maps, scene

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

C = 4


def _inputs(name: str, stride_units: bool = False) -> tuple[list, list, list, list[dict], list[tuple[int, int]]]:
    """Scene maps; ``bbox_preds`` are positive distances (the head's ``exp`` / ``clamp`` output), in pixels
    (about 12 px) or, for ``norm_on_bbox``, in strides (about 1.6)."""
    generator, targets, sizes = scene(name, C)
    cls_scores = random_maps(generator, 2, C, sizes)
    shift = 0.5 if stride_units else 2.5
    bbox_preds = random_maps(generator, 2, 4, sizes, scale=0.5, shift=shift, positive=True)
    centerness = random_maps(generator, 2, 1, sizes)
    return cls_scores, bbox_preds, centerness, targets, sizes


@pytest.mark.parametrize("name", list(SCENES))
def test_default_config_equals_fcoshead_loss_by_feat(name):
    """Reference: FCOSHead.loss_by_feat, default config (no center sampling, IoULoss(log)); values and grads."""
    cls_scores, bbox_preds, centerness, targets, _ = _inputs(name)
    got = FCOSCriterion(C)(cls_scores, bbox_preds, centerness, targets)
    want = fcos_loss_by_feat(cls_scores, bbox_preds, centerness, targets, C)
    assert_terms_match(got, want, cls_scores + bbox_preds + centerness)


@pytest.mark.parametrize("name", ["seed0", "large"])
def test_center_sampling_normbbox_giou_config_equals_reference(name):
    """Reference: the fcos ...-center-normbbox-centeronreg-giou config (radius 1.5, targets / stride, GIoULoss)."""
    cls_scores, bbox_preds, centerness, targets, _ = _inputs(name, stride_units=True)
    criterion = FCOSCriterion(C, center_sampling=True, norm_on_bbox=True, loss_bbox={"type": "GIoULoss"})
    got = criterion(cls_scores, bbox_preds, centerness, targets)
    want = fcos_loss_by_feat(
        cls_scores, bbox_preds, centerness, targets, C, center_sampling=True, norm_on_bbox=True, loss_bbox="giou"
    )
    assert_terms_match(got, want, cls_scores + bbox_preds + centerness)


def test_equal_area_boxes_the_first_box_wins():
    """Reference: areas.min(dim=1) keeps the first gt among equal areas (integer boxes, exact ties)."""
    boxes = torch.tensor([[0.0, 0.0, 16.0, 32.0], [0.0, 0.0, 32.0, 16.0], [40.0, 40.0, 104.0, 96.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 3, 0])}, {"boxes": boxes[2:], "labels": torch.tensor([2])}]
    generator = torch.Generator().manual_seed(4)
    sizes = FEATMAP_SIZES
    cls_scores = random_maps(generator, 2, C, sizes)
    bbox_preds = random_maps(generator, 2, 4, sizes, scale=0.5, shift=2.0, positive=True)
    centerness = random_maps(generator, 2, 1, sizes)
    got = FCOSCriterion(C)(cls_scores, bbox_preds, centerness, targets)
    want = fcos_loss_by_feat(cls_scores, bbox_preds, centerness, targets, C)
    assert_terms_match(got, want, cls_scores + bbox_preds + centerness)
    labels, _ = fcos_get_targets(grid_points(sizes, STRIDES), targets, C)
    assert labels[0][[0, 1, 16, 17]].tolist() == [1, 1, 1, 1]  # points (4|12, 4|12) lie in boxes 0 and 1


def test_regress_ranges_are_inclusive_at_both_ends():
    """Reference: lo <= max(l, t, r, b) <= hi. Integer boxes put a largest distance of exactly 64 on a level-0
    point (upper end of (-1, 64)) and on a level-1 point (lower end of (64, 128))."""
    boxes = torch.tensor([[-56.0, 0.0, 40.0, 24.0], [0.0, 40.0, 68.0, 60.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([2, 1])}] * 2
    generator = torch.Generator().manual_seed(6)
    sizes = FEATMAP_SIZES
    cls_scores = random_maps(generator, 2, C, sizes)
    bbox_preds = random_maps(generator, 2, 4, sizes, scale=0.5, shift=2.0, positive=True)
    centerness = random_maps(generator, 2, 1, sizes)
    got = FCOSCriterion(C)(cls_scores, bbox_preds, centerness, targets)
    want = fcos_loss_by_feat(cls_scores, bbox_preds, centerness, targets, C)
    assert_terms_match(got, want, cls_scores + bbox_preds + centerness)
    labels, bbox_targets = fcos_get_targets(grid_points(sizes, STRIDES), targets, C)
    assert labels[0][5 * 16].item() == 1  # point (4, 44): (l, t, r, b) = (4, 4, 64, 16)
    assert bbox_targets[0][5 * 16].max().item() == 64.0
    assert labels[1][0].item() == 2  # point (8, 8): (64, 8, 32, 16)
    assert bbox_targets[1][0].max().item() == 64.0


def test_perfect_distances_give_zero_box_loss():
    """Exact (l, t, r, b) of every positive point (reference targets): -log IoU ≈ 0."""
    cls_scores, _, centerness, targets, sizes = _inputs("seed0")
    labels, bbox_targets = fcos_get_targets(grid_points(sizes, STRIDES), targets, C)
    per_level = [
        torch.where((lab < C)[:, None], t, torch.ones_like(t)).reshape(2, -1, 4)
        for lab, t in zip(labels, bbox_targets, strict=True)
    ]
    bbox_preds = [m.requires_grad_() for m in levels_to_maps(per_level, sizes)]
    out = FCOSCriterion(C)(cls_scores, bbox_preds, centerness, targets)
    assert out["loss_bbox"].detach().item() < 1e-5
    scaled = [(m * 1.2).detach() for m in bbox_preds]
    assert FCOSCriterion(C)(cls_scores, scaled, centerness, targets)["loss_bbox"].detach().item() > 1e-2


def test_batch_without_boxes_gives_finite_cls_and_zero_box_terms_with_graph():
    """No box anywhere: loss_cls = FL / 1 over every point (reference); box and centerness terms exactly 0,
    and they backpropagate zeros."""
    cls_scores, bbox_preds, centerness, _, _ = _inputs("seed0")
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)} for _ in range(2)]
    got = FCOSCriterion(C)(cls_scores, bbox_preds, centerness, empty)
    want = fcos_loss_by_feat(cls_scores, bbox_preds, centerness, empty, C)
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
        ("loss_bbox", {"type": "L1Loss"}, L1Loss, 1.0),
        ("loss_bbox", {"class_path": "lightning_losses.GIoULoss", "init_args": {"loss_weight": 2.0}}, GIoULoss, 2.0),
        ("loss_bbox", {"type": "IoULoss", "mode": "linear"}, IoULoss, 1.0),
        ("loss_cls", {"type": "FocalLoss", "gamma": 1.5}, FocalLoss, 1.0),
        (
            "loss_centerness",
            {"class_path": "lightning_losses.CrossEntropyLoss", "init_args": {"use_sigmoid": True, "loss_weight": 0.5}},
            CrossEntropyLoss,
            0.5,
        ),
    ],
)
def test_terms_are_built_from_configs(term, spec, cls, loss_weight):
    module = getattr(FCOSCriterion(C, **{term: spec}), term)
    assert type(module) is cls
    assert module.loss_weight == loss_weight


def test_default_terms_and_configured_weight_scales_the_term():
    default = FCOSCriterion(C)
    assert type(default.loss_cls) is FocalLoss
    assert type(default.loss_bbox) is IoULoss
    assert default.loss_bbox.mode == "log"
    assert type(default.loss_centerness) is CrossEntropyLoss
    assert default.loss_centerness.use_sigmoid
    cls_scores, bbox_preds, centerness, targets, _ = _inputs("seed2")
    base = default(cls_scores, bbox_preds, centerness, targets)
    half = FCOSCriterion(C, loss_centerness={"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": 0.5})
    out = half(cls_scores, bbox_preds, centerness, targets)
    torch.testing.assert_close(out["loss_centerness"], 0.5 * base["loss_centerness"])
    torch.testing.assert_close(out["loss_cls"], base["loss_cls"])


def test_terms_are_loss_metric_children_whose_compute_is_the_mean_of_returned_values():
    criterion = FCOSCriterion(C)
    children = dict(criterion.named_children())
    for term in FCOSCriterion.terms:
        assert isinstance(children[term], LossMetric)
    returned = [criterion(*_inputs(name)[:4]) for name in ("seed0", "seed1", "seed2")]
    for term in FCOSCriterion.terms:
        expected = torch.stack([r[term].detach() for r in returned]).mean()
        torch.testing.assert_close(getattr(criterion, term).compute(), expected)


def test_bad_inputs_raise_naming_the_argument():
    cls_scores, bbox_preds, centerness, targets, _ = _inputs("seed0")
    criterion = FCOSCriterion(C)
    with pytest.raises(ValueError, match="cls_scores"):
        criterion(cls_scores[:3], bbox_preds, centerness, targets)
    with pytest.raises(ValueError, match="centerness"):
        criterion(cls_scores, bbox_preds, centerness[:4], targets)
    with pytest.raises(TypeError, match="bbox_preds"):
        criterion(cls_scores, bbox_preds[0], centerness, targets)
    with pytest.raises(ValueError, match="cls_scores"):
        criterion([torch.zeros(2, C + 1, *m.shape[-2:]) for m in cls_scores], bbox_preds, centerness, targets)
    with pytest.raises(ValueError, match="bbox_preds"):
        criterion(cls_scores, [torch.zeros(2, 5, *m.shape[-2:]) for m in bbox_preds], centerness, targets)
    with pytest.raises(ValueError, match="centerness"):
        criterion(cls_scores, bbox_preds, [torch.zeros(2, 2, *m.shape[-2:]) for m in centerness], targets)
    with pytest.raises(ValueError, match="targets"):
        criterion(cls_scores, bbox_preds, centerness, targets * 2)
    with pytest.raises(TypeError, match=r"targets\[1\]"):
        criterion(cls_scores, bbox_preds, centerness, [targets[0], {"boxes": torch.zeros(0, 4)}])

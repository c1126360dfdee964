"""GFLCriterion against a literal reference of MMDetection 3.x ``GFLHead.loss_by_feat``
(``tests/references/mmdet_atss_gfl.py``:
ATSS targets, ``loss_by_feat_single`` per level in stride units with Integral, QFL / GIoU ×2 / DFL ×0.25)."""

from __future__ import annotations

import pytest
import torch

from lightning_losses import DistributionFocalLoss, GFLCriterion, GIoULoss, LossMetric, QualityFocalLoss
from tests.references.mmdet_atss_gfl import atss_targets, gfl_loss_by_feat
from tests.references.mmdet_boxes import bbox2distance
from tests.references.mmdet_dense_heads import STRIDES, total
from tests.references.scenes import (
    FEATMAP_SIZES,
    SCENES,
    assert_terms_match,
    grads,
    levels_to_maps,
    random_maps,
    random_targets,
    scene,
)

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

C = 4
REG_MAX = 16
BINS = REG_MAX + 1


def _inputs(name: str) -> tuple[list, list, list[dict], list[tuple[int, int]]]:
    generator, targets, sizes = scene(name, C)
    cls_scores = random_maps(generator, 2, C, sizes)
    bbox_preds = random_maps(generator, 2, 4 * BINS, sizes)
    return cls_scores, bbox_preds, targets, sizes


@pytest.mark.parametrize("name", list(SCENES))
def test_equals_gflhead_loss_by_feat(name):
    """Reference: GFLHead.loss_by_feat with the GFL config (reg_max 16); values and gradients of every term."""
    cls_scores, bbox_preds, targets, _ = _inputs(name)
    got = GFLCriterion(C)(cls_scores, bbox_preds, targets)
    want = total(gfl_loss_by_feat(cls_scores, bbox_preds, targets, C))
    assert_terms_match(got, want, cls_scores + bbox_preds)


def test_smaller_reg_max_equals_reference():
    """Reference with reg_max = 7 (8 bins): DFL targets clamped to [0, 6.9], so many sides are clamped."""
    generator, targets, sizes = scene("seed0", C)
    cls_scores = random_maps(generator, 2, C, sizes)
    bbox_preds = random_maps(generator, 2, 4 * 8, sizes)
    got = GFLCriterion(C, reg_max=7)(cls_scores, bbox_preds, targets)
    want = total(gfl_loss_by_feat(cls_scores, bbox_preds, targets, C, reg_max=7))
    assert_terms_match(got, want, cls_scores + bbox_preds)


def test_low_confidence_uses_the_clamped_normaliser():
    """Reference with every class logit around -6: Σ weight (max sigmoid of the positives) < 1, clamped to 1."""
    cls_scores, bbox_preds, targets, _ = _inputs("seed2")
    low = [(m.detach() - 6.0).requires_grad_() for m in cls_scores]
    _, labels, *_ = atss_targets(low, targets, C)
    weight = sum(
        m.detach().permute(0, 2, 3, 1).reshape(2, -1, C)[lab < C].sigmoid().amax(-1).sum()
        for m, lab in zip(low, labels, strict=True)
    )
    assert 0 < weight < 1  # so the normaliser is the clamp
    got = GFLCriterion(C)(low, bbox_preds, targets)
    want = total(gfl_loss_by_feat(low, bbox_preds, targets, C))
    assert_terms_match(got, want, low + bbox_preds)


def test_per_image_pad_shapes_restrict_assignment_and_classification():
    """Reference: GFLHead (as ATSSHead) takes valid flags from each image's pad_shape: anchors on padded cells
    take no part in the assignment nor in num_level_priors, and get label weight 0 in the QFL."""
    generator = torch.Generator().manual_seed(5)
    pad_shapes = [(128, 128), (64, 96)]
    targets = random_targets(generator, (3, 4), C, pad_shapes, max_size=60.0)
    sizes = FEATMAP_SIZES
    cls_scores = random_maps(generator, 2, C, sizes)
    bbox_preds = random_maps(generator, 2, 4 * BINS, sizes)
    got = GFLCriterion(C)(cls_scores, bbox_preds, targets, image_size=torch.tensor(pad_shapes))
    want = total(gfl_loss_by_feat(cls_scores, bbox_preds, targets, C, pad_shapes=pad_shapes))
    unpadded = total(gfl_loss_by_feat(cls_scores, bbox_preds, targets, C))
    assert not torch.allclose(unpadded["loss_cls"], want["loss_cls"])  # the flags matter in this scene
    assert_terms_match(got, want, cls_scores + bbox_preds)


def test_quality_target_and_box_weight_are_detached():
    """The QFL target (IoU of the decoded prediction) and the box weight (max class sigmoid) carry no gradient:
    loss_cls does not depend on bbox_preds, loss_bbox / loss_dfl not on cls_scores."""
    cls_scores, bbox_preds, targets, _ = _inputs("seed0")
    out = GFLCriterion(C)(cls_scores, bbox_preds, targets)
    for grad in grads(out["loss_cls"], bbox_preds):
        assert torch.count_nonzero(grad) == 0
    for term in ("loss_bbox", "loss_dfl"):
        for grad in grads(out[term], cls_scores):
            assert torch.count_nonzero(grad) == 0
    assert any(torch.count_nonzero(g) for g in grads(out["loss_cls"], cls_scores))


def _two_bin_logits(distances: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax puts (⌈d⌉ - d, d - ⌊d⌋) on the bins around each distance: the integral is d."""
    low = distances.floor().clamp(max=REG_MAX - 1)
    frac = distances - low
    bins = torch.arange(BINS, dtype=torch.float32)
    prob = torch.where(bins == low[..., None], 1 - frac[..., None], torch.zeros(()))
    prob = torch.where(bins == low[..., None] + 1, frac[..., None], prob)
    return prob.clamp(min=1e-12).log().flatten(-2)


def test_sharp_exact_distributions_give_near_zero_giou_loss():
    """Distributions whose integral is each positive's exact distance (stride units): 2·GIoU term ≈ 0."""
    cls_scores, bbox_preds, targets, sizes = _inputs("seed0")
    anchors, labels, _, bbox_targets, _, _ = atss_targets(cls_scores, targets, C)
    per_level = []
    for a, lab, t, stride, m in zip(anchors, labels, bbox_targets, STRIDES, bbox_preds, strict=True):
        logits = m.detach().permute(0, 2, 3, 1).reshape(2, -1, 4 * BINS).clone()
        pos = lab < C
        centers = (a[pos][:, :2] + a[pos][:, 2:]) / 2 / stride
        distances = bbox2distance(centers, t[pos] / stride)
        assert bool((distances < REG_MAX).all())  # representable by the integral
        logits[pos] = _two_bin_logits(distances)
        per_level.append(logits)
    assert sum(int((lab < C).sum()) for lab in labels) > 0
    sharp = [m.requires_grad_() for m in levels_to_maps(per_level, sizes)]
    criterion = GFLCriterion(C)
    out = criterion(cls_scores, sharp, targets)
    assert out["loss_bbox"].detach().item() < 1e-5
    assert criterion(cls_scores, bbox_preds, targets)["loss_bbox"].detach().item() > 0.1
    want = total(gfl_loss_by_feat(cls_scores, sharp, targets, C))
    assert_terms_match(out, want, cls_scores + sharp)


def test_batch_without_boxes_gives_finite_cls_and_zero_box_terms_with_graph():
    cls_scores, bbox_preds, _, _ = _inputs("seed0")
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)} for _ in range(2)]
    got = GFLCriterion(C)(cls_scores, bbox_preds, empty)
    want = total(gfl_loss_by_feat(cls_scores, bbox_preds, empty, C))
    assert torch.isfinite(got["loss_cls"])
    torch.testing.assert_close(got["loss_cls"], want["loss_cls"], rtol=1e-4, atol=1e-6)
    for term in ("loss_bbox", "loss_dfl"):
        assert got[term].detach().item() == 0.0
        assert got[term].requires_grad
        for grad in torch.autograd.grad(got[term], bbox_preds):
            assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize(
    ("term", "spec", "cls", "loss_weight"),
    [
        ("loss_cls", {"type": "QualityFocalLoss", "beta": 1.5}, QualityFocalLoss, 1.0),
        ("loss_bbox", {"class_path": "lightning_losses.GIoULoss", "init_args": {"loss_weight": 2.0}}, GIoULoss, 2.0),
        ("loss_dfl", {"type": "DistributionFocalLoss", "loss_weight": 0.5}, DistributionFocalLoss, 0.5),
    ],
)
def test_terms_are_built_from_configs(term, spec, cls, loss_weight):
    module = getattr(GFLCriterion(C, **{term: spec}), term)
    assert type(module) is cls
    assert module.loss_weight == loss_weight


def test_default_terms_and_configured_weight_scales_the_term():
    default = GFLCriterion(C)
    assert type(default.loss_cls) is QualityFocalLoss
    assert default.loss_cls.beta == 2.0
    assert type(default.loss_bbox) is GIoULoss
    assert default.loss_bbox.loss_weight == 2.0
    assert type(default.loss_dfl) is DistributionFocalLoss
    assert default.loss_dfl.loss_weight == 0.25
    cls_scores, bbox_preds, targets, _ = _inputs("seed2")
    base = default(cls_scores, bbox_preds, targets)
    out = GFLCriterion(C, loss_dfl={"type": "DistributionFocalLoss", "loss_weight": 1.0})(
        cls_scores, bbox_preds, targets
    )
    torch.testing.assert_close(out["loss_dfl"], 4 * base["loss_dfl"])
    torch.testing.assert_close(out["loss_bbox"], base["loss_bbox"])


def test_terms_are_loss_metric_children_whose_compute_is_the_mean_of_returned_values():
    criterion = GFLCriterion(C)
    children = dict(criterion.named_children())
    for term in GFLCriterion.terms:
        assert isinstance(children[term], LossMetric)
    returned = [criterion(*_inputs(name)[:3]) for name in ("seed0", "seed1", "seed2")]
    for term in GFLCriterion.terms:
        expected = torch.stack([r[term].detach() for r in returned]).mean()
        torch.testing.assert_close(getattr(criterion, term).compute(), expected)


def test_bad_inputs_raise_naming_the_argument():
    cls_scores, bbox_preds, targets, _ = _inputs("seed0")
    criterion = GFLCriterion(C)
    with pytest.raises(ValueError, match="bbox_preds"):
        criterion(cls_scores, bbox_preds[1:], targets)
    with pytest.raises(ValueError, match="bbox_preds"):
        criterion(cls_scores, [torch.zeros(2, 4 * 16, *m.shape[-2:]) for m in bbox_preds], targets)
    with pytest.raises(ValueError, match="bbox_preds"):  # reg_max 7 maps to a reg_max 16 criterion: 64 % 68
        criterion(cls_scores, [torch.zeros(2, 4 * 8 * 2, *m.shape[-2:]) for m in bbox_preds], targets)
    with pytest.raises(ValueError, match="cls_scores"):
        criterion([torch.zeros(2, C + 2, *m.shape[-2:]) for m in cls_scores], bbox_preds, targets)
    with pytest.raises(ValueError, match="targets"):
        criterion(cls_scores, bbox_preds, targets * 2)
    with pytest.raises(ValueError, match="reg_max"):
        GFLCriterion(C, reg_max=0)


def test_non_finite_logits_on_negative_cells_leave_box_and_dfl_terms_unchanged():
    """MMDetection scores positive cells only: NaN distribution logits elsewhere change neither term nor gradient."""
    cls_scores, bbox_preds, targets, _ = _inputs("seed0")
    bbox_preds = [b.detach().requires_grad_() for b in bbox_preds]
    clean = GFLCriterion(C)(cls_scores, bbox_preds, targets)
    grads = torch.autograd.grad(clean["loss_bbox"] + clean["loss_dfl"], bbox_preds)
    broken = [
        torch.where((g == 0).all(dim=1, keepdim=True), float("nan"), b.detach()).requires_grad_()
        for b, g in zip(bbox_preds, grads, strict=True)
    ]
    got = GFLCriterion(C)(cls_scores, broken, targets)
    for term in ("loss_bbox", "loss_dfl"):
        torch.testing.assert_close(got[term], clean[term])
    new_grads = torch.autograd.grad(got["loss_bbox"] + got["loss_dfl"], broken)
    for g_new, g_old in zip(new_grads, grads, strict=True):
        torch.testing.assert_close(g_new, g_old)


def test_box_and_dfl_terms_score_a_bounded_number_of_rows_and_backpropagate_separately():
    """Rows scored: min(P, topk · L · G) per image, not every prior; each term's gradient without retain_graph."""
    cls_scores, bbox_preds, targets, _ = _inputs("seed0")
    criterion = GFLCriterion(C)
    rows: dict[str, int] = {}
    for term in ("loss_bbox", "loss_dfl"):
        getattr(criterion, term).register_forward_pre_hook(lambda m, args, term=term: rows.update({term: len(args[0])}))
    got = criterion(cls_scores, bbox_preds, targets)
    num_gts = max(len(t["boxes"]) for t in targets)
    bound = min(sum(m.shape[-2] * m.shape[-1] for m in cls_scores), 9 * len(cls_scores) * num_gts)
    assert bound < sum(m.shape[-2] * m.shape[-1] for m in cls_scores)  # 225 of 341 priors
    assert rows == {"loss_bbox": 2 * bound, "loss_dfl": 2 * bound * 4}
    want = total(gfl_loss_by_feat(cls_scores, bbox_preds, targets, C))
    assert_terms_match(got, want, cls_scores + bbox_preds)
    joint = torch.autograd.grad(got["loss_bbox"] + got["loss_dfl"], bbox_preds, retain_graph=True)
    apart = [torch.autograd.grad(got[term], bbox_preds) for term in ("loss_bbox", "loss_dfl")]
    for g, a, b in zip(joint, *apart, strict=True):
        torch.testing.assert_close(a + b, g)

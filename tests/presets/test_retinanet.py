"""RetinaNetCriterion against literal references: MMDetection 3.x ``RetinaHead.loss_by_feat`` and NetsPresso's
``retinanet_loss`` (``tests/references/mmdet_dense_heads.py`` and ``netspresso.py``, per image and per level)."""

from __future__ import annotations

import pytest
import torch

from lightning_losses import (
    FocalLoss,
    GIoULoss,
    L1Loss,
    LossMetric,
    RetinaNetCriterion,
    SigmoidFocalLoss,
    SmoothL1Loss,
)
from tests.references.mmdet_boxes import bbox_overlaps, grid_anchors
from tests.references.mmdet_dense_heads import (
    RETINA_ANCHORS,
    STRIDES,
    retinanet_assign,
    retinanet_loss_by_feat,
    retinanet_targets,
    total,
)
from tests.references.netspresso import (
    box_coder_encode_single,
    box_iou,
    matcher,
    netspresso_anchors,
    netspresso_match,
    netspresso_retinanet_loss,
)
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

C = 3
A = 9


def _inputs(name: str) -> tuple[list[torch.Tensor], list[torch.Tensor], list[dict], list[tuple[int, int]]]:
    generator, targets, sizes = scene(name, C)
    cls_scores = random_maps(generator, 2, A * C, sizes)
    bbox_preds = random_maps(generator, 2, A * 4, sizes, scale=0.5)
    return cls_scores, bbox_preds, targets, sizes


# ------------------------------------------------------------------------------------------------
# equality with MMDetection


@pytest.mark.parametrize("name", list(SCENES))
def test_mmdet_style_equals_retinahead_loss_by_feat(name):
    """Reference: literal RetinaHead.loss_by_feat (SmoothL1(beta=1) box loss); values and gradients per term."""
    cls_scores, bbox_preds, targets, sizes = _inputs(name)
    anchors = torch.cat(grid_anchors(sizes, STRIDES, **RETINA_ANCHORS))
    for t in targets:  # every box overlaps some anchor, so the documented deviation cannot show here
        assert bool((bbox_overlaps(t["boxes"], anchors).amax(dim=1) > 0).all())
    got = RetinaNetCriterion(C)(cls_scores, bbox_preds, targets)
    want = total(retinanet_loss_by_feat(cls_scores, bbox_preds, targets, C))
    assert_terms_match(got, want, cls_scores + bbox_preds)


def test_l1_box_loss_equals_mmdet_config():
    """Reference: RetinaHead with the 3.x config's L1Loss (loss_bbox=L1Loss())."""
    cls_scores, bbox_preds, targets, _ = _inputs("seed0")
    got = RetinaNetCriterion(C, loss_bbox=L1Loss())(cls_scores, bbox_preds, targets)
    want = total(retinanet_loss_by_feat(cls_scores, bbox_preds, targets, C, loss_bbox="l1"))
    assert_terms_match(got, want, cls_scores + bbox_preds)


def test_per_image_pad_shapes_ignore_anchors_beyond_them():
    """Reference: valid_flags from each image's pad_shape; anchors on padded cells get label weight 0."""
    generator = torch.Generator().manual_seed(5)
    pad_shapes = [(128, 128), (64, 96)]
    targets = random_targets(generator, (3, 4), C, pad_shapes, max_size=60.0)
    sizes = FEATMAP_SIZES
    cls_scores = random_maps(generator, 2, A * C, sizes)
    bbox_preds = random_maps(generator, 2, A * 4, sizes, scale=0.5)
    got = RetinaNetCriterion(C)(cls_scores, bbox_preds, targets, image_size=torch.tensor(pad_shapes))
    want = total(retinanet_loss_by_feat(cls_scores, bbox_preds, targets, C, pad_shapes=pad_shapes))
    assert_terms_match(got, want, cls_scores + bbox_preds)
    unpadded = RetinaNetCriterion(C)(cls_scores, bbox_preds, targets)
    assert not torch.allclose(unpadded["loss_cls"], got["loss_cls"])  # the flags do change the loss


def _tie_scene() -> tuple[torch.Tensor, list[dict]]:
    """Integer boxes on a 2 x 2 grid of 16-px priors: both boxes tie at their max IoU on the same four priors.

    Box 0 (IoU 4/9 with each prior) is every prior's best box; box 1 (IoU 1/4) claims the same four priors
    after box 0 in the low-quality step: MMDetection keeps the later box, torchvision's Matcher the best one.
    """
    priors = torch.tensor([[x, y, x + 16.0, y + 16.0] for y in (0.0, 8.0) for x in (0.0, 8.0)])
    priors = torch.cat([priors, torch.tensor([[40.0, 40.0, 56.0, 56.0]])])  # a plain negative
    boxes = torch.tensor([[0.0, 0.0, 24.0, 24.0], [8.0, 8.0, 16.0, 16.0]])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    return priors, [{"boxes": boxes, "labels": torch.tensor([0, 2])}, empty]


def _tie_maps(num_priors: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    cls = torch.randn(2, C, 1, num_priors, generator=generator).requires_grad_()
    box = (0.3 * torch.randn(2, 4, 1, num_priors, generator=generator)).requires_grad_()
    return cls, box


def test_mmdet_low_quality_ties_all_claimed_later_box_wins():
    """Reference: MaxIoUAssigner loop over gts with gt_max_assign_all (every tied prior, later gt overwrites)."""
    priors, targets = _tie_scene()
    cls, box = _tie_maps(len(priors))
    criterion = RetinaNetCriterion(C, strides=(8,))
    got = criterion([cls], [box], targets, priors=priors)
    want = total(retinanet_loss_by_feat([cls], [box], targets, C, strides=(8,), anchors=[priors]))
    assert_terms_match(got, want, [cls, box])
    gt_inds, _ = retinanet_assign(priors, targets[0]["boxes"], targets[0]["labels"])
    assert gt_inds.tolist() == [2, 2, 2, 2, 0]


# ------------------------------------------------------------------------------------------------
# NetsPresso style


def _netspresso_inputs(name: str) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, list[dict]]:
    generator, targets, sizes = scene(name, C)
    anchors = torch.cat(netspresso_anchors(sizes, STRIDES))
    counts = [h * w * 3 for h, w in sizes]
    cls = [torch.randn(2, n, C, generator=generator).requires_grad_() for n in counts]
    box = [(0.5 * torch.randn(2, n, 4, generator=generator)).requires_grad_() for n in counts]
    return cls, box, anchors, targets


@pytest.mark.parametrize("name", list(SCENES))
def test_netspresso_style_equals_retinanet_loss(name):
    """Reference: NetsPresso's retinanet_loss (torchvision Matcher 0.5/0.4 low-quality, BoxCoder, L1, per image)."""
    cls, box, anchors, targets = _netspresso_inputs(name)
    got = RetinaNetCriterion(C, style="netspresso")(cls, box, targets, priors=anchors)
    want = netspresso_retinanet_loss(cls, box, anchors, targets)
    assert_terms_match(got, want, cls + box)


def test_netspresso_low_quality_ties_go_to_each_priors_best_box():
    """Reference: torchvision Matcher restores a claimed prior to its own argmax box (differs from MMDetection)."""
    priors, targets = _tie_scene()
    cls, box = _tie_maps(len(priors))
    cls3 = cls.flatten(2).transpose(1, 2)
    box3 = box.flatten(2).transpose(1, 2)
    got = RetinaNetCriterion(C, strides=(8,), style="netspresso")([cls3], [box3], targets, priors=priors)
    want = netspresso_retinanet_loss([cls3], [box3], priors, targets)
    assert_terms_match(got, want, [cls, box])
    assert netspresso_match(priors, targets)[0].tolist() == [0, 0, 0, 0, -1]  # box 0, not box 1


def test_reference_matcher_and_coder_equal_torchvision():
    """The NetsPresso reference's Matcher and BoxCoder against torchvision's own (sanity of the reference)."""
    det_utils = pytest.importorskip("torchvision.models.detection._utils")
    _generator, targets, sizes = scene("seed0", C)
    anchors = torch.cat(netspresso_anchors(sizes, STRIDES))
    quality = box_iou(targets[1]["boxes"], anchors)
    expected = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)(quality)
    assert torch.equal(matcher(quality), expected)
    fg = expected >= 0
    gt = targets[1]["boxes"][expected[fg]]
    encoded = det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(gt, anchors[fg])
    torch.testing.assert_close(box_coder_encode_single(gt, anchors[fg]), encoded)


# ------------------------------------------------------------------------------------------------
# documented deviation: a box that overlaps no prior


@pytest.mark.parametrize("style", ["mmdet", "netspresso"])
def test_box_overlapping_no_prior_claims_nothing_unlike_references(style):
    """Deviation (documented in MaxIoUAssigner): MMDetection (min_pos_iou=0) and torchvision's Matcher make
    every zero-IoU prior positive for a box that overlaps no prior; the package ignores such a box."""
    cls_scores, bbox_preds, targets, sizes = _inputs("seed0")
    far = {
        "boxes": torch.cat([targets[0]["boxes"], torch.tensor([[3000.0, 3000.0, 3040.0, 3050.0]])]),
        "labels": torch.cat([targets[0]["labels"], torch.tensor([1])]),
    }
    with_far = [far, targets[1]]
    if style == "mmdet":
        got = RetinaNetCriterion(C)(cls_scores, bbox_preds, with_far)
        without = total(retinanet_loss_by_feat(cls_scores, bbox_preds, targets, C))
        literal = total(retinanet_loss_by_feat(cls_scores, bbox_preds, with_far, C))
        anchors = torch.cat(grid_anchors(sizes, STRIDES, **RETINA_ANCHORS))
        gt_inds, _ = retinanet_assign(anchors, far["boxes"], far["labels"])
        assert int((gt_inds == len(far["boxes"])).sum()) > 1000  # the literal reference: most priors positive
    else:
        cls, box, anchors, _ = _netspresso_inputs("seed0")
        got = RetinaNetCriterion(C, style="netspresso")(cls, box, with_far, priors=anchors)
        without = netspresso_retinanet_loss(cls, box, anchors, targets)
        literal = netspresso_retinanet_loss(cls, box, anchors, with_far)
    for key in without:
        torch.testing.assert_close(got[key], without[key], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(literal["loss_bbox"], without["loss_bbox"])


# ------------------------------------------------------------------------------------------------
# perfect predictions, empty batches


def test_perfect_deltas_give_zero_box_loss():
    """Deltas encoded from each positive anchor to its box (reference targets) give loss_bbox ≈ 0."""
    cls_scores, _, targets, sizes = _inputs("seed0")
    _, labels, _, bbox_targets, _, _ = retinanet_targets(cls_scores, targets, C)
    assert sum(int((lab < C).sum()) for lab in labels) > 0
    bbox_preds = [m.requires_grad_() for m in levels_to_maps(bbox_targets, sizes)]
    out = RetinaNetCriterion(C)(cls_scores, bbox_preds, targets)
    assert float(out["loss_bbox"].detach()) < 1e-6
    noisy = [(m + 0.1).detach() for m in bbox_preds]
    assert float(RetinaNetCriterion(C)(cls_scores, noisy, targets)["loss_bbox"]) > 1e-3


@pytest.mark.parametrize("style", ["mmdet", "netspresso"])
def test_batch_without_boxes_gives_finite_cls_and_zero_box_loss_with_graph(style):
    """No box anywhere: loss_cls equals the reference (all anchors negative), loss_bbox is exactly 0 and
    backpropagates zeros."""
    cls_scores, bbox_preds, _, _ = _inputs("seed0")
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)} for _ in range(2)]
    if style == "mmdet":
        got = RetinaNetCriterion(C)(cls_scores, bbox_preds, empty)
        want = total(retinanet_loss_by_feat(cls_scores, bbox_preds, empty, C))
    else:
        cls_scores, bbox_preds, anchors, _ = _netspresso_inputs("seed0")
        got = RetinaNetCriterion(C, style="netspresso")(cls_scores, bbox_preds, empty, priors=anchors)
        want = netspresso_retinanet_loss(cls_scores, bbox_preds, anchors, empty)
    assert torch.isfinite(got["loss_cls"])
    assert got["loss_cls"].detach().item() > 0
    torch.testing.assert_close(got["loss_cls"], want["loss_cls"], rtol=1e-4, atol=1e-6)
    assert got["loss_bbox"].detach().item() == 0.0
    assert got["loss_bbox"].requires_grad
    for grad in torch.autograd.grad(got["loss_bbox"], bbox_preds):
        assert torch.count_nonzero(grad) == 0


# ------------------------------------------------------------------------------------------------
# configuration, metrics, input checks


@pytest.mark.parametrize(
    ("term", "spec", "cls", "loss_weight"),
    [
        ("loss_bbox", {"type": "L1Loss"}, L1Loss, 1.0),
        ("loss_bbox", {"class_path": "lightning_losses.GIoULoss", "init_args": {"loss_weight": 2.0}}, GIoULoss, 2.0),
        ("loss_bbox", {"type": "SmoothL1Loss", "beta": 0.11, "loss_weight": 0.5}, SmoothL1Loss, 0.5),
        ("loss_cls", {"type": "FocalLoss", "gamma": 1.5, "loss_weight": 2.0}, FocalLoss, 2.0),
        ("loss_cls", {"criterion": "focal_loss", "alpha": 0.25, "gamma": 2.0, "weight": 3.0}, SigmoidFocalLoss, 3.0),
        ("loss_cls", {"class_path": "lightning_losses.FocalLoss", "init_args": {}}, FocalLoss, 1.0),
    ],
)
def test_terms_are_built_from_configs(term, spec, cls, loss_weight):
    criterion = RetinaNetCriterion(C, **{term: spec})
    module = getattr(criterion, term)
    assert type(module) is cls
    assert module.loss_weight == loss_weight


def test_default_terms_and_configured_weight_scales_the_term():
    """Defaults: FocalLoss(2, .25) and SmoothL1Loss(beta=1); a loss_weight in a config scales that term only."""
    default = RetinaNetCriterion(C)
    assert type(default.loss_cls) is FocalLoss
    assert (default.loss_cls.gamma, default.loss_cls.alpha) == (2.0, 0.25)
    assert type(default.loss_bbox) is SmoothL1Loss
    assert default.loss_bbox.beta == 1.0
    assert type(RetinaNetCriterion(C, style="netspresso").loss_bbox) is L1Loss
    cls_scores, bbox_preds, targets, _ = _inputs("seed2")
    base = default(cls_scores, bbox_preds, targets)
    doubled = RetinaNetCriterion(C, loss_cls={"type": "FocalLoss", "loss_weight": 2.0})(cls_scores, bbox_preds, targets)
    torch.testing.assert_close(doubled["loss_cls"], 2 * base["loss_cls"])
    torch.testing.assert_close(doubled["loss_bbox"], base["loss_bbox"])


def test_terms_are_loss_metric_children_whose_compute_is_the_mean_of_returned_values():
    criterion = RetinaNetCriterion(C)
    children = dict(criterion.named_children())
    assert isinstance(children["loss_cls"], LossMetric)
    assert isinstance(children["loss_bbox"], LossMetric)
    returned = [criterion(*_inputs(name)[:3]) for name in ("seed0", "seed1", "seed2")]
    for term in RetinaNetCriterion.terms:
        expected = torch.stack([r[term].detach() for r in returned]).mean()
        torch.testing.assert_close(getattr(criterion, term).compute(), expected)


def test_bad_inputs_raise_naming_the_argument():
    cls_scores, bbox_preds, targets, _ = _inputs("seed0")
    criterion = RetinaNetCriterion(C)
    with pytest.raises(ValueError, match="cls_scores"):
        criterion(cls_scores[:4], bbox_preds, targets)
    with pytest.raises(ValueError, match="bbox_preds"):
        criterion(cls_scores, bbox_preds[:4], targets)
    with pytest.raises(TypeError, match="cls_scores"):
        criterion(cls_scores[0], bbox_preds, targets)
    wrong_cls = [torch.zeros(2, A * C + 1, *m.shape[-2:]) for m in cls_scores]
    with pytest.raises(ValueError, match="cls_scores"):
        criterion(wrong_cls, bbox_preds, targets)
    wrong_box = [torch.zeros(2, A * 4 + 2, *m.shape[-2:]) for m in bbox_preds]
    with pytest.raises(ValueError, match="bbox_preds"):
        criterion(cls_scores, wrong_box, targets)
    too_few_anchors = [torch.zeros(2, 4, *m.shape[-2:]) for m in bbox_preds]  # a multiple of 4, but A = 1
    with pytest.raises(ValueError, match="bbox_preds"):
        criterion(cls_scores, too_few_anchors, targets)
    with pytest.raises(ValueError, match="targets"):
        criterion(cls_scores, bbox_preds, targets[:1])
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]"):
        criterion(cls_scores, bbox_preds, [{"boxes": torch.zeros(1, 5), "labels": torch.zeros(1).long()}] * 2)
    with pytest.raises(ValueError, match="priors"):
        criterion(cls_scores, bbox_preds, targets, priors=torch.zeros(7, 4))
    with pytest.raises(ValueError, match="style"):
        RetinaNetCriterion(C, style="torchvision")

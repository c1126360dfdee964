"""What ``loss_cls`` receives: class labels for the focal family, one-hot rows for a loss that needs them.

References: the labels and label weights of MMDetection 3.x's ``get_targets`` (background = ``num_classes``,
``tests/references``), NetsPresso's torchvision ``Matcher`` for its style, and hand-worked one-hot rows.
"""

from __future__ import annotations

import pytest
import torch

from lightning_losses import (
    ATSSCriterion,
    CrossEntropyLoss,
    FCOSCriterion,
    FocalLoss,
    QualityFocalLoss,
    RetinaNetCriterion,
    SigmoidFocalLoss,
)
from lightning_losses.presets.class_targets import class_targets, onehot_targets, takes_class_labels
from tests.references.mmdet_atss_gfl import atss_targets
from tests.references.mmdet_boxes import grid_points
from tests.references.mmdet_dense_heads import STRIDES, retinanet_targets
from tests.references.mmdet_fcos import fcos_get_targets
from tests.references.netspresso import BETWEEN_THRESHOLDS, netspresso_anchors, netspresso_match
from tests.references.scenes import FEATMAP_SIZES, random_maps, random_targets, scene

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

C = 3
PAD_SHAPES = [(128, 128), (64, 96)]


def _recording(cls: type) -> type:
    """A subclass of the loss ``cls`` that keeps the target and weight of its last call."""

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None, **options):
        self.seen = {"pred": pred, "target": target, "weight": weight}
        return super(recording, self).forward(pred, target, weight, avg_factor, reduction_override, **options)

    recording = type(f"Recording{cls.__name__}", (cls,), {"forward": forward})
    return recording


RecordingFocal = _recording(FocalLoss)


def _padded_scene(channels: int, box_channels: int, with_centerness: bool) -> tuple[list, list, list, list[dict]]:
    generator = torch.Generator().manual_seed(5)
    targets = random_targets(generator, (3, 4), C, PAD_SHAPES, max_size=60.0)
    cls_scores = random_maps(generator, 2, channels, FEATMAP_SIZES)
    bbox_preds = random_maps(generator, 2, box_channels, FEATMAP_SIZES, scale=0.5, positive=with_centerness)
    centerness = random_maps(generator, 2, 1, FEATMAP_SIZES) if with_centerness else []
    return cls_scores, bbox_preds, centerness, targets


def _image_major(per_level: list[torch.Tensor]) -> torch.Tensor:
    """MMDetection's per-level ``(B, n_l)`` targets as the criterion's ``(B·P,)`` rows (image, level, prior)."""
    return torch.cat(per_level, dim=1).reshape(-1)


def _assert_labels(seen: dict, want_labels: torch.Tensor) -> None:
    target = seen["target"]
    assert target.dtype == torch.int64
    assert target.shape == (seen["pred"].shape[0],)  # one label per prior, no (B·P, C) target
    assert torch.equal(target, want_labels)


# ------------------------------------------------------------------------------------------------
# the focal family receives labels equal to MMDetection's, the ignored priors weight 0


@pytest.mark.parametrize("padded", [False, True])
def test_retinanet_focal_receives_mmdet_labels_and_label_weights(padded):
    """Reference: RetinaHead.get_targets labels (background C, ignored anchors C too) and label weights."""
    cls_scores, bbox_preds, _, targets = _padded_scene(9 * C, 36, with_centerness=False)
    criterion = RetinaNetCriterion(C, loss_cls=RecordingFocal())
    image_size = torch.tensor(PAD_SHAPES) if padded else None
    criterion(cls_scores, bbox_preds, targets, image_size=image_size)
    _, labels, label_weights, *_ = retinanet_targets(cls_scores, targets, C, pad_shapes=PAD_SHAPES if padded else None)
    seen = criterion.loss_cls.seen
    _assert_labels(seen, _image_major(labels))
    assert torch.equal(seen["weight"], _image_major(label_weights).to(seen["weight"].dtype))
    assert bool((seen["weight"] == 0).any())  # the scene has ignored (and, padded, out-of-image) anchors


def test_retinanet_netspresso_focal_receives_matcher_labels_and_drops_between_thresholds():
    """Reference: torchvision Matcher indices: label of the matched box, C below 0.4, weight 0 in between."""
    generator, targets, sizes = scene("seed0", C)
    anchors = torch.cat(netspresso_anchors(sizes, STRIDES))
    counts = [h * w * 3 for h, w in sizes]
    cls = [torch.randn(2, n, C, generator=generator) for n in counts]
    box = [0.5 * torch.randn(2, n, 4, generator=generator) for n in counts]
    criterion = RetinaNetCriterion(C, style="netspresso", loss_cls=RecordingFocal())
    criterion(cls, box, targets, priors=anchors)
    matched = netspresso_match(anchors, targets)
    pairs = zip(targets, matched, strict=True)
    want = torch.cat([torch.where(m >= 0, t["labels"][m.clamp(min=0)], C) for t, m in pairs])
    seen = criterion.loss_cls.seen
    _assert_labels(seen, want)
    between = torch.cat(matched) == BETWEEN_THRESHOLDS
    assert bool(between.any())
    assert torch.equal(seen["weight"] == 0, between)


def test_fcos_focal_receives_mmdet_labels():
    """Reference: FCOSHead.get_targets labels (level-major there, image-major here), background C."""
    cls_scores, bbox_preds, centerness, targets = _padded_scene(C, 4, with_centerness=True)
    criterion = FCOSCriterion(C, loss_cls=RecordingFocal())
    criterion(cls_scores, bbox_preds, centerness, targets)
    per_level, _ = fcos_get_targets(grid_points(FEATMAP_SIZES, STRIDES), targets, C)
    batch = len(targets)
    want = torch.cat([torch.cat([lvl.reshape(batch, -1)[b] for lvl in per_level]) for b in range(batch)])
    seen = criterion.loss_cls.seen
    _assert_labels(seen, want)
    assert seen["weight"] is None
    assert bool((want < C).any())


@pytest.mark.parametrize("padded", [False, True])
def test_atss_focal_receives_mmdet_labels_and_valid_flag_weights(padded):
    """Reference: ATSSHead.get_targets labels (background C) and label weights (0 outside the pad shape)."""
    cls_scores, bbox_preds, centerness, targets = _padded_scene(C, 4, with_centerness=True)
    bbox_preds = [m.detach().log().requires_grad_() for m in bbox_preds]  # deltas, not distances
    criterion = ATSSCriterion(C, loss_cls=RecordingFocal())
    image_size = torch.tensor(PAD_SHAPES) if padded else None
    criterion(cls_scores, bbox_preds, centerness, targets, image_size=image_size)
    _, labels, label_weights, *_ = atss_targets(cls_scores, targets, C, pad_shapes=PAD_SHAPES if padded else None)
    seen = criterion.loss_cls.seen
    _assert_labels(seen, _image_major(labels))
    if padded:
        assert torch.equal(seen["weight"], _image_major(label_weights).to(seen["weight"].dtype))
        assert bool((seen["weight"] == 0).any())
    else:
        assert seen["weight"] is None


# ------------------------------------------------------------------------------------------------
# other configured losses


@pytest.mark.parametrize(
    ("loss", "takes_labels"),
    [
        (FocalLoss(), True),
        (FocalLoss(activated=True), True),
        (SigmoidFocalLoss(alpha=-1.0), True),
        (CrossEntropyLoss(use_sigmoid=True), True),
        (CrossEntropyLoss(use_sigmoid=True, ignore_index=-1), True),
        (CrossEntropyLoss(use_sigmoid=True, ignore_index=1), False),  # would drop class 1 from labels only
        (CrossEntropyLoss(), False),  # softmax: label C is no class
        (QualityFocalLoss(), False),  # takes (labels, scores) or soft rows
    ],
)
def test_which_losses_take_class_labels(loss, takes_labels):
    assert takes_class_labels(loss) is takes_labels


def test_class_targets_by_hand():
    """Hand-worked: labels -1 (not positive) become C for a label loss, a zero row for a dense one."""
    labels = torch.tensor([[2, -1], [0, 1]])
    assert class_targets(FocalLoss(), labels, 3, torch.float32).tolist() == [2, 3, 0, 1]
    dense = class_targets(CrossEntropyLoss(), labels, 3, torch.float16)
    assert dense.dtype == torch.float16
    assert dense.tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert torch.equal(onehot_targets(labels, 3, torch.float16).reshape(-1, 3), dense)


@pytest.mark.parametrize("loss_type", [CrossEntropyLoss, QualityFocalLoss])
def test_dense_only_loss_receives_the_onehot_of_the_labels(loss_type):
    """A loss that takes no labels gets (N, C) rows: one-hot of the labels the focal loss gets, zero rows
    for background; with RetinaNet's ignored anchors still at weight 0."""
    cls_scores, bbox_preds, _, targets = _padded_scene(9 * C, 36, with_centerness=False)
    focal = RetinaNetCriterion(C, loss_cls=RecordingFocal())
    focal(cls_scores, bbox_preds, targets)
    dense = RetinaNetCriterion(C, loss_cls=_recording(loss_type)())
    out = dense(cls_scores, bbox_preds, targets)
    labels, seen = focal.loss_cls.seen["target"], dense.loss_cls.seen
    assert seen["target"].shape == (labels.shape[0], C)
    assert torch.equal(seen["target"], torch.nn.functional.one_hot(labels, C + 1)[:, :C].to(seen["target"].dtype))
    assert torch.equal(seen["weight"], focal.loss_cls.seen["weight"])
    assert torch.isfinite(out["loss_cls"])


@pytest.mark.parametrize("style", ["mmdet", "netspresso"])
def test_sigmoid_cross_entropy_with_labels_is_twice_focal_with_gamma_0_alpha_half(style):
    """Closed form: FL with γ = 0, α = ½ is ½·BCE element-wise, so the BCE term is twice that focal term."""
    cls_scores, bbox_preds, _, targets = _padded_scene(9 * C, 36, with_centerness=False)
    bce = RetinaNetCriterion(C, style=style, loss_cls=CrossEntropyLoss(use_sigmoid=True))
    focal = RetinaNetCriterion(C, style=style, loss_cls=FocalLoss(gamma=0.0, alpha=0.5))
    image_size = torch.tensor(PAD_SHAPES)
    got = bce(cls_scores, bbox_preds, targets, image_size=image_size)["loss_cls"]
    want = 2 * focal(cls_scores, bbox_preds, targets, image_size=image_size)["loss_cls"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)

"""torchvision's RetinaNet (v1, v2) and FCOS through the adapter: the criteria against torchvision's own
``compute_loss`` on the same head outputs, the layout glue against torchvision's flattened outputs, training
through the mixin. Untrained models at 128² (nothing downloaded)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2
from torchvision.ops import generalized_box_iou_loss

from lightning_losses import DetectionLossModule, FCOSCriterion
from lightning_losses.adapters import TorchvisionDenseDetector
from lightning_losses.boxes import flatten_levels

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)` but the `self.trainer`"),
]

C, SIZE = 3, 128
# The second image's first box puts the point (64, 64) at a largest distance of exactly 64 px: the edge of the
# first two levels' ranges, which torchvision compares strictly.
TARGETS = [
    {
        "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [64.0, 40.0, 120.0, 100.0], [5.0, 80.0, 30.0, 126.0]]),
        "labels": torch.tensor([0, 2, 1]),
    },
    {"boxes": torch.tensor([[0.0, 32.0, 100.0, 100.0], [32.0, 0.0, 96.0, 128.0]]), "labels": torch.tensor([1, 2])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]


def _run(build):
    torch.manual_seed(0)
    detector = TorchvisionDenseDetector(build(weights=None, weights_backbone=None, num_classes=C))
    with torch.no_grad():
        outputs = detector(torch.rand(len(TARGETS), 3, SIZE, SIZE))
    return detector, outputs


@pytest.fixture(scope="module")
def retinanet():
    return _run(retinanet_resnet50_fpn)


@pytest.fixture(scope="module")
def fcos():
    return _run(fcos_resnet50_fpn)


def _ours(detector, outputs, criterion=None):
    criterion = criterion or detector.default_criterion()
    return criterion(*detector.criterion_inputs(outputs), TARGETS, **detector.criterion_kwargs(outputs))


def test_per_level_maps_flatten_back_to_torchvision_outputs(retinanet, fcos):
    """Reference: torchvision's own (B, ΣHWA, K) head outputs, rows (level, y, x, anchor)."""
    for detector, outputs in (retinanet, fcos):
        names = ["cls_logits", "bbox_regression", "bbox_ctrness"][: 3 if detector.kind == "fcos" else 2]
        for maps, name in zip(detector.criterion_inputs(outputs), names, strict=True):
            assert all(m.ndim == 4 for m in maps)
            channels = outputs.head[name].shape[-1]
            assert torch.equal(flatten_levels(maps, channels, name), outputs.head[name])
        assert [tuple(m.shape[-2:]) for m in detector.criterion_inputs(outputs)[0]] == outputs.sizes
    assert retinanet[0].strides == fcos[0].strides == (8, 16, 32, 64, 128)


def test_retinanet_criterion_equals_torchvision_compute_loss(retinanet):
    detector, outputs = retinanet
    ours, theirs = _ours(detector, outputs), detector.torchvision_loss(outputs, TARGETS)
    torch.testing.assert_close(ours["loss_cls"], theirs["classification"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["loss_bbox"], theirs["bbox_regression"], rtol=1e-5, atol=1e-6)


def test_retinanet_v2_classification_equals_and_its_giou_box_term_is_replaced_by_l1():
    """Documented difference: v2 scores boxes by GIoU on decoded boxes; the criterion keeps v1's L1 on deltas,
    which equals torchvision's v2 head switched to L1."""
    detector, outputs = _run(retinanet_resnet50_fpn_v2)
    ours, theirs = _ours(detector, outputs), detector.torchvision_loss(outputs, TARGETS)
    torch.testing.assert_close(ours["loss_cls"], theirs["classification"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours["loss_bbox"], theirs["bbox_regression"], rtol=1e-3)
    detector.model.head.regression_head._loss_type = "l1"
    l1 = detector.torchvision_loss(outputs, TARGETS)["bbox_regression"]
    torch.testing.assert_close(ours["loss_bbox"], l1, rtol=1e-5, atol=1e-6)


def test_fcos_criterion_equals_torchvision_except_its_centerness_weighted_box_term(fcos):
    """Reference for the box term: torchvision's own assignment and GIoU loss, weighted by its centerness
    targets: Σ c*·ℓ / Σ c* (MMDetection 3.x) where torchvision takes Σ ℓ / n_pos."""
    detector, outputs = fcos
    head = detector.model.head
    captured = {}
    compute = head.compute_loss

    def record(targets, head_outputs, anchors, matched_idxs):
        captured["matched"] = matched_idxs
        return compute(targets, head_outputs, anchors, matched_idxs)

    head.compute_loss = record
    try:
        theirs = detector.torchvision_loss(outputs, TARGETS)
    finally:
        del head.compute_loss
    ours = _ours(detector, outputs)
    torch.testing.assert_close(ours["loss_cls"], theirs["classification"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["loss_centerness"], theirs["bbox_ctrness"], rtol=1e-5, atol=1e-6)

    anchors = outputs.anchors
    points = (anchors[:, :2] + anchors[:, 2:]) / 2
    sizes = (anchors[:, 2] - anchors[:, 0])[:, None]
    numerator = denominator = 0.0
    for target, matched, deltas in zip(TARGETS, captured["matched"], outputs.head["bbox_regression"], strict=True):
        positive = matched >= 0
        if not positive.any():
            continue
        gt = target["boxes"][matched[positive]]
        p, s = points[positive], sizes[positive]
        pred = torch.cat([p - deltas[positive, :2] * s, p + deltas[positive, 2:] * s], dim=1)
        left_right = torch.stack([p[:, 0] - gt[:, 0], gt[:, 2] - p[:, 0]], 1)
        top_bottom = torch.stack([p[:, 1] - gt[:, 1], gt[:, 3] - p[:, 1]], 1)
        centerness = (left_right.amin(1) / left_right.amax(1) * (top_bottom.amin(1) / top_bottom.amax(1))).sqrt()
        numerator = numerator + (centerness * generalized_box_iou_loss(pred, gt, reduction="none")).sum()
        denominator = denominator + centerness.sum()
    torch.testing.assert_close(ours["loss_bbox"], numerator / denominator, rtol=1e-4, atol=1e-5)


def test_fcos_strict_ranges_matter_on_the_boundary_batch(fcos):
    """The batch has a point at exactly 64 px: inclusive ranges assign it, torchvision's strict ones do not."""
    detector, outputs = fcos
    default = detector.default_criterion()
    inclusive = FCOSCriterion(
        C,
        strides=detector.strides,
        regress_ranges=[(-1, 64), (64, 128), (128, 256), (256, 512), (512, float("inf"))],
        center_sampling=True,
        norm_on_bbox=True,
        loss_bbox=default.loss_bbox,
    )
    theirs = detector.torchvision_loss(outputs, TARGETS)["classification"]
    assert not torch.allclose(_ours(detector, outputs, inclusive)["loss_cls"], theirs, rtol=1e-5)


class _Detector(DetectionLossModule, L.LightningModule):
    def __init__(self, detector: TorchvisionDenseDetector) -> None:
        super().__init__(criterion=detector.default_criterion())
        self.detector = detector


def test_mixin_trains_the_torchvision_head_through_the_criterion(fcos):
    """The total is the sum of the terms; gradients reach the head's and the FPN's parameters."""
    detector, _ = fcos
    module = _Detector(detector)
    outputs = detector(torch.rand(len(TARGETS), 3, SIZE, SIZE))
    total = module.compute_losses(detector.criterion_inputs(outputs), TARGETS, **detector.criterion_kwargs(outputs))
    terms = module.criterion(*detector.criterion_inputs(outputs), TARGETS, **detector.criterion_kwargs(outputs))
    torch.testing.assert_close(total, sum(terms.values()))
    total.backward()
    for name in ("head.classification_head.cls_logits.weight", "head.regression_head.bbox_ctrness.weight"):
        grad = detector.model.get_parameter(name).grad
        assert grad is not None
        assert grad.abs().sum() > 0


def test_postprocess_gives_torchvisions_detections_and_bad_models_are_refused(retinanet):
    detector, outputs = retinanet
    detector.model.score_thresh = 0.0
    detector.model.detections_per_img = 5
    detections = detector.postprocess(outputs)
    assert len(detections) == len(TARGETS)
    for det in detections:
        assert det["boxes"].shape == (5, 4)
        assert det["labels"].dtype == torch.int64
        assert (det["boxes"] >= 0).all()
        assert (det["boxes"] <= SIZE).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
    with pytest.raises(TypeError, match="torchvision RetinaNet or FCOS, got Linear"):
        TorchvisionDenseDetector(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(3, 8, 8\)"):
        detector(torch.rand(3, 8, 8))

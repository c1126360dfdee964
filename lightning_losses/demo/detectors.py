"""Demo detectors: RetinaNet, FCOS, ATSS, GFL and YOLOX heads on a tiny backbone and FPN, trained by the presets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_losses.boxes.coders import distance2bbox, integral
from lightning_losses.boxes.priors import PointGenerator
from lightning_losses.demo.backbone import STRIDES, DenseHead, prior_bias
from lightning_losses.demo.dense import DenseDetector, level_priors, prior_strides
from lightning_losses.presets.atss import ATSSCriterion
from lightning_losses.presets.base import flatten_levels
from lightning_losses.presets.fcos import FCOSCriterion
from lightning_losses.presets.gfl import GFLCriterion
from lightning_losses.presets.retinanet import RetinaNetCriterion
from lightning_losses.presets.yolox import YOLOXCriterion

__all__ = ["ATSSDetector", "FCOSDetector", "GFLDetector", "RetinaNetDetector", "YOLOXDetector"]


class RetinaNetDetector(DenseDetector):
    """RetinaNet: ``A`` anchors per cell, sigmoid class scores and ``DeltaXYWHCoder`` deltas.

    Args:
        num_classes: ``C``.
        criterion: ``None`` builds ``RetinaNetCriterion(C, strides=(8, 16, 32), octave_base_scale=2.0)``
            (anchors of 16 to 100 pixels, for 128-pixel images).
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        channels: FPN and head channels.
        score_thr: lowest detection score kept.
        nms_iou: NMS IoU threshold.
        max_det: detections per image.

    Shape:
        ``forward``: ``(B, 3, H, W)`` → ``(cls_scores [(B, A·C, H_l, W_l)], bbox_preds [(B, A·4, H_l, W_l)])``.
    """

    @staticmethod
    def default_criterion(num_classes: int) -> RetinaNetCriterion:
        return RetinaNetCriterion(num_classes, strides=STRIDES, octave_base_scale=2.0)

    def __init__(
        self,
        num_classes: int = 3,
        criterion: RetinaNetCriterion | None = None,
        lr: float = 5e-3,
        weight_decay: float = 1e-4,
        channels: int = 32,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ) -> None:
        super().__init__(criterion, num_classes, lr, weight_decay, channels, score_thr, nms_iou, max_det)
        self.save_hyperparameters()
        self.num_anchors = self.criterion.anchor_generator.num_base_priors
        self.head = DenseHead(channels, self.num_anchors * num_classes, self.num_anchors * 4)

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        cls_scores, bbox_preds, _ = self.head(self.features(images))
        return cls_scores, bbox_preds

    def decode(self, outputs: tuple[list[Tensor], list[Tensor]], image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        cls_scores, bbox_preds = outputs
        criterion = self.criterion
        _, anchors = level_priors(cls_scores, criterion.anchor_generator)
        deltas = flatten_levels(bbox_preds, 4, "bbox_preds")
        scores = flatten_levels(cls_scores, self.num_classes, "cls_scores").sigmoid()
        return criterion.coder.decode(anchors, deltas), scores


class FCOSDetector(DenseDetector):
    """FCOS: per-point class scores, ``(l, t, r, b)`` distances and centerness (on the regression tower).

    Distances are ``exp(s_l · x)`` pixels, or ``relu(s_l · x)`` strides when the criterion has
    ``norm_on_bbox``; scores are :math:`\\sqrt{\\sigma(x_c)\\,\\sigma(o)}`.

    Args:
        num_classes: ``C``.
        criterion: ``None`` builds ``FCOSCriterion(C, strides=(8, 16, 32),
            regress_ranges=((-1, 32), (32, 64), (64, 1e8)))``.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        channels: FPN and head channels.
        score_thr: lowest detection score kept.
        nms_iou: NMS IoU threshold.
        max_det: detections per image.

    Shape:
        ``forward``: ``(B, 3, H, W)`` → ``(cls_scores [(B, C, H_l, W_l)], bbox_preds [(B, 4, H_l, W_l)],
        centerness [(B, 1, H_l, W_l)])``.
    """

    @staticmethod
    def default_criterion(num_classes: int) -> FCOSCriterion:
        return FCOSCriterion(num_classes, strides=STRIDES, regress_ranges=((-1, 32), (32, 64), (64, 1e8)))

    def __init__(
        self,
        num_classes: int = 3,
        criterion: FCOSCriterion | None = None,
        lr: float = 5e-3,
        weight_decay: float = 1e-4,
        channels: int = 32,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ) -> None:
        super().__init__(criterion, num_classes, lr, weight_decay, channels, score_thr, nms_iou, max_det)
        self.save_hyperparameters()
        self.norm_on_bbox = bool(self.criterion.norm_on_bbox)
        self.head = DenseHead(channels, num_classes, 4, extra_channels=1, scale_reg=True)

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        cls_scores, raw, centerness = self.head(self.features(images))
        bbox_preds = [r.relu() if self.norm_on_bbox else r.exp() for r in raw]
        return cls_scores, bbox_preds, centerness

    def decode(
        self, outputs: tuple[list[Tensor], list[Tensor], list[Tensor]], image_size: Sequence[int]
    ) -> tuple[Tensor, Tensor]:
        cls_scores, bbox_preds, centerness = outputs
        sizes, points = level_priors(cls_scores, self.criterion.point_generator)
        distances = flatten_levels(bbox_preds, 4, "bbox_preds")
        if self.norm_on_bbox:
            distances = distances * prior_strides(sizes, 1, distances.device)[:, None]
        quality = flatten_levels(centerness, 1, "centerness").sigmoid()
        scores = (flatten_levels(cls_scores, self.num_classes, "cls_scores").sigmoid() * quality).sqrt()
        return distance2bbox(points, distances), scores


class ATSSDetector(DenseDetector):
    """ATSS: one square anchor per cell, ``DeltaXYWHCoder`` deltas, centerness; scores :math:`\\sigma(x_c)\\sigma(o)`.

    Args:
        num_classes: ``C``.
        criterion: ``None`` builds ``ATSSCriterion(C, strides=(8, 16, 32), octave_base_scale=4.0)``.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        channels: FPN and head channels.
        score_thr: lowest detection score kept.
        nms_iou: NMS IoU threshold.
        max_det: detections per image.

    Shape:
        ``forward``: ``(B, 3, H, W)`` → ``(cls_scores [(B, A·C, H_l, W_l)], bbox_preds [(B, A·4, H_l, W_l)],
        centerness [(B, A, H_l, W_l)])``.
    """

    @staticmethod
    def default_criterion(num_classes: int) -> ATSSCriterion:
        return ATSSCriterion(num_classes, strides=STRIDES, octave_base_scale=4.0)

    def __init__(
        self,
        num_classes: int = 3,
        criterion: ATSSCriterion | None = None,
        lr: float = 5e-3,
        weight_decay: float = 1e-4,
        channels: int = 32,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ) -> None:
        super().__init__(criterion, num_classes, lr, weight_decay, channels, score_thr, nms_iou, max_det)
        self.save_hyperparameters()
        anchors = self.criterion.anchor_generator.num_base_priors
        self.head = DenseHead(channels, anchors * num_classes, anchors * 4, extra_channels=anchors, scale_reg=True)

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        return self.head(self.features(images))

    def decode(
        self, outputs: tuple[list[Tensor], list[Tensor], list[Tensor]], image_size: Sequence[int]
    ) -> tuple[Tensor, Tensor]:
        cls_scores, bbox_preds, centerness = outputs
        criterion = self.criterion
        _, anchors = level_priors(cls_scores, criterion.anchor_generator)
        quality = flatten_levels(centerness, 1, "centerness").sigmoid()
        scores = flatten_levels(cls_scores, self.num_classes, "cls_scores").sigmoid() * quality
        return criterion.coder.decode(anchors, flatten_levels(bbox_preds, 4, "bbox_preds")), scores


class GFLDetector(DenseDetector):
    """GFL: joint class-quality scores and ``4·(reg_max + 1)``-bin distance distributions (stride units).

    Args:
        num_classes: ``C``.
        criterion: ``None`` builds ``GFLCriterion(C, strides=(8, 16, 32), octave_base_scale=4.0, reg_max=8)``.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        channels: FPN and head channels.
        score_thr: lowest detection score kept.
        nms_iou: NMS IoU threshold.
        max_det: detections per image.

    Shape:
        ``forward``: ``(B, 3, H, W)`` → ``(cls_scores [(B, C, H_l, W_l)], bbox_preds [(B, 4·(reg_max+1), H_l, W_l)])``.
    """

    @staticmethod
    def default_criterion(num_classes: int) -> GFLCriterion:
        return GFLCriterion(num_classes, strides=STRIDES, octave_base_scale=4.0, reg_max=8)

    def __init__(
        self,
        num_classes: int = 3,
        criterion: GFLCriterion | None = None,
        lr: float = 5e-3,
        weight_decay: float = 1e-4,
        channels: int = 32,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ) -> None:
        super().__init__(criterion, num_classes, lr, weight_decay, channels, score_thr, nms_iou, max_det)
        self.save_hyperparameters()
        self.reg_max = int(self.criterion.reg_max)
        self.head = DenseHead(channels, num_classes, 4 * (self.reg_max + 1), scale_reg=True)

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        cls_scores, bbox_preds, _ = self.head(self.features(images))
        return cls_scores, bbox_preds

    def decode(self, outputs: tuple[list[Tensor], list[Tensor]], image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        cls_scores, bbox_preds = outputs
        sizes, anchors = level_priors(cls_scores, self.criterion.anchor_generator)
        centers = (anchors[:, :2] + anchors[:, 2:]) / 2
        bins = flatten_levels(bbox_preds, 4 * (self.reg_max + 1), "bbox_preds")
        distances = integral(bins, self.reg_max) * prior_strides(sizes, 1, bins.device)[:, None]
        scores = flatten_levels(cls_scores, self.num_classes, "cls_scores").sigmoid()
        return distance2bbox(centers, distances), scores


class YOLOXDetector(DenseDetector):
    """YOLOX: a decoupled head fused into one raw map per level ``[tx, ty, tw, th, obj, cls…]``.

    Boxes decode as center :math:`(t_{xy} + g)\\,s` and size :math:`e^{t_{wh}} s`; scores are
    :math:`\\sigma(obj)\\,\\sigma(x_c)`.

    Args:
        num_classes: ``C``.
        criterion: ``None`` builds ``YOLOXCriterion(C, strides=(8, 16, 32))``.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        channels: FPN and head channels.
        score_thr: lowest detection score kept.
        nms_iou: NMS IoU threshold.
        max_det: detections per image.

    Shape:
        ``forward``: ``(B, 3, H, W)`` → ``[(B, 5 + C, H_l, W_l)]`` per level.
    """

    @staticmethod
    def default_criterion(num_classes: int) -> YOLOXCriterion:
        return YOLOXCriterion(num_classes, strides=STRIDES)

    def __init__(
        self,
        num_classes: int = 3,
        criterion: YOLOXCriterion | None = None,
        lr: float = 5e-3,
        weight_decay: float = 1e-4,
        channels: int = 32,
        score_thr: float = 0.05,
        nms_iou: float = 0.5,
        max_det: int = 100,
    ) -> None:
        super().__init__(criterion, num_classes, lr, weight_decay, channels, score_thr, nms_iou, max_det)
        self.save_hyperparameters()
        self.head = DenseHead(channels, num_classes, 4, extra_channels=1, extra_bias=prior_bias())
        self.grid_generator = PointGenerator(STRIDES, offset=0.0)  # cell corners (x·s, y·s), as the criterion's grid

    def forward(self, images: Tensor) -> list[Tensor]:
        cls_maps, box_maps, obj_maps = self.head(self.features(images))
        return [torch.cat([box, obj, cls], dim=1) for cls, box, obj in zip(cls_maps, box_maps, obj_maps, strict=True)]

    def criterion_inputs(self, outputs: list[Tensor]) -> tuple[list[Tensor]]:
        return (outputs,)

    def decode(self, outputs: list[Tensor], image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        sizes, grids = level_priors(outputs, self.grid_generator)
        stride = prior_strides(sizes, 1, grids.device)[:, None]
        raw = flatten_levels(outputs, 5 + self.num_classes, "outputs").float()
        center = raw[..., :2] * stride + grids
        size = raw[..., 2:4].exp() * stride
        scores = raw[..., 4:5].sigmoid() * raw[..., 5:].sigmoid()
        return torch.cat([center - size / 2, center + size / 2], dim=-1), scores

"""A tiny YOLOv8-style detector: anchor-free points, ``4·reg_max`` distance bins and sigmoid class scores."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_losses.boxes.coders import distance2bbox
from lightning_losses.boxes.priors import PointGenerator
from lightning_losses.demo.backbone import STRIDES, DenseHead
from lightning_losses.demo.dense import DenseDetector, level_priors, prior_strides
from lightning_losses.presets.base import flatten_levels
from lightning_losses.presets.yolov8 import YOLOv8Criterion

__all__ = ["YOLOv8Detector"]


class YOLOv8Detector(DenseDetector):
    """YOLOv8: a decoupled head fused into one map per level, the ``4·R`` box bins first, then the classes.

    Each side's distance is the softmax expectation over bins ``0 … R − 1``, in strides, from the cell centre;
    scores are :math:`\\sigma(x_c)` (no objectness, no centerness).

    Args:
        num_classes: ``C``.
        criterion: ``None`` builds ``YOLOv8Criterion(C, strides=(8, 16, 32), reg_max=8)`` (128-pixel images:
            a side of 7 strides at most covers them).
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        channels: FPN and head channels.
        score_thr: lowest detection score kept.
        nms_iou: NMS IoU threshold.
        max_det: detections per image.

    Shape:
        ``forward``: ``(B, 3, H, W)`` → ``[(B, 4·R + C, H_l, W_l)]`` per level.
    """

    @staticmethod
    def default_criterion(num_classes: int) -> YOLOv8Criterion:
        return YOLOv8Criterion(num_classes, strides=STRIDES, reg_max=8)

    def __init__(
        self,
        num_classes: int = 3,
        criterion: YOLOv8Criterion | None = None,
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
        self.head = DenseHead(channels, num_classes, 4 * self.reg_max)
        self.point_generator = PointGenerator(STRIDES, offset=0.5)  # cell centres, as the criterion's anchor points

    def forward(self, images: Tensor) -> list[Tensor]:
        cls_maps, box_maps, _ = self.head(self.features(images))
        return [torch.cat([box, cls], dim=1) for cls, box in zip(cls_maps, box_maps, strict=True)]

    def criterion_inputs(self, outputs: list[Tensor]) -> tuple[list[Tensor]]:
        return (outputs,)

    def decode(self, outputs: list[Tensor], image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        sizes, points = level_priors(outputs, self.point_generator)
        device = points.device
        rows = flatten_levels(outputs, 4 * self.reg_max + self.num_classes, "outputs").float()
        bins = rows[..., : 4 * self.reg_max].reshape(*rows.shape[:2], 4, self.reg_max).softmax(-1)
        distances = bins @ torch.arange(self.reg_max, dtype=torch.float32, device=device)
        distances = distances * prior_strides(sizes, 1, device)[:, None]
        return distance2bbox(points, distances), rows[..., 4 * self.reg_max :].sigmoid()

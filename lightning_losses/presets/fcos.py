"""FCOS criterion: point assignment by regress range, focal / IoU / centerness terms.

``centerness_target`` moved to :mod:`lightning_losses.boxes.targets`; its name here is a deprecated alias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_losses.assigners.points import FCOS_REGRESS_RANGES, PointAssigner
from lightning_losses.boxes.coders import bbox2distance, distance2bbox
from lightning_losses.boxes.priors import PointGenerator, level_indices, prior_strides
from lightning_losses.boxes.targets import centerness_target, gather_boxes, pad_targets
from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import CrossEntropyLoss, FocalLoss
from lightning_losses.losses.iou import IoULoss
from lightning_losses.presets.base import DenseCriterion
from lightning_losses.presets.class_targets import class_targets

__all__ = ["FCOSCriterion", "centerness_target"]


class FCOSCriterion(DenseCriterion):
    r"""FCOS's loss terms, equal to MMDetection's ``FCOSHead.loss_by_feat``.

    Points at cell centers ``((x + 0.5) s, (y + 0.5) s)`` are assigned by
    :class:`~lightning_losses.assigners.PointAssigner`; with :math:`n = \max(\mathrm{mean}_{ranks}\,\#pos, 1)`
    and :math:`c^*` the centerness target of each positive:

    .. math::
        \mathcal L_{cls} = \tfrac{1}{n}\textstyle\sum_{\text{points}} \mathrm{FL}, \quad
        \mathcal L_{bbox} = \frac{\sum_{pos} c^* \,\ell_{IoU}}{\max(\mathrm{mean}_{ranks}\sum c^*, 10^{-6})}, \quad
        \mathcal L_{ctr} = \tfrac{1}{n}\textstyle\sum_{pos} \mathrm{BCE}(o, c^*)

    The box term compares boxes decoded from the predicted and target distances. Defaults follow
    MMDetection's FCOS config (no center sampling, ``IoULoss(mode="log")``); the improved variant is
    ``center_sampling=True, norm_on_bbox=True`` with ``loss_bbox=GIoULoss()`` and ``centerness`` from the
    regression branch (the head's concern).

    Args:
        num_classes: ``C``.
        strides: stride per level.
        regress_ranges: ``(lo, hi)`` of each level's largest target distance, inclusive.
        center_sampling: positives only inside each box's center region.
        center_sample_radius: region half-size in strides.
        norm_on_bbox: ``bbox_preds`` are in stride units (targets divided by the stride).
        loss_cls: default ``FocalLoss(gamma=2, alpha=0.25)``; receives ``(N,)`` labels, background ``C``,
            or ``(N, C)`` one-hot rows for a loss that takes no labels (see
            :func:`~lightning_losses.presets.class_targets.class_targets`).
        loss_bbox: default ``IoULoss(mode="log")``.
        loss_centerness: default ``CrossEntropyLoss(use_sigmoid=True)``.
        max_assign_elements: the assigner's ``max_elements`` (``None``: its default, cut to free memory).

    Shape:
        - ``cls_scores[l]``: ``(B, C, H_l, W_l)``; ``bbox_preds[l]``: ``(B, 4, H_l, W_l)`` positive
          ``(l, t, r, b)``; ``centerness[l]``: ``(B, 1, H_l, W_l)`` logits.
        - ``priors``: optional ``(P, 2)`` points replacing the generated ones.

    Returns:
        ``{"loss_cls", "loss_bbox", "loss_centerness"}``.

    Targets: one ``{"boxes": (M, 4), "labels": (M,)}`` dict per image; boxes in absolute pixels of the image the
    maps were computed on, ``xyxy``; labels 0-based class indices in ``[0, C)``, the background implicit (never a
    label). The first call checks them (see :class:`~lightning_losses.presets.DenseCriterion`).

    Example:
        >>> criterion = FCOSCriterion(num_classes=2, strides=[8], regress_ranges=[(-1, 1e8)])
        >>> target = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 32.0]]), "labels": torch.tensor([1])}]
        >>> maps = [torch.zeros(1, 2, 8, 8)], [torch.ones(1, 4, 8, 8)], [torch.zeros(1, 1, 8, 8)]
        >>> terms = criterion(*maps, target)
        >>> sorted(terms), round(terms["loss_centerness"].item(), 4)  # BCE of zero logits: log 2
        (['loss_bbox', 'loss_centerness', 'loss_cls'], 0.6931)

    Reference: Tian et al., *FCOS: Fully Convolutional One-Stage Object Detection*, ICCV 2019.
    """

    terms = ("loss_cls", "loss_bbox", "loss_centerness")

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES,
        center_sampling: bool = False,
        center_sample_radius: float = 1.5,
        norm_on_bbox: bool = False,
        loss_cls: LossMetric | Mapping[str, Any] | None = None,
        loss_bbox: LossMetric | Mapping[str, Any] | None = None,
        loss_centerness: LossMetric | Mapping[str, Any] | None = None,
        max_assign_elements: int | None = None,
    ) -> None:
        super().__init__(num_classes, strides)
        self.point_generator = PointGenerator(self.strides, offset=0.5)
        self.assigner = PointAssigner(regress_ranges, center_sampling, center_sample_radius, max_assign_elements)
        self.norm_on_bbox = norm_on_bbox
        self.loss_cls = self.build_term(loss_cls, FocalLoss(gamma=2.0, alpha=0.25))
        self.loss_bbox = self.build_term(loss_bbox, IoULoss(mode="log"))
        self.loss_centerness = self.build_term(loss_centerness, CrossEntropyLoss(use_sigmoid=True))

    def forward(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        centerness: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        image_size: Sequence[int] | Tensor | None = None,
        priors: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Return ``loss_cls``, ``loss_bbox`` and ``loss_centerness`` for one batch (``image_size`` is unused:
        FCOS scores every point of the padded maps, as MMDetection does)."""
        cls, box, ctr = self.flatten_outputs(targets, cls_scores, bbox_preds, centerness=centerness)
        batch, num_points = cls.shape[:2]
        device = cls.device
        counts = [h * w for h, w in self.featmap_sizes(cls_scores)]
        if priors is None:
            priors = self.point_generator.priors(self.featmap_sizes(cls_scores), device)
        if priors.shape != (num_points, 2):
            raise ValueError(f"`priors` must have shape ({num_points}, 2) points, got {tuple(priors.shape)}")
        levels = level_indices(counts, device)
        gts = pad_targets(targets, device)
        assign = self.assigner.assign(priors, levels, self.strides, gts)
        positive = assign.positive

        matched = gather_boxes(gts.boxes, assign.matched)
        stride = prior_strides(counts, self.strides, device, priors.dtype) if self.norm_on_bbox else None
        distances = bbox2distance(priors.expand(batch, -1, -1), matched, stride=stride)
        # Negatives get unit distances, so their (zero-weight) targets stay finite.
        distances = torch.where(positive[..., None], distances, torch.ones_like(distances))
        ctr_target = torch.where(positive, centerness_target(distances), torch.zeros_like(distances[..., 0]))

        num_pos, ctr_sum = self.average_over_ranks(positive.sum(), ctr_target.sum())
        num_pos = num_pos.clamp(min=1.0)
        ctr_denorm = ctr_sum.clamp(min=1e-6)

        loss_cls = self.loss_cls(
            cls.reshape(-1, self.num_classes),
            class_targets(self.loss_cls, assign.labels, self.num_classes, cls.dtype),
            avg_factor=num_pos,
        )
        loss_bbox = self.loss_bbox(
            distance2bbox(priors, box).reshape(-1, 4),
            distance2bbox(priors, distances).reshape(-1, 4),
            weight=ctr_target.reshape(-1),
            avg_factor=ctr_denorm,
        )
        loss_centerness = self.loss_centerness(
            ctr.reshape(-1), ctr_target.reshape(-1), weight=positive.reshape(-1).to(ctr.dtype), avg_factor=num_pos
        )
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_centerness}

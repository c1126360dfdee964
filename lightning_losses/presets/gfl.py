"""GFL criterion: ATSS assignment, quality focal, GIoU and distribution focal terms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_losses.assigners.atss import ATSSAssigner, atss_targets
from lightning_losses.assigners.base import AssignResult
from lightning_losses.assigners.rows import positive_rows
from lightning_losses.boxes.coders import bbox2distance, distance2bbox, integral
from lightning_losses.boxes.iou import bbox_overlaps
from lightning_losses.boxes.priors import AnchorGenerator, prior_strides
from lightning_losses.boxes.targets import gather_boxes
from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import DistributionFocalLoss, QualityFocalLoss
from lightning_losses.losses.iou import GIoULoss
from lightning_losses.presets.base import DenseCriterion

__all__ = ["GFLCriterion"]


class GFLCriterion(DenseCriterion):
    r"""GFL's loss terms, equal to MMDetection's ``GFLHead.loss_by_feat``.

    ATSS assignment on one ``8·s`` anchor per cell; boxes are handled in stride units: each positive's
    box :math:`\hat b` is the anchor center minus / plus the integral of the ``reg_max + 1``-bin
    distributions. With :math:`N` as in ATSS, the quality target :math:`q = \mathrm{IoU}(\hat b_{detached}, b)`
    (0 for negatives) and the weight :math:`w = \max_c \sigma(x_c)` (detached) of each positive:

    .. math::
        \mathcal L_{cls} = \tfrac1N \textstyle\sum \mathrm{QFL}(x, (y, q)), \quad
        \mathcal L_{bbox} = 2\,\frac{\sum_{pos} w\,(1 - \mathrm{GIoU}(\hat b, b))}{W}, \quad
        \mathcal L_{dfl} = 0.25\,\frac{\sum_{pos} w \sum_{side} \mathrm{DFL}}{4 W}

    with :math:`W = \max(\mathrm{mean}_{ranks}\sum w, 1)` and DFL targets clamped to ``[0, reg_max - 0.1]``.

    Args:
        num_classes: ``C``.
        strides: stride per level.
        reg_max: largest distribution bin.
        octave_base_scale: anchor side in strides.
        topk: ATSS candidates per level.
        loss_cls: default ``QualityFocalLoss(beta=2.0)`` (receives ``(labels, scores)``).
        loss_bbox: default ``GIoULoss(loss_weight=2.0)``.
        loss_dfl: default ``DistributionFocalLoss(loss_weight=0.25)``.
        max_assign_elements: the assigner's ``max_elements`` (``None``: its default, cut to free memory).

    Shape:
        ``cls_scores[l]`` ``(B, C, H_l, W_l)``; ``bbox_preds[l]`` ``(B, 4·(reg_max+1), H_l, W_l)``, channel
        ``side·(reg_max+1) + bin``, sides ``(l, t, r, b)``; ``priors`` optional ``(P, 4)`` anchors.

    Targets: one ``{"boxes": (M, 4), "labels": (M,)}`` dict per image; boxes in absolute pixels of the image the
    maps were computed on, ``xyxy``; labels 0-based class indices in ``[0, C)``, the background implicit (never a
    label). The first call checks them (see :class:`~lightning_losses.presets.DenseCriterion`).

    Example:
        >>> criterion = GFLCriterion(num_classes=2, strides=[8])
        >>> target = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 32.0]]), "labels": torch.tensor([1])}]
        >>> terms = criterion([torch.zeros(1, 2, 8, 8)], [torch.zeros(1, 4 * 17, 8, 8)], target, image_size=64)
        >>> sorted(terms), bool(terms["loss_dfl"] > 0)
        (['loss_bbox', 'loss_cls', 'loss_dfl'], True)

    Reference: Li et al., *Generalized Focal Loss*, NeurIPS 2020.
    """

    terms = ("loss_cls", "loss_bbox", "loss_dfl")

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        reg_max: int = 16,
        octave_base_scale: float = 8.0,
        topk: int = 9,
        loss_cls: LossMetric | Mapping[str, Any] | None = None,
        loss_bbox: LossMetric | Mapping[str, Any] | None = None,
        loss_dfl: LossMetric | Mapping[str, Any] | None = None,
        max_assign_elements: int | None = None,
    ) -> None:
        super().__init__(num_classes, strides)
        if reg_max < 1:
            raise ValueError(f"`reg_max` must be >= 1, got {reg_max}")
        self.reg_max = int(reg_max)
        self.anchor_generator = AnchorGenerator(
            self.strides, ratios=(1.0,), octave_base_scale=octave_base_scale, scales_per_octave=1
        )
        self.assigner = ATSSAssigner(topk, max_assign_elements)
        self.loss_cls = self.build_term(loss_cls, QualityFocalLoss(beta=2.0))
        self.loss_bbox = self.build_term(loss_bbox, GIoULoss(loss_weight=2.0))
        self.loss_dfl = self.build_term(loss_dfl, DistributionFocalLoss(loss_weight=0.25))

    def forward(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        image_size: Sequence[int] | Tensor | None = None,
        priors: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Return ``loss_cls``, ``loss_bbox`` and ``loss_dfl`` for one batch."""
        bins = self.reg_max + 1
        cls, box, _ = self.flatten_outputs(targets, cls_scores, bbox_preds, box_channels=4 * bins)
        t = atss_targets(self.anchor_generator, self.assigner, cls_scores, targets, priors, image_size)
        counts = [int(m.shape[-2] * m.shape[-1]) for m in cls_scores]
        stride = prior_strides(counts, self.strides, cls.device, t.anchors.dtype)
        centers = (t.anchors[:, :2] + t.anchors[:, 2:]) / 2 / stride[:, None]
        target_boxes = t.boxes / stride[:, None]
        positive = t.positive
        # Only positives are scored (MMDetection): each image's positives are gathered into a bounded number of
        # rows, without reading their count back. ATSS gives a box at most ``topk`` priors per level, so an image
        # has at most ``G · topk · L`` positives. Filler rows weigh nothing and see zero logits, so a non-finite
        # prediction on a negative cell cannot turn the weighted box and DFL sums, or their gradients, into NaN.
        num_gts = max((int(x["boxes"].shape[0]) for x in targets), default=0)
        # Each positive prior is "matched" to its own row of ``target_boxes`` (its box, in stride units).
        own = torch.arange(1, positive.shape[1] + 1, device=positive.device).expand_as(positive)
        assign = AssignResult(torch.where(positive, own, 0), torch.zeros_like(target_boxes[..., 0]), t.labels)
        rows = positive_rows(assign, target_boxes, self.assigner.topk * len(counts) * num_gts)
        valid, row_targets = rows.valid, rows.boxes
        row_centers = centers[rows.index]
        # The box and DFL terms gather on their own, so their graphs share no saved tensor: a backward
        # through one term (without retain_graph) leaves the other's graph intact.
        row_box = torch.where(valid[..., None], gather_boxes(box, rows.index), 0.0)
        pred_boxes = distance2bbox(row_centers, integral(row_box, self.reg_max))
        row_score = torch.where(valid, bbox_overlaps(pred_boxes.detach(), row_targets, is_aligned=True), 0.0)
        dtype = torch.promote_types(row_score.dtype, cls.dtype)
        score = cls.new_zeros(cls.shape[:2], dtype=dtype).scatter(1, rows.index, row_score.to(dtype))
        row_cls = gather_boxes(cls.detach(), rows.index)
        weight = torch.where(valid, row_cls.sigmoid().amax(dim=-1), torch.zeros_like(row_score))
        avg_factor, weight_sum = self.average_over_ranks(t.avg_factor(), weight.sum())
        weight_sum = weight_sum.clamp(min=1)

        labels = torch.where(positive, t.labels, self.num_classes)
        loss_cls = self.loss_cls(
            cls.reshape(-1, self.num_classes),
            (labels.reshape(-1), score.reshape(-1)),
            weight=None if t.label_weight is None else t.label_weight.reshape(-1),
            avg_factor=avg_factor,
        )
        loss_bbox = self.loss_bbox(
            pred_boxes.reshape(-1, 4), row_targets.reshape(-1, 4), weight=weight.reshape(-1), avg_factor=weight_sum
        )
        corners = bbox2distance(row_centers, row_targets, max_dis=self.reg_max, eps=0.1)
        loss_dfl = self.loss_dfl(
            torch.where(valid[..., None], gather_boxes(box, rows.index), 0.0).reshape(-1, bins),
            corners.reshape(-1),
            weight=weight[..., None].expand(-1, -1, 4).reshape(-1),
            avg_factor=4 * weight_sum,
        )
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_dfl": loss_dfl}

"""ATSS criterion: adaptive sample selection, focal / GIoU / centerness terms.

``ATSSTargets`` and ``atss_targets`` moved to :mod:`lightning_losses.assigners.atss`; their names here are
deprecated aliases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_losses.assigners.atss import ATSSAssigner, ATSSTargets, atss_targets
from lightning_losses.boxes.coders import DeltaXYWHCoder, bbox2distance
from lightning_losses.boxes.priors import AnchorGenerator
from lightning_losses.boxes.targets import centerness_target
from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import CrossEntropyLoss, FocalLoss
from lightning_losses.losses.iou import GIoULoss
from lightning_losses.presets.base import DenseCriterion
from lightning_losses.presets.class_targets import class_targets

__all__ = ["ATSSCriterion", "ATSSTargets", "atss_targets"]


class ATSSCriterion(DenseCriterion):
    r"""ATSS's loss terms, equal to MMDetection's ``ATSSHead.loss_by_feat``.

    One square anchor of side ``8·s`` per cell, assigned by :class:`~lightning_losses.assigners.ATSSAssigner`
    (top 9 per level). With :math:`N = \mathrm{mean}_{ranks}\sum_{img}\max(n^{pos}_{img}, 1)` and the
    centerness target :math:`c^*` of each positive computed from its anchor center:

    .. math::
        \mathcal L_{cls} = \tfrac1N \textstyle\sum \mathrm{FL}, \quad
        \mathcal L_{bbox} = 2\,\frac{\sum_{pos} c^*\,(1 - \mathrm{GIoU}(\hat b, b))}
            {\max(\mathrm{mean}_{ranks}\sum c^*, 1)}, \quad
        \mathcal L_{ctr} = \tfrac1N \textstyle\sum_{pos} \mathrm{BCE}(o, c^*)

    where :math:`\hat b` decodes ``bbox_preds`` by ``DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))``.

    Args:
        num_classes: ``C``.
        strides: stride per level.
        octave_base_scale: anchor side in strides.
        topk: ATSS candidates per level.
        target_stds: coder stds.
        loss_cls: default ``FocalLoss(gamma=2, alpha=0.25)``; receives ``(N,)`` labels, background ``C``,
            or ``(N, C)`` one-hot rows for a loss that takes no labels (see
            :func:`~lightning_losses.presets.class_targets.class_targets`).
        loss_bbox: default ``GIoULoss(loss_weight=2.0)``.
        loss_centerness: default ``CrossEntropyLoss(use_sigmoid=True)``.
        max_assign_elements: the assigner's ``max_elements`` (``None``: its default, cut to free memory).

    Shape:
        ``cls_scores[l]`` ``(B, C, H_l, W_l)``, ``bbox_preds[l]`` ``(B, 4, H_l, W_l)`` deltas,
        ``centerness[l]`` ``(B, 1, H_l, W_l)``; ``priors`` optional ``(P, 4)`` anchors.

    Targets: one ``{"boxes": (M, 4), "labels": (M,)}`` dict per image; boxes in absolute pixels of the image the
    maps were computed on, ``xyxy``; labels 0-based class indices in ``[0, C)``, the background implicit (never a
    label). The first call checks them (see :class:`~lightning_losses.presets.DenseCriterion`).

    Example:
        >>> criterion = ATSSCriterion(num_classes=2, strides=[8])
        >>> target = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 32.0]]), "labels": torch.tensor([1])}]
        >>> maps = [torch.zeros(1, 2, 8, 8)], [torch.zeros(1, 4, 8, 8)], [torch.zeros(1, 1, 8, 8)]
        >>> terms = criterion(*maps, target, image_size=64)
        >>> sorted(terms), round(terms["loss_centerness"].item(), 4)  # BCE of zero logits: log 2
        (['loss_bbox', 'loss_centerness', 'loss_cls'], 0.6931)

    Reference: Zhang et al., *Bridging the Gap Between Anchor-based and Anchor-free Detection*, CVPR 2020.
    """

    terms = ("loss_cls", "loss_bbox", "loss_centerness")

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        octave_base_scale: float = 8.0,
        topk: int = 9,
        target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        loss_cls: LossMetric | Mapping[str, Any] | None = None,
        loss_bbox: LossMetric | Mapping[str, Any] | None = None,
        loss_centerness: LossMetric | Mapping[str, Any] | None = None,
        max_assign_elements: int | None = None,
    ) -> None:
        super().__init__(num_classes, strides)
        self.anchor_generator = AnchorGenerator(
            self.strides, ratios=(1.0,), octave_base_scale=octave_base_scale, scales_per_octave=1
        )
        self.assigner = ATSSAssigner(topk, max_assign_elements)
        self.coder = DeltaXYWHCoder((0.0, 0.0, 0.0, 0.0), target_stds)
        self.loss_cls = self.build_term(loss_cls, FocalLoss(gamma=2.0, alpha=0.25))
        self.loss_bbox = self.build_term(loss_bbox, GIoULoss(loss_weight=2.0))
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
        """Return ``loss_cls``, ``loss_bbox`` and ``loss_centerness`` for one batch."""
        cls, box, ctr = self.flatten_outputs(targets, cls_scores, bbox_preds, centerness=centerness)
        t = atss_targets(self.anchor_generator, self.assigner, cls_scores, targets, priors, image_size)
        anchor_centers = (t.anchors[:, :2] + t.anchors[:, 2:]) / 2
        ctr_target = torch.where(
            t.positive, centerness_target(bbox2distance(anchor_centers, t.boxes)), torch.zeros_like(ctr)
        )
        avg_factor, ctr_sum = self.average_over_ranks(t.avg_factor(), ctr_target.sum())

        loss_cls = self.loss_cls(
            cls.reshape(-1, self.num_classes),
            class_targets(self.loss_cls, t.labels, self.num_classes, cls.dtype),
            weight=None if t.label_weight is None else t.label_weight.reshape(-1),
            avg_factor=avg_factor,
        )
        # Only positives are scored (MMDetection): negatives compare their dummy box with itself, so a
        # non-finite prediction on a negative anchor cannot turn the weighted sum into NaN (0 · NaN).
        decoded = torch.where(t.positive[..., None], self.coder.decode(t.anchors, box), t.boxes)
        loss_bbox = self.loss_bbox(
            decoded.reshape(-1, 4),
            t.boxes.reshape(-1, 4),
            weight=ctr_target.reshape(-1),
            avg_factor=ctr_sum.clamp(min=1),
        )
        loss_centerness = self.loss_centerness(
            ctr.reshape(-1), ctr_target.reshape(-1), weight=t.positive.reshape(-1).to(ctr.dtype), avg_factor=avg_factor
        )
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_centerness}

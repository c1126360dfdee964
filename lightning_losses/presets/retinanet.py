"""RetinaNet criterion: max-IoU anchors, focal classification, delta regression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_losses.assigners.max_iou import MaxIoUAssigner
from lightning_losses.boxes.coders import DeltaXYWHCoder
from lightning_losses.boxes.priors import AnchorGenerator, image_valid_flags
from lightning_losses.boxes.targets import gather_boxes, pad_targets
from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import FocalLoss
from lightning_losses.presets.base import DenseCriterion
from lightning_losses.presets.class_targets import class_targets
from lightning_losses.presets.styles import RETINANET_STYLES, RetinaNetStyle

__all__ = ["RetinaNetCriterion"]

STYLES = tuple(RETINANET_STYLES)


class RetinaNetCriterion(DenseCriterion):
    r"""RetinaNet's loss terms from per-level head outputs and ground-truth boxes.

    Anchors (``octave_base_scale · 2^{i/3}`` × stride, ratios h/w 0.5, 1, 2, centered on cell corners)
    are matched by :class:`~lightning_losses.assigners.MaxIoUAssigner` (positive ≥ 0.5, negative < 0.4,
    ignored between, low-quality matches). Then, with ``style="mmdet"`` (MMDetection's ``RetinaHead``):

    .. math::
        N = \mathrm{mean}_{\text{ranks}} \textstyle\sum_{\text{img}} \max(n^{pos}_{img}, 1), \quad
        \mathcal L_{cls} = \frac{1}{N}\sum_{\text{non-ignored}} \mathrm{FL}, \quad
        \mathcal L_{bbox} = \frac{1}{N}\sum_{pos} \ell(\delta, \mathrm{enc}(a, g))

    with ``DeltaXYWHCoder(means 0, stds 1)`` targets. MMDetection does not average :math:`N` over ranks;
    this criterion does (one process is unchanged).

    ``style="netspresso"`` is NetsPresso Trainer's ``retinanet_loss`` (torchvision's RetinaNet): focal summed
    over non-ignored anchors and L1 summed over positives, each divided by that image's
    :math:`\max(1, n^{pos})`, then averaged over images; in its low-quality step an anchor that attains a
    box's max IoU is matched to its own best box. Its normaliser is per image, so it is not averaged over
    ranks. Neither style lets a box that overlaps no anchor turn zero-IoU anchors positive. Each style's
    choices are one :class:`~lightning_losses.presets.styles.RetinaNetStyle` (:attr:`conventions`).

    Args:
        num_classes: ``C``, classes without background.
        strides: stride per level.
        octave_base_scale: anchor scale base.
        scales_per_octave: anchor scales per octave.
        ratios: anchor height / width ratios.
        center_offset: anchor center offset within a cell.
        pos_iou_thr: positive IoU threshold.
        neg_iou_thr: negative IoU threshold.
        min_pos_iou: low-quality matching floor.
        target_means: coder means.
        target_stds: coder stds.
        style: ``"mmdet"`` or ``"netspresso"``.
        loss_cls: classification term (default ``FocalLoss(gamma=2, alpha=0.25)``); receives ``(N,)``
            labels, background ``C``, or ``(N, C)`` one-hot rows for a loss that takes no labels (see
            :func:`~lightning_losses.presets.class_targets.class_targets`).
        loss_bbox: box term on deltas (default ``SmoothL1Loss(beta=1.0)``; ``L1Loss`` with netspresso style).
        max_assign_elements: the assigner's ``max_elements`` (``None``: its default, cut to free memory).

    Shape:
        - ``cls_scores[l]``: ``(B, A·C, H_l, W_l)`` (or ``(B, N_l, C)`` already flattened).
        - ``bbox_preds[l]``: ``(B, A·4, H_l, W_l)`` (or ``(B, N_l, 4)``).
        - ``targets``: ``B`` dicts ``{"boxes": (M, 4) xyxy, "labels": (M,)}``.
        - ``priors``: optional ``(P, 4)`` anchors replacing the generated ones.
        - ``image_size``: optional ``(H, W)`` or per-image ``(B, 2)`` padded shapes; anchors on cells beyond
          them are ignored.

    Returns:
        ``{"loss_cls": Tensor, "loss_bbox": Tensor}``.

    Targets: one ``{"boxes": (M, 4), "labels": (M,)}`` dict per image; boxes in absolute pixels of the image the
    maps were computed on, ``xyxy``; labels 0-based class indices in ``[0, C)``, the background implicit (never a
    label). The first call checks them (see :class:`~lightning_losses.presets.DenseCriterion`).

    Example:
        >>> criterion = RetinaNetCriterion(num_classes=2, strides=[8])
        >>> target = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 32.0]]), "labels": torch.tensor([1])}]
        >>> terms = criterion([torch.zeros(1, 9 * 2, 8, 8)], [torch.zeros(1, 9 * 4, 8, 8)], target, image_size=64)
        >>> sorted(terms), bool(terms["loss_cls"] > 0)
        (['loss_bbox', 'loss_cls'], True)

    Reference: Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017.
    """

    terms = ("loss_cls", "loss_bbox")

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        octave_base_scale: float = 4.0,
        scales_per_octave: int = 3,
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        center_offset: float = 0.0,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.4,
        min_pos_iou: float = 0.0,
        target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        style: str = "mmdet",
        loss_cls: LossMetric | Mapping[str, Any] | None = None,
        loss_bbox: LossMetric | Mapping[str, Any] | None = None,
        max_assign_elements: int | None = None,
    ) -> None:
        super().__init__(num_classes, strides)
        if style not in STYLES:
            raise ValueError(f"`style` must be one of {STYLES}, got {style!r}")
        self.style = style
        conventions = self.conventions
        self.anchor_generator = AnchorGenerator(
            self.strides,
            ratios=ratios,
            octave_base_scale=octave_base_scale,
            scales_per_octave=scales_per_octave,
            center_offset=center_offset,
        )
        self.assigner = MaxIoUAssigner(
            pos_iou_thr,
            neg_iou_thr,
            min_pos_iou,
            match_low_quality=True,
            low_quality_match=conventions.low_quality_match,
            max_elements=max_assign_elements,
        )
        self.coder = DeltaXYWHCoder(target_means, target_stds)
        self.loss_cls = self.build_term(loss_cls, FocalLoss(gamma=2.0, alpha=0.25))
        self.loss_bbox = self.build_term(loss_bbox, conventions.default_loss_bbox())

    @property
    def conventions(self) -> RetinaNetStyle:
        """What :attr:`style` chooses: matcher, normaliser and default box loss."""
        return RETINANET_STYLES[self.style]

    def forward(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        image_size: Sequence[int] | Tensor | None = None,
        priors: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Return ``loss_cls`` and ``loss_bbox`` for one batch."""
        cls, box, _ = self.flatten_outputs(targets, cls_scores, bbox_preds)
        batch, num_priors = cls.shape[:2]
        device = cls.device
        prior_mask = None
        if priors is None:
            sizes = self.featmap_sizes(cls_scores)
            priors = self.anchor_generator.priors(sizes, device)
            if image_size is not None:
                per_cell = self.anchor_generator.num_base_priors
                prior_mask = image_valid_flags(sizes, self.strides, per_cell, image_size, batch, device)
        if priors.shape != (num_priors, 4):
            raise ValueError(f"`priors` must have shape ({num_priors}, 4) for these outputs, got {tuple(priors.shape)}")
        gts = pad_targets(targets, device)
        assign = self.assigner.assign(priors.float(), gts, prior_mask)

        positive = assign.positive
        label_weight = (assign.gt_inds >= 0).to(cls.dtype)
        matched = gather_boxes(gts.boxes, assign.matched)
        # Negatives get the anchor itself as target, so their (zero-weight) deltas are finite.
        matched = torch.where(positive[..., None], matched, priors.float())
        box_target = self.coder.encode(priors.float().expand_as(matched), matched)
        box_weight = positive[..., None].expand_as(box_target).to(box.dtype)
        per_image, avg_factor, reduction = self._normalisers(positive.sum(dim=1), cls.dtype)
        if per_image is not None:
            label_weight = label_weight * per_image
            box_weight = box_weight * per_image[..., None]

        loss_cls = self.loss_cls(
            cls.reshape(-1, self.num_classes),
            class_targets(self.loss_cls, assign.labels, self.num_classes, cls.dtype),
            weight=label_weight.reshape(-1),
            avg_factor=avg_factor,
            reduction_override=reduction,
        )
        loss_bbox = self.loss_bbox(
            box.reshape(-1, 4),
            box_target.reshape(-1, 4),
            weight=box_weight.reshape(-1, 4),
            avg_factor=avg_factor,
            reduction_override=reduction,
        )
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

    def _normalisers(self, num_pos: Tensor, dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None, str | None]:
        r"""``(per_image, avg_factor, reduction_override)`` of the style's normaliser, from ``(B,)`` positives.

        Per image: ``(B, 1)`` weights :math:`1 / (B \max(1, n^{pos}))` and a sum. Per batch:
        :math:`\mathrm{mean}_{ranks}\sum_{img}\max(n^{pos}_{img}, 1)` as ``avg_factor``.
        """
        if self.conventions.per_image_normaliser:
            per_image = 1.0 / (num_pos.clamp(min=1).to(dtype) * num_pos.shape[0])
            return per_image[:, None], None, "sum"
        (avg_factor,) = self.average_over_ranks(num_pos.clamp(min=1).sum())
        return None, avg_factor, None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, style={self.style!r}"

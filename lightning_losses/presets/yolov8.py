"""YOLOv8 / YOLOv9 criterion: task-aligned assignment, BCE, CIoU and distribution focal terms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_losses.assigners.task_aligned import TASK_ALIGNED_STYLES, TaskAlignedAssigner
from lightning_losses.boxes.cache import DeviceCache
from lightning_losses.boxes.level_rows import split_level_rows
from lightning_losses.boxes.targets import pad_targets
from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import DistributionFocalLoss, QualityFocalLoss
from lightning_losses.losses.yolo_iou import YOLOCIoULoss
from lightning_losses.presets.base import DenseCriterion, gather_boxes, onehot_targets

__all__ = ["YOLOv8Criterion"]

YOLOv8Outputs = Sequence[Tensor] | Sequence[Sequence[Tensor]]


class YOLOv8Criterion(DenseCriterion):
    r"""The loss of YOLOv8 / YOLOv9 / YOLO11: task-aligned assignment, BCE, CIoU and DFL terms.

    Priors are points at cell centres :math:`((x + \tfrac12) s, (y + \tfrac12) s)`. Each side's distance, in
    strides, is the softmax expectation over bins :math:`0 \dots R - 1` (:math:`R` = ``reg_max``):
    :math:`d = \sum_i i\, \mathrm{softmax}(x)_i`. :class:`~lightning_losses.assigners.TaskAlignedAssigner`
    (``topk``, ``alpha`` on the class score, ``beta`` on the IoU) matches priors to boxes on the detached
    predictions and gives each positive a soft class target :math:`\hat s_p` (0 for negatives). With
    :math:`n = \max(\mathrm{mean}_{ranks} \sum_p \hat s_p, 1)`:

    .. math::
        \mathcal L_{cls} = \tfrac{0.5}{n} \textstyle\sum_{p,c} \mathrm{BCE}(x_{pc}, \hat s_p [c = y_p]), \quad
        \mathcal L_{bbox} = \tfrac{7.5}{n} \textstyle\sum_{pos} \hat s_p (1 - \mathrm{CIoU}_p), \quad
        \mathcal L_{dfl} = \tfrac{1.5}{n} \textstyle\sum_{pos} \hat s_p\, \tfrac14 \sum_{side} \mathrm{DFL}

    the CIoU in stride units (:class:`~lightning_losses.YOLOCIoULoss`: :math:`\alpha` ungated, unclamped), the
    DFL on the box's distances in strides clamped to :math:`[0, R - 1.01]`. The gains 0.5 / 7.5 / 1.5 are the
    terms' ``loss_weight``.

    **Normaliser and DDP.** :math:`n` is averaged over ranks (one all-reduce per step), so each rank's loss is
    its share of the full batch's: with DDP's gradient averaging, :math:`R` ranks give the gradient of one
    process on the whole batch, whatever :math:`R`. ultralytics instead normalises by each rank's own
    :math:`\sum \hat s` and returns the loss multiplied by the batch size (its ``loss_items`` are the values
    before that product, which these terms equal in one process). NetsPresso Trainer normalises per rank too.

    Styles (the BCE, CIoU and DFL terms are the same in both):

    - ``"ultralytics"``: ultralytics 8.4's ``v8DetectionLoss`` with ``TaskAlignedAssigner(topk=10, alpha=0.5,
      beta=6.0)``: box sides below the second stride are widened to it for the candidate test, a prior
      claimed by several boxes goes to the candidate box it overlaps most, a box whose coordinates sum to
      0 or less is ignored (ultralytics takes it for padding).
    - ``"netspresso"``: NetsPresso Trainer 1.4.1's ``yolov9_loss``: boxes as given, a prior claimed by
      several boxes goes to the box it overlaps most over all boxes of the image. NetsPresso returns only
      ``0.5·cls + 7.5·iou + 1.5·dfl``: the sum of these terms.

    See :class:`~lightning_losses.assigners.TaskAlignedAssigner` for the rest of the assignment.

    Args:
        num_classes: ``C``.
        strides: stride per level; ``None`` derives ``image_size[-1] // W_l`` (NetsPresso's rule).
        reg_max: bins per side :math:`R` (at least 2).
        style: ``"ultralytics"`` or ``"netspresso"``.
        topk: positives per box, at most.
        alpha: exponent of the class score in the alignment metric.
        beta: exponent of the IoU in the alignment metric.
        loss_cls: default ``QualityFocalLoss(beta=0.0, loss_weight=0.5)``, which is BCE against the soft
            target taken as (label, score) per prior, with no ``(B·P, C)`` target; any other loss receives
            the dense ``(B·P, C)`` target.
        loss_bbox: default ``YOLOCIoULoss(eps=1e-7, loss_weight=7.5)``, weighted by each positive's target.
        loss_dfl: default ``DistributionFocalLoss(loss_weight=1.5)``, each side weighted by a quarter of it.
        max_assign_elements: the assigner's ``max_elements`` (``None``: its default, cut to free memory).

    Shape:
        ``outputs``: per level either one map ``(B, 4·R + C, H_l, W_l)`` with the box bins first, channel
        ``side·R + bin`` (ultralytics' ``Detect`` head, NetsPresso's YOLOv9 head), or a pair
        ``(box (B, 4·R, H_l, W_l), cls (B, C, H_l, W_l))``. ``targets``: one ``{"boxes", "labels"}`` per image,
        pixel ``xyxy``.

    Targets: one ``{"boxes": (M, 4), "labels": (M,)}`` dict per image; boxes in absolute pixels of the image the
    maps were computed on, ``xyxy``; labels 0-based class indices in ``[0, C)``, the background implicit (never a
    label). The first call checks them (see :class:`~lightning_losses.presets.DenseCriterion`). A
    model's list of levels goes to :meth:`~lightning_losses.DetectionLossModule.compute_losses` as it is.

    Example:
        >>> criterion = YOLOv8Criterion(num_classes=2, strides=(8, 16))
        >>> maps = [torch.zeros(1, 4 * 16 + 2, 4, 4), torch.zeros(1, 66, 2, 2)]
        >>> target = [{"boxes": torch.tensor([[2.0, 2.0, 20.0, 18.0]]), "labels": torch.tensor([1])}]
        >>> {k: round(v.item(), 4) for k, v in criterion(maps, target).items()}  # 7.5-stride boxes: n clamps to 1
        {'loss_cls': 13.8629, 'loss_bbox': 0.0162, 'loss_dfl': 0.0092}

    Reference: Feng et al., *TOOD*, arXiv:2108.07755; Li et al., *Generalized Focal Loss*, arXiv:2006.04388;
    Zheng et al., *Distance-IoU Loss*, arXiv:1911.08287.
    """

    terms = ("loss_cls", "loss_bbox", "loss_dfl")
    takes_level_list = True

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] | None = (8, 16, 32),
        reg_max: int = 16,
        style: str = "ultralytics",
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        loss_cls: LossMetric | Mapping[str, Any] | None = None,
        loss_bbox: LossMetric | Mapping[str, Any] | None = None,
        loss_dfl: LossMetric | Mapping[str, Any] | None = None,
        max_assign_elements: int | None = None,
    ) -> None:
        super().__init__(num_classes, strides if strides is not None else (1,))
        if isinstance(reg_max, bool) or not isinstance(reg_max, int) or reg_max < 2:
            raise ValueError(f"`reg_max` must be an int >= 2 (bins per side), got {reg_max!r}")
        if style not in TASK_ALIGNED_STYLES:
            raise ValueError(f"`style` must be one of {TASK_ALIGNED_STYLES}, got {style!r}")
        self.derive_strides = strides is None
        self.reg_max = reg_max
        self.style = style
        self.assigner = TaskAlignedAssigner(
            topk=topk, alpha=alpha, beta=beta, style=style, max_elements=max_assign_elements
        )
        self.loss_cls = self.build_term(loss_cls, QualityFocalLoss(beta=0.0, loss_weight=0.5))
        self.loss_bbox = self.build_term(loss_bbox, YOLOCIoULoss(eps=1e-7, loss_weight=7.5))
        self.loss_dfl = self.build_term(loss_dfl, DistributionFocalLoss(loss_weight=1.5))
        self.register_buffer("bins", torch.arange(reg_max, dtype=torch.float32), persistent=False)
        self._priors = DeviceCache(size=8)

    def _split(self, outputs: YOLOv8Outputs) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """``(B, P, 4·R)`` box logits and ``(B, P, C)`` class logits (one copy of the maps) and the level sizes.

        Levels may mix fused maps and (box, cls) pairs.
        """
        if not isinstance(outputs, (list, tuple)) or not outputs:
            raise TypeError("`outputs` must be a non-empty list with one map (or (box, cls) pair) per level")
        box_channels, channels = 4 * self.reg_max, 4 * self.reg_max + self.num_classes
        flat, sizes = [], []
        for level, out in enumerate(outputs):
            parts = [out] if isinstance(out, Tensor) else list(out) if isinstance(out, (list, tuple)) else None
            if parts is None or len(parts) not in (1, 2) or not all(isinstance(p, Tensor) for p in parts):
                raise TypeError(f"`outputs[{level}]` must be a map or a (box, cls) pair of maps")
            box, cls = f"4·reg_max = {box_channels}", f"num_classes = {self.num_classes}"
            expected = (
                [(channels, f"{box} + {cls}")] if len(parts) == 1 else [(box_channels, box), (self.num_classes, cls)]
            )
            for part, (want, what) in zip(parts, expected, strict=True):
                if part.ndim != 4 or part.shape[1] != want:
                    raise ValueError(
                        f"`outputs[{level}]` must have {what} channels, (B, {want}, H, W); got {tuple(part.shape)}"
                    )
            if len(parts) == 2 and (parts[0].shape[0] != parts[1].shape[0] or parts[0].shape[2:] != parts[1].shape[2:]):
                raise ValueError(
                    f"`outputs[{level}]` box and cls maps differ: {tuple(parts[0].shape)}, {tuple(parts[1].shape)}"
                )
            sizes.append((int(parts[0].shape[2]), int(parts[0].shape[3])))
            flat.append(parts)
        if len({p[0].shape[0] for p in flat}) != 1:
            raise ValueError(f"`outputs` levels have different batch sizes: {[p[0].shape[0] for p in flat]}")
        if len({m.dtype for p in flat for m in p}) != 1:
            raise TypeError(
                f"`outputs` maps must share one dtype, got {sorted({str(m.dtype) for p in flat for m in p})}"
            )
        box_logits, cls_logits = split_level_rows(flat, box_channels)
        return box_logits, cls_logits, sizes

    def _level_strides(self, sizes: list[tuple[int, int]], image_size: Sequence[int] | Tensor | None) -> list[int]:
        if not self.derive_strides:
            if len(sizes) != len(self.strides):
                raise ValueError(f"`outputs` has {len(sizes)} levels for {len(self.strides)} strides {self.strides}")
            return list(self.strides)
        if image_size is None:
            raise ValueError("`image_size` is needed when the criterion was built with strides=None")
        width = int(torch.as_tensor(image_size).reshape(-1)[-1])
        strides = [width // w for _, w in sizes]
        if min(strides) < 1:
            raise ValueError(f"`image_size` {image_size} is smaller than a feature map of width {max(sizes)[1]}")
        return strides

    def _points(self, sizes: list[tuple[int, int]], strides: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
        """``(P, 2)`` cell centres in strides and ``(P, 1)`` stride of each prior, built once per layout."""

        def build() -> tuple[Tensor, Tensor]:
            points, stride = [], []
            for (h, w), s in zip(sizes, strides, strict=True):
                ys, xs = torch.meshgrid(
                    torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                    torch.arange(w, dtype=torch.float32, device=device) + 0.5,
                    indexing="ij",
                )
                points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1).float())
                stride.append(torch.full((h * w, 1), float(s), dtype=torch.float32, device=device))
            return torch.cat(points), torch.cat(stride)

        return self._priors.get((tuple(sizes), tuple(strides), device), build)

    def _decode(self, bins: Tensor, points: Tensor) -> Tensor:
        """``xyxy`` boxes in strides from ``(..., 4, R)`` bin logits: points minus / plus the softmax expectations."""
        distances = bins.float().softmax(-1) @ self.bins
        return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)

    def forward(
        self,
        outputs: YOLOv8Outputs,
        targets: Sequence[Mapping[str, Tensor]],
        image_size: Sequence[int] | Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Return ``loss_cls``, ``loss_bbox`` and ``loss_dfl`` for one batch."""
        box_logits, cls_logits, sizes = self._split(outputs)
        strides = self._level_strides(sizes, image_size)
        batch, num_priors = cls_logits.shape[:2]
        if len(targets) != batch:
            raise ValueError(f"`targets` has {len(targets)} images, the outputs have {batch}")
        device = cls_logits.device
        points, stride = self._points(sizes, strides, device)
        bins = box_logits.view(batch, num_priors, 4, self.reg_max)
        with torch.no_grad():  # the assigner's boxes; the loss decodes its own rows with a graph below
            pred_boxes = self._decode(bins, points)

        gts = pad_targets(targets, device)
        min_size = float(strides[min(1, len(strides) - 1)]) if self.assigner.conventions.widens_small_boxes else None
        assign = self.assigner.assign(
            cls_logits.detach(), pred_boxes.detach() * stride, points * stride, gts, min_size=min_size
        )
        (norm,) = self.average_over_ranks(assign.scores.sum())
        norm = norm.clamp(min=1.0)
        positive = assign.positive

        if isinstance(self.loss_cls, QualityFocalLoss):
            labels = torch.where(positive, assign.labels, self.num_classes).reshape(-1)
            cls_target: Any = (labels, assign.scores.reshape(-1))
        else:
            cls_target = onehot_targets(assign.labels, self.num_classes, torch.float32) * assign.scores[..., None]
            cls_target = cls_target.reshape(-1, self.num_classes)
        loss_cls = self.loss_cls(cls_logits.reshape(-1, self.num_classes), cls_target, avg_factor=norm)

        # Box terms score positives only. A box takes at most `topk` priors, so an image has at most topk·G
        # positives: that many rows (positives first) hold them all without reading their count back.
        bound = max(1, min(num_priors, self.assigner.topk * gts.mask.shape[1]))
        rows = torch.sort((~positive).to(torch.uint8), dim=1, stable=True).indices[:, :bound]  # (B, K)
        weight = (assign.scores.gather(1, rows) * positive.gather(1, rows)).reshape(-1)
        row_stride = stride[rows]  # (B, K, 1)
        row_points = points[rows]
        row_bins = bins.gather(1, rows[..., None, None].expand(-1, -1, 4, self.reg_max))
        target = gather_boxes(gts.boxes, assign.matched.gather(1, rows)) / row_stride  # in strides
        loss_bbox = self.loss_bbox(
            self._decode(row_bins, row_points).reshape(-1, 4), target.reshape(-1, 4), weight=weight, avg_factor=norm
        )
        sides = torch.cat([row_points - target[..., :2], target[..., 2:] - row_points], dim=-1)
        sides = sides.clamp(0.0, self.reg_max - 1.01)
        loss_dfl = self.loss_dfl(
            row_bins.reshape(-1, self.reg_max),
            sides.reshape(-1),
            weight=(weight / 4).repeat_interleave(4),
            avg_factor=norm,
        )
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_dfl": loss_dfl}

    def extra_repr(self) -> str:
        strides = "derived" if self.derive_strides else self.strides
        return f"num_classes={self.num_classes}, strides={strides}, reg_max={self.reg_max}, style={self.style!r}"

"""YOLOX criterion: SimOTA assignment, IoU / objectness / class / L1 terms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_losses.assigners.simota import SimOTAAssigner
from lightning_losses.boxes.priors import point_priors, prior_strides
from lightning_losses.boxes.targets import gather_boxes, pad_targets
from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import CrossEntropyLoss
from lightning_losses.losses.iou import IoULoss
from lightning_losses.losses.regression import L1Loss
from lightning_losses.presets.base import DenseCriterion
from lightning_losses.presets.class_targets import onehot_targets

__all__ = ["YOLOXCriterion"]

YOLOXOutputs = Sequence[Tensor] | Sequence[Sequence[Tensor]]


class YOLOXCriterion(DenseCriterion):
    r"""YOLOX's loss terms with SimOTA assignment, equal to NetsPresso Trainer's ``yolox_loss``.

    Per level, raw maps are decoded with the cell grid: center :math:`(t_{xy} + g)\,s`, size
    :math:`e^{t_{wh}} s`. :class:`~lightning_losses.assigners.SimOTAAssigner` picks the positives
    (detached predictions). With :math:`n = \max(\mathrm{mean}_{ranks}\,\#pos, 1)`:

    .. math::
        \mathcal L_{bbox} = \tfrac5n \textstyle\sum_{pos} (1 - \mathrm{IoU}^2), \quad
        \mathcal L_{obj} = \tfrac1n \textstyle\sum_{all} \mathrm{BCE}(o, [pos]), \quad
        \mathcal L_{cls} = \tfrac1n \textstyle\sum_{pos,c} \mathrm{BCE}(x_c, [c = y]\,\mathrm{IoU}), \quad
        \mathcal L_{l1} = \tfrac1n \textstyle\sum_{pos} |t - \mathrm{enc}(b)|

    with :math:`\mathrm{enc}(b) = (b_{cx}/s - g_x,\ b_{cy}/s - g_y,\ \log(b_w/s + 10^{-8}),\ \log(b_h/s + 10^{-8}))`.
    ``loss_l1`` is 0 before ``l1_activate_epoch`` (1-based, set by :meth:`set_epoch`; the Lightning mixin
    passes ``current_epoch + 1``) and on from it; with no epoch set it is on, as in NetsPresso.
    NetsPresso's total is ``5·iou + obj + cls + l1``: here the 5 is ``loss_bbox``'s ``loss_weight``.

    ``style="mmdet"`` gives MMDetection 3.x's YOLOX-S semantics (its SimOTA candidates and cost, see
    :class:`~lightning_losses.assigners.simota.SimOTAAssigner`); there ``l1_activate_epoch = max_epochs - 15``.
    The styles differ only in the assignment: each one's choices are one
    :class:`~lightning_losses.assigners.simota.SimOTAStyle`, read by the assigner.

    Args:
        num_classes: ``C``.
        strides: stride per level; ``None`` derives ``image_size[-1] // W_l`` (NetsPresso's rule).
        style: ``"netspresso"`` or ``"mmdet"``.
        l1_activate_epoch: first (1-based) epoch with the L1 term.
        loss_bbox: default ``IoULoss(mode="square", eps=1e-16, loss_weight=5.0)``.
        loss_obj: default ``CrossEntropyLoss(use_sigmoid=True)``.
        loss_cls: default ``CrossEntropyLoss(use_sigmoid=True)``; receives ``(N, C)`` one-hot × IoU targets.
        loss_l1: default ``L1Loss()``.
        max_assign_elements: the assigner's ``max_elements`` (``None``: its default, cut to free memory).

    Shape:
        ``outputs``: per level either one raw map ``(B, 5 + C, H_l, W_l)`` laid out
        ``[tx, ty, tw, th, obj, cls_0 … cls_{C-1}]`` (NetsPresso, official YOLOX) or a triple
        ``(cls (B, C, H, W), bbox (B, 4, H, W), obj (B, 1, H, W))`` (MMDetection's ``YOLOXHead``).

    Targets: one ``{"boxes": (M, 4), "labels": (M,)}`` dict per image; boxes in absolute pixels of the image the
    maps were computed on, ``xyxy``; labels 0-based class indices in ``[0, C)``, the background implicit (never a
    label). The first call checks them (see :class:`~lightning_losses.presets.DenseCriterion`). A
    model's list of levels goes to :meth:`~lightning_losses.DetectionLossModule.compute_losses` as it is.

    Example:
        >>> criterion = YOLOXCriterion(num_classes=2, strides=[8])
        >>> target = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 32.0]]), "labels": torch.tensor([1])}]
        >>> terms = criterion([torch.zeros(1, 5 + 2, 8, 8)], target, image_size=64)
        >>> sorted(terms), round(terms["loss_cls"].item(), 4)  # one positive, BCE of zero logits: 2 log 2
        (['loss_bbox', 'loss_cls', 'loss_l1', 'loss_obj'], 1.3863)

    Reference: Ge et al., *YOLOX: Exceeding YOLO Series in 2021*, arXiv:2107.08430.
    """

    terms = ("loss_bbox", "loss_obj", "loss_cls", "loss_l1")
    takes_level_list = True

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] | None = (8, 16, 32),
        style: str = "netspresso",
        l1_activate_epoch: int = 1,
        loss_bbox: LossMetric | Mapping[str, Any] | None = None,
        loss_obj: LossMetric | Mapping[str, Any] | None = None,
        loss_cls: LossMetric | Mapping[str, Any] | None = None,
        loss_l1: LossMetric | Mapping[str, Any] | None = None,
        max_assign_elements: int | None = None,
    ) -> None:
        super().__init__(num_classes, strides if strides is not None else (1,))
        self.derive_strides = strides is None
        self.style = style
        self.assigner = SimOTAAssigner(style=style, max_elements=max_assign_elements)
        self.l1_activate_epoch = int(l1_activate_epoch)
        self.epoch: int | None = None
        self.loss_bbox = self.build_term(loss_bbox, IoULoss(mode="square", eps=1e-16, loss_weight=5.0))
        self.loss_obj = self.build_term(loss_obj, CrossEntropyLoss(use_sigmoid=True))
        self.loss_cls = self.build_term(loss_cls, CrossEntropyLoss(use_sigmoid=True))
        self.loss_l1 = self.build_term(loss_l1, L1Loss())

    def set_epoch(self, epoch: int | None) -> None:
        """Tell the criterion the current 1-based epoch (``None``: unknown, L1 on)."""
        self.epoch = epoch

    @property
    def use_l1(self) -> bool:
        return self.epoch is None or self.epoch >= self.l1_activate_epoch

    def _split(self, outputs: YOLOXOutputs) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per-level ``(B, H·W, 4)`` raw boxes, ``(B, H·W)`` objectness and ``(B, H·W, C)`` class logits."""
        if not isinstance(outputs, (list, tuple)) or not outputs:
            raise TypeError("`outputs` must be a non-empty list with one entry per level")
        boxes, objs, clss = [], [], []
        for level, out in enumerate(outputs):
            if isinstance(out, Tensor):
                if out.ndim != 4 or out.shape[1] != 5 + self.num_classes:
                    raise ValueError(
                        f"`outputs[{level}]` must be (B, 5 + {self.num_classes}, H, W), got {tuple(out.shape)}"
                    )
                flat = out.permute(0, 2, 3, 1).reshape(out.shape[0], -1, out.shape[1])
                boxes.append(flat[..., :4])
                objs.append(flat[..., 4])
                clss.append(flat[..., 5:])
            elif isinstance(out, (list, tuple)) and len(out) == 3:
                cls, box, obj = out
                expected = [("cls", cls, self.num_classes), ("bbox", box, 4), ("obj", obj, 1)]
                for name, m, ch in expected:
                    if not isinstance(m, Tensor) or m.ndim != 4 or m.shape[1] != ch:
                        shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                        raise ValueError(f"`outputs[{level}]` {name} map must be (B, {ch}, H, W), got {shape}")
                batch = cls.shape[0]
                clss.append(cls.permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes))
                boxes.append(box.permute(0, 2, 3, 1).reshape(batch, -1, 4))
                objs.append(obj.permute(0, 2, 3, 1).reshape(batch, -1))
            else:
                raise TypeError(f"`outputs[{level}]` must be a fused map or a (cls, bbox, obj) triple")
        return boxes, objs, clss

    def _level_strides(self, outputs: YOLOXOutputs, image_size: Sequence[int] | Tensor | None) -> list[int]:
        widths = [int((o if isinstance(o, Tensor) else o[0]).shape[-1]) for o in outputs]
        if not self.derive_strides:
            if len(widths) != len(self.strides):
                raise ValueError(f"`outputs` has {len(widths)} levels for {len(self.strides)} strides {self.strides}")
            return list(self.strides)
        if image_size is None:
            raise ValueError("`image_size` is needed when the criterion was built with strides=None")
        width = int(torch.as_tensor(image_size).reshape(-1)[-1])
        return [width // w for w in widths]

    def forward(
        self,
        outputs: YOLOXOutputs,
        targets: Sequence[Mapping[str, Tensor]],
        image_size: Sequence[int] | Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Return ``loss_bbox``, ``loss_obj``, ``loss_cls`` and ``loss_l1`` for one batch."""
        strides = self._level_strides(outputs, image_size)
        raw_boxes, objs, clss = self._split(outputs)
        raw = torch.cat(raw_boxes, dim=1)
        obj = torch.cat(objs, dim=1)
        cls = torch.cat(clss, dim=1)
        batch = obj.shape[0]
        if len(targets) != batch:
            raise ValueError(f"`targets` has {len(targets)} images, the outputs have {batch}")
        device = raw.device
        sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in (o if isinstance(o, Tensor) else o[0] for o in outputs)]
        grids = point_priors(sizes, strides, 0.0, device)  # (x·s, y·s)
        stride = prior_strides([h * w for h, w in sizes], strides, device)
        grid = grids / stride[:, None]

        center = (raw[..., :2] + grid) * stride[:, None]
        size = raw[..., 2:].exp() * stride[:, None]
        pred_boxes = torch.cat([center - size / 2, center + size / 2], dim=-1)

        gts = pad_targets(targets, device)
        assign = self.assigner.assign(
            pred_boxes.detach(), cls.detach(), obj.detach(), grids + stride[:, None] / 2, stride, gts
        )
        positive = assign.positive
        (num_pos,) = self.average_over_ranks(positive.sum())
        num_pos = num_pos.clamp(min=1.0)
        loss_obj = self.loss_obj(obj.reshape(-1), positive.reshape(-1).to(obj.dtype), avg_factor=num_pos)

        # Box, class and L1 terms score positives only. Each box takes at most `candidate_topk` priors, so
        # an image has at most topk·G positives: gathering that many rows (positives first) bounds the work
        # and memory without reading the count back to the host; the rows past the positives weigh 0.
        bound = min(raw.shape[1], self.assigner.candidate_topk * gts.mask.shape[1])
        rows = torch.sort((~positive).to(torch.uint8), dim=1, stable=True).indices[:, :bound]  # (B, K)
        valid = positive.gather(1, rows)
        weight = valid.to(raw.dtype).reshape(-1)
        row_stride = stride[rows][..., None]
        row_boxes = gather_boxes(pred_boxes, rows)
        matched = gather_boxes(gts.boxes, assign.matched.gather(1, rows))
        # Rows past the positives compare their (dummy) box with itself: a prior whose decoded box overflows
        # must not turn the weighted sum into NaN (0 · NaN); NetsPresso scores positives only.
        scored_boxes = torch.where(valid[..., None], row_boxes, matched)
        loss_bbox = self.loss_bbox(
            scored_boxes.reshape(-1, 4), matched.reshape(-1, 4), weight=weight, avg_factor=num_pos
        )
        labels = assign.labels.gather(1, rows)
        cls_target = (
            onehot_targets(labels, self.num_classes, cls.dtype) * assign.max_overlaps.gather(1, rows)[..., None]
        )
        loss_cls = self.loss_cls(
            gather_boxes(cls, rows).reshape(-1, self.num_classes),
            cls_target.reshape(-1, self.num_classes).to(cls.dtype),
            weight=weight[:, None],
            avg_factor=num_pos,
        )
        if self.use_l1:
            row_raw = gather_boxes(raw, rows)
            gt_center = (matched[..., :2] + matched[..., 2:]) / 2
            gt_size = matched[..., 2:] - matched[..., :2]
            l1_target = torch.cat([gt_center / row_stride - grid[rows], torch.log(gt_size / row_stride + 1e-8)], dim=-1)
            l1_target = torch.where(valid[..., None], l1_target, row_raw.detach())
            loss_l1 = self.loss_l1(
                row_raw.reshape(-1, 4),
                l1_target.reshape(-1, 4),
                weight=weight[:, None].expand(-1, 4),
                avg_factor=num_pos,
            )
        else:
            loss_l1 = raw.abs().sum() * 0  # not `loss_l1`'s output: term_metrics() leaves it out
        return {"loss_bbox": loss_bbox, "loss_obj": loss_obj, "loss_cls": loss_cls, "loss_l1": loss_l1}

    def extra_repr(self) -> str:
        strides = "derived" if self.derive_strides else self.strides
        return (
            f"num_classes={self.num_classes}, strides={strides}, style={self.style!r}, "
            f"l1_activate_epoch={self.l1_activate_epoch}"
        )

"""YOLO-Fastest criterion: YOLOX's SimOTA and terms on anchor boxes, a GIoU box term, no L1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_losses.assigners.rows import positive_rows
from lightning_losses.assigners.simota import SimOTAAssigner
from lightning_losses.boxes.targets import pad_targets
from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import CrossEntropyLoss
from lightning_losses.losses.iou import GIoULoss
from lightning_losses.presets.base import DenseCriterion, gather_boxes, onehot_targets

__all__ = ["YOLOFastestCriterion"]

_ATANH_HALF = 0.549306  # atanh(0.5): a zero logit decodes to the anchor's size


def _anchor_table(anchors: Sequence[Sequence[float]]) -> Tensor:
    """``(L, A, 2)`` anchor sizes from one flat ``[w0, h0, w1, h1, …]`` list (or list of pairs) per level."""
    if not isinstance(anchors, Sequence) or isinstance(anchors, (str, bytes)) or not anchors:
        raise ValueError(f"`anchors` must be a non-empty list with one list of anchor sizes per level, got {anchors!r}")
    levels = []
    for level, sizes in enumerate(anchors):
        table = torch.as_tensor(sizes, dtype=torch.float32).reshape(-1)
        if table.numel() == 0 or table.numel() % 2 or not bool((table > 0).all()):
            raise ValueError(f"`anchors[{level}]` must hold positive (w, h) pairs, got {sizes!r}")
        levels.append(table.reshape(-1, 2))
    if len({t.shape[0] for t in levels}) != 1:
        raise ValueError(f"every level needs the same number of anchors, got {[t.shape[0] for t in levels]}")
    return torch.stack(levels)


class YOLOFastestCriterion(DenseCriterion):
    r"""YOLO-Fastest's loss terms, equal to NetsPresso Trainer 1.4.1's ``yolofastest_loss``.

    Each level's map holds ``A`` anchors of ``5 + C`` channels ``[tx, ty, tw, th, obj, cls…]`` (channel
    ``a·(5 + C) + c``); a prior is an (anchor, cell) pair. Raw outputs decode with the cell grid
    :math:`g` and the anchor size :math:`a`:

    .. math::
        c = (\sigma(t_{xy}) + g)\,s, \qquad
        w h = 2\,\big(\tanh(t_{wh}/2 - \operatorname{atanh}\tfrac12) + 1\big)\,a

    (a zero logit gives the anchor's size; sizes lie in :math:`(0, 4a)`). Assignment is
    :class:`~lightning_losses.assigners.SimOTAAssigner` with NetsPresso's (official YOLOX's) rule: candidates
    are the priors whose cell center lies within :math:`1.5\,s` of a box center (every anchor of a cell
    alike), cost :math:`\mathrm{BCE}(\sqrt{\sigma(cls)\sigma(obj)}) + 3(-\log(\mathrm{IoU} + 10^{-8}))`, dynamic
    :math:`k` from the top-10 IoUs. With :math:`n = \max(\mathrm{mean}_{ranks}\,\#pos, 1)`:

    .. math::
        \mathcal L_{bbox} = \tfrac5n \textstyle\sum_{pos} (1 - \mathrm{GIoU}), \quad
        \mathcal L_{obj} = \tfrac1n \textstyle\sum_{all} \mathrm{BCE}(o, [pos]), \quad
        \mathcal L_{cls} = \tfrac1n \textstyle\sum_{pos,c} \mathrm{BCE}(x_c, [c = y]\,\mathrm{IoU})

    and no L1 term. NetsPresso's total is ``5·giou + obj + cls``; the 5 is ``loss_bbox``'s ``loss_weight``.
    NetsPresso converts the caller's target boxes to ``cxcywh`` in place; this criterion never writes into
    ``targets``.

    Args:
        num_classes: ``C``.
        anchors: per level, the ``A`` anchor sizes in pixels, flat ``[w0, h0, w1, h1, …]`` or as pairs; the
            same ``A`` on every level.
        strides: stride per level; ``None`` derives ``image_size[-1] // W_l`` (NetsPresso's rule).
        loss_bbox: default ``GIoULoss(eps=1e-7, loss_weight=5.0)``.
        loss_obj: default ``CrossEntropyLoss(use_sigmoid=True)``.
        loss_cls: default ``CrossEntropyLoss(use_sigmoid=True)``; receives ``(N, C)`` one-hot × IoU targets.
        max_assign_elements: the assigner's ``max_elements`` (``None``: its default, cut to free memory).

    Shape:
        ``outputs``: per level a raw map ``(B, A·(5 + C), H_l, W_l)``.

    Targets: one ``{"boxes": (M, 4), "labels": (M,)}`` dict per image; boxes in absolute pixels of the image the
    maps were computed on, ``xyxy``; labels 0-based class indices in ``[0, C)``, the background implicit (never a
    label). The first call checks them (see :class:`~lightning_losses.presets.DenseCriterion`). A
    model's list of levels goes to :meth:`~lightning_losses.DetectionLossModule.compute_losses` as it is.

    Example:
        >>> crit = YOLOFastestCriterion(2, anchors=[[16, 16, 32, 24]], strides=[16])
        >>> target = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 32.0]]), "labels": torch.tensor([1])}]
        >>> terms = crit([torch.zeros(1, 2 * 7, 4, 4)], target)
        >>> sorted(terms), bool(terms["loss_bbox"] > 0)
        (['loss_bbox', 'loss_cls', 'loss_obj'], True)

    Reference: Ge et al., *YOLOX: Exceeding YOLO Series in 2021*, arXiv:2107.08430 (SimOTA); dog-qiuqiu,
    *Yolo-FastestV2* (the anchor decoding).
    """

    terms = ("loss_bbox", "loss_obj", "loss_cls")
    takes_level_list = True

    def __init__(
        self,
        num_classes: int,
        anchors: Sequence[Sequence[float]],
        strides: Sequence[int] | None = (16, 32),
        loss_bbox: LossMetric | Mapping[str, Any] | None = None,
        loss_obj: LossMetric | Mapping[str, Any] | None = None,
        loss_cls: LossMetric | Mapping[str, Any] | None = None,
        max_assign_elements: int | None = None,
    ) -> None:
        table = _anchor_table(anchors)
        super().__init__(num_classes, strides if strides is not None else (1,) * table.shape[0])
        if strides is not None and len(self.strides) != table.shape[0]:
            raise ValueError(f"`anchors` has {table.shape[0]} levels for {len(self.strides)} strides {self.strides}")
        self.derive_strides = strides is None
        self.register_buffer("anchors", table, persistent=False)
        self.num_anchors = int(table.shape[1])
        self.assigner = SimOTAAssigner(style="netspresso", max_elements=max_assign_elements)
        self.loss_bbox = self.build_term(loss_bbox, GIoULoss(eps=1e-7, loss_weight=5.0))
        self.loss_obj = self.build_term(loss_obj, CrossEntropyLoss(use_sigmoid=True))
        self.loss_cls = self.build_term(loss_cls, CrossEntropyLoss(use_sigmoid=True))

    def _flatten(self, outputs: Sequence[Tensor]) -> Tensor:
        """``(B, Σ_l A·H_l·W_l, 5 + C)`` raw rows, ordered (level, anchor, y, x) as NetsPresso's."""
        if not isinstance(outputs, (list, tuple)) or not outputs:
            raise TypeError("`outputs` must be a non-empty list with one map per level")
        if len(outputs) != self.anchors.shape[0]:
            raise ValueError(f"`outputs` has {len(outputs)} levels for {self.anchors.shape[0]} anchor levels")
        channels = 5 + self.num_classes
        flat = []
        for level, out in enumerate(outputs):
            if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[1] != self.num_anchors * channels:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"`outputs[{level}]` must be (B, {self.num_anchors}·(5 + {self.num_classes}), H, W), got {shape}"
                )
            if out.shape[0] != outputs[0].shape[0]:
                raise ValueError(f"`outputs[{level}]` has {out.shape[0]} images, `outputs[0]` {outputs[0].shape[0]}")
            b, _, h, w = out.shape
            flat.append(
                out.reshape(b, self.num_anchors, channels, h, w).permute(0, 1, 3, 4, 2).reshape(b, -1, channels)
            )
        return torch.cat(flat, dim=1)

    def _priors(
        self, sizes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device
    ) -> tuple[Tensor, ...]:
        """Per prior: cell ``(x, y)``, stride and anchor size, built from factories (no host data)."""
        cells, level_strides, anchor_sizes = [], [], []
        for (h, w), stride, level_anchors in zip(sizes, strides, self.anchors, strict=True):
            ys, xs = torch.meshgrid(
                torch.arange(h, device=device, dtype=torch.float32),
                torch.arange(w, device=device, dtype=torch.float32),
                indexing="ij",
            )
            cell = torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2).expand(self.num_anchors, -1, -1)
            cells.append(cell.reshape(-1, 2))
            count = self.num_anchors * h * w
            level_strides.append(torch.full((count,), float(stride), dtype=torch.float32, device=device))
            anchor_sizes.append(level_anchors[:, None, :].expand(-1, h * w, -1).reshape(-1, 2))
        return torch.cat(cells), torch.cat(level_strides), torch.cat(anchor_sizes)

    def _level_strides(self, outputs: Sequence[Tensor], image_size: Sequence[int] | Tensor | None) -> list[int]:
        if not self.derive_strides:
            return list(self.strides)
        if image_size is None:
            raise ValueError("`image_size` is needed when the criterion was built with strides=None")
        width = int(torch.as_tensor(image_size).reshape(-1)[-1])
        return [width // int(o.shape[-1]) for o in outputs]

    def forward(
        self,
        outputs: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        image_size: Sequence[int] | Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Return ``loss_bbox``, ``loss_obj`` and ``loss_cls`` for one batch."""
        raw = self._flatten(outputs)
        strides = self._level_strides(outputs, image_size)
        batch, device = raw.shape[0], raw.device
        if len(targets) != batch:
            raise ValueError(f"`targets` has {len(targets)} images, the outputs have {batch}")
        sizes = [(int(o.shape[-2]), int(o.shape[-1])) for o in outputs]
        cell, stride, anchor = self._priors(sizes, strides, device)
        center = (raw[..., :2].sigmoid() + cell) * stride[:, None]
        size = 2.0 * (torch.tanh(raw[..., 2:4] / 2 - _ATANH_HALF) + 1.0) * anchor
        pred_boxes = torch.cat([center - size / 2, center + size / 2], dim=-1)
        obj, cls = raw[..., 4], raw[..., 5:]

        gts = pad_targets(targets, device)
        assign = self.assigner.assign(
            pred_boxes.detach(), cls.detach(), obj.detach(), (cell + 0.5) * stride[:, None], stride, gts
        )
        (num_pos,) = self.average_over_ranks(assign.positive.sum())
        num_pos = num_pos.clamp(min=1.0)
        loss_obj = self.loss_obj(obj.reshape(-1), assign.positive.reshape(-1).to(obj.dtype), avg_factor=num_pos)

        rows = positive_rows(assign, gts.boxes, self.assigner.candidate_topk * gts.mask.shape[1])
        weight = rows.valid.to(raw.dtype).reshape(-1)
        # Filler rows compare their matched box with itself (GIoU 1, weight 0): a prior whose decoded box
        # overflows must not turn the weighted sum into NaN; NetsPresso scores positives only.
        scored = torch.where(rows.valid[..., None], gather_boxes(pred_boxes, rows.index), rows.boxes)
        loss_bbox = self.loss_bbox(scored.reshape(-1, 4), rows.boxes.reshape(-1, 4), weight=weight, avg_factor=num_pos)
        cls_target = onehot_targets(rows.labels, self.num_classes, cls.dtype) * rows.overlaps[..., None].to(cls.dtype)
        loss_cls = self.loss_cls(
            gather_boxes(cls, rows.index).reshape(-1, self.num_classes),
            cls_target.reshape(-1, self.num_classes),
            weight=weight[:, None],
            avg_factor=num_pos,
        )
        return {"loss_bbox": loss_bbox, "loss_obj": loss_obj, "loss_cls": loss_cls}

    def extra_repr(self) -> str:
        strides = "derived" if self.derive_strides else self.strides
        anchors = [[tuple(round(v, 2) for v in a) for a in level] for level in self.anchors.tolist()]
        return f"num_classes={self.num_classes}, strides={strides}, anchors={anchors}"

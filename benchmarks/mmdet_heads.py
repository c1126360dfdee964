"""Baselines that follow MMDetection 3.x's dense-head code path: ``loss_by_feat`` of RetinaNet, FCOS, ATSS and GFL.

Written from MMDetection's semantics (not its code) for :mod:`benchmarks.dense_sizes`, so the package's presets
are timed against what a user of MMDetection's heads runs per step:

- priors generated per call, valid flags per image, ``get_targets`` looping over the images (``multi_apply``);
  each image's assigner vectorised over its own priors × boxes as MMDetection's are: ``MaxIoUAssigner`` (with its
  Python loop over the boxes for the low-quality matches), ``ATSSAssigner`` (per-level top-k, its loop offsetting
  each box's candidate indices, the ``-INF`` trick) and FCOS's ``_get_targets_single`` (``areas = INF``); then the
  pseudo sampler, the targets, ``unmap`` and ``images_to_levels``;
- the losses level by level (``multi_apply`` over the levels; mmengine's ``parse_losses`` sums them), with the host
  reads MMDetection makes (the normalisers' ``.item()``, ``len(pos_inds)``, the zero-weight checks).

Each head's ``__call__`` returns ``{term: value}`` with the same defaults as the package's presets (RetinaNet:
focal + smooth L1 on deltas; FCOS: focal + ``IoULoss(log)`` weighted by centerness + centerness BCE; ATSS: focal +
2 × GIoU weighted by centerness + centerness BCE; GFL: QFL + 2 × GIoU + 0.25 × DFL weighted by the best class
score). One process: ``reduce_mean`` is the identity. The loss functions are attributes (``loss_cls`` …) and
``get_targets`` a method, so :func:`benchmarks.breakdown.breakdown` can time them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import composites
from benchmarks.mmdet_ops import (
    FCOS_RANGES,
    INF,
    STRIDES,
    Targets,
    aligned_iou,
    atss_assign,
    bbox2distance,
    centerness_of,
    delta_decode,
    delta_encode,
    distance2bbox,
    flat,
    focal_loss,
    grid_anchors,
    images_to_levels,
    max_iou_assign,
    multi_apply,
    pseudo_sample,
    quality_focal_loss,
    sigmoid_ce_loss,
    smooth_l1_loss,
    unmap,
    valid_flags,
)

__all__ = ["ATSSHead", "FCOSHead", "GFLHead", "RetinaHead"]


def _sizes(maps: Sequence[Tensor]) -> list[tuple[int, int]]:
    return [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]


class _AnchorHead:
    """``AnchorHead.get_targets`` with the pseudo sampler and ``allowed_border = -1`` (inside = valid)."""

    num_classes: int
    octave_base_scale: float
    scales_per_octave: int
    ratios: tuple[float, ...]
    per_cell: int

    def anchors(
        self, maps: Sequence[Tensor], image_size: tuple[int, int]
    ) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
        sizes, batch, device = _sizes(maps), maps[0].shape[0], maps[0].device
        anchors = grid_anchors(sizes, self.octave_base_scale, self.scales_per_octave, self.ratios, device)
        return [anchors] * batch, [valid_flags(sizes, self.per_cell, image_size, device) for _ in range(batch)]

    def assign(self, priors: Tensor, level_counts: list[int], gt: Tensor) -> Tensor:
        raise NotImplementedError

    def encode(self, anchors: Tensor, gt: Tensor) -> Tensor:
        return gt  # reg_decoded_bbox: targets are the boxes themselves

    def _targets_single(
        self, anchors: Tensor, flags: Tensor, level_counts: list[int], gt: Tensor, gt_labels: Tensor
    ) -> tuple[Tensor, ...]:
        inside = anchors[flags]
        level_inside = [int(f.sum()) for f in flags.split(level_counts)]
        gt_inds = self.assign(inside, level_inside, gt)
        pos, neg = pseudo_sample(gt_inds)
        n = inside.shape[0]
        bbox_targets, bbox_weights = torch.zeros_like(inside), torch.zeros_like(inside)
        labels = inside.new_full((n,), self.num_classes, dtype=torch.long)
        label_weights = inside.new_zeros(n)
        if len(pos) > 0:
            matched = gt[gt_inds[pos] - 1]
            bbox_targets[pos] = self.encode(inside[pos], matched)
            bbox_weights[pos] = 1.0
            labels[pos] = gt_labels[gt_inds[pos] - 1]
            label_weights[pos] = 1.0
        if len(neg) > 0:
            label_weights[neg] = 1.0
        total = anchors.shape[0]
        return (
            unmap(inside, total, flags),
            unmap(labels, total, flags, fill=self.num_classes),
            unmap(label_weights, total, flags),
            unmap(bbox_targets, total, flags),
            unmap(bbox_weights, total, flags),
            max(len(pos), 1),
        )

    def get_targets(self, anchor_list: list[list[Tensor]], flag_list: list[list[Tensor]], targets: Targets) -> tuple:
        counts = [a.shape[0] for a in anchor_list[0]]
        results = multi_apply(
            self._targets_single,
            [torch.cat(a) for a in anchor_list],
            [torch.cat(f) for f in flag_list],
            [counts] * len(targets),
            [t["boxes"].float() for t in targets],
            [t["labels"].long() for t in targets],
        )
        *per_image, num_pos = results
        return (*(images_to_levels(r, counts) for r in per_image), sum(num_pos))


class RetinaHead(_AnchorHead):
    """``RetinaHead.loss_by_feat``: ``FocalLoss`` and ``SmoothL1Loss(beta=1)`` on deltas, over ``Σ max(n_pos, 1)``."""

    octave_base_scale, scales_per_octave, ratios = 4.0, 3, (0.5, 1.0, 2.0)
    per_cell = 9

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.loss_cls = focal_loss
        self.loss_bbox = smooth_l1_loss

    def assign(self, priors: Tensor, level_counts: list[int], gt: Tensor) -> Tensor:
        return max_iou_assign(priors, gt)

    def encode(self, anchors: Tensor, gt: Tensor) -> Tensor:
        return delta_encode(anchors, gt, (1.0, 1.0, 1.0, 1.0))

    def __call__(
        self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], targets: Targets, image_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        anchor_list, flag_list = self.anchors(cls_scores, image_size)
        _, labels, label_weights, bbox_targets, bbox_weights, avg_factor = self.get_targets(
            anchor_list, flag_list, targets
        )

        def single(cls, box, lab, lw, bt, bw):
            loss_cls = self.loss_cls(flat(cls, self.num_classes), lab.reshape(-1), lw.reshape(-1), avg_factor)
            loss_bbox = self.loss_bbox(flat(box, 4), bt.reshape(-1, 4), bw.reshape(-1, 4), avg_factor)
            return loss_cls, loss_bbox

        cls_terms, box_terms = multi_apply(
            single, cls_scores, bbox_preds, labels, label_weights, bbox_targets, bbox_weights
        )
        return {"loss_cls": sum(cls_terms), "loss_bbox": sum(box_terms)}


class ATSSHead(_AnchorHead):
    """``ATSSHead.loss_by_feat``: focal, 2 × GIoU of decoded deltas weighted by centerness, centerness BCE."""

    octave_base_scale, scales_per_octave, ratios = 8.0, 1, (1.0,)
    per_cell = 1
    stds = (0.1, 0.1, 0.2, 0.2)

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.loss_cls = focal_loss
        self.loss_bbox = composites.giou_loss
        self.loss_centerness = sigmoid_ce_loss

    def assign(self, priors: Tensor, level_counts: list[int], gt: Tensor) -> Tensor:
        return atss_assign(priors, level_counts, gt)

    def __call__(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        centernesses: Sequence[Tensor],
        targets: Targets,
        image_size: tuple[int, int],
    ) -> dict[str, Tensor]:
        anchor_list, flag_list = self.anchors(cls_scores, image_size)
        anchors, labels, label_weights, bbox_targets, _, avg_factor = self.get_targets(anchor_list, flag_list, targets)
        avg_factor = max(torch.tensor(avg_factor, dtype=torch.float, device=cls_scores[0].device).item(), 1.0)

        def single(anc, cls, box, ctr, lab, lw, bt):
            lab, bt, box, ctr, anc = (
                lab.reshape(-1),
                bt.reshape(-1, 4),
                flat(box, 4),
                ctr.permute(0, 2, 3, 1).reshape(-1),
                anc.reshape(-1, 4),
            )
            loss_cls = self.loss_cls(flat(cls, self.num_classes), lab, lw.reshape(-1), avg_factor)
            pos = ((lab >= 0) & (lab < self.num_classes)).nonzero().squeeze(1)
            if len(pos) > 0:
                pos_anchors, pos_targets = anc[pos], bt[pos]
                ctr_targets = centerness_of((pos_anchors[:, :2] + pos_anchors[:, 2:]) / 2, pos_targets)
                decoded = delta_decode(pos_anchors, box[pos], self.stds)
                loss_bbox = 2.0 * self.loss_bbox(decoded, pos_targets, weight=ctr_targets, avg_factor=1.0)
                loss_ctr = self.loss_centerness(ctr[pos], ctr_targets, avg_factor)
            else:
                loss_bbox, loss_ctr, ctr_targets = box.sum() * 0, ctr.sum() * 0, bt.new_tensor(0.0)
            return loss_cls, loss_bbox, loss_ctr, ctr_targets.sum()

        cls_terms, box_terms, ctr_terms, ctr_sums = multi_apply(
            single, anchors, cls_scores, bbox_preds, centernesses, labels, label_weights, bbox_targets
        )
        bbox_avg = sum(ctr_sums).clamp_(min=1).item()
        return {
            "loss_cls": sum(cls_terms),
            "loss_bbox": sum(b / bbox_avg for b in box_terms),
            "loss_centerness": sum(ctr_terms),
        }


class GFLHead(_AnchorHead):
    """``GFLHead.loss_by_feat``: QFL on the IoU score, 2 × GIoU and 0.25 × DFL in stride units weighted by the best
    class score, over ``max(Σ weights, 1)``."""

    octave_base_scale, scales_per_octave, ratios = 8.0, 1, (1.0,)
    per_cell = 1

    def __init__(self, num_classes: int, reg_max: int = 16) -> None:
        self.num_classes, self.reg_max = num_classes, reg_max
        self.loss_cls = quality_focal_loss
        self.loss_bbox = composites.giou_loss
        self.loss_dfl = composites.distribution_focal_loss

    def assign(self, priors: Tensor, level_counts: list[int], gt: Tensor) -> Tensor:
        return atss_assign(priors, level_counts, gt)

    def integral(self, x: Tensor) -> Tensor:
        project = torch.linspace(0, self.reg_max, self.reg_max + 1, device=x.device)
        return F.linear(F.softmax(x.reshape(-1, self.reg_max + 1), dim=1), project.type_as(x)).reshape(-1, 4)

    def __call__(
        self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], targets: Targets, image_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        anchor_list, flag_list = self.anchors(cls_scores, image_size)
        anchors, labels, label_weights, bbox_targets, _, avg_factor = self.get_targets(anchor_list, flag_list, targets)
        avg_factor = max(torch.tensor(avg_factor, dtype=torch.float, device=cls_scores[0].device).item(), 1.0)
        bins = self.reg_max + 1

        def single(anc, cls, box, lab, lw, bt, stride):
            anc, cls, box, bt, lab = (
                anc.reshape(-1, 4),
                flat(cls, self.num_classes),
                flat(box, 4 * bins),
                bt.reshape(-1, 4),
                lab.reshape(-1),
            )
            pos = ((lab >= 0) & (lab < self.num_classes)).nonzero().squeeze(1)
            score = lw.new_zeros(lab.shape)
            if len(pos) > 0:
                pos_anchors = anc[pos]
                centers = (pos_anchors[:, :2] + pos_anchors[:, 2:]) / 2 / stride
                weight = cls.detach().sigmoid().max(dim=1)[0][pos]
                pos_pred = box[pos]
                decoded = distance2bbox(centers, self.integral(pos_pred))
                target_boxes = bt[pos] / stride
                score[pos] = aligned_iou(decoded.detach(), target_boxes)
                corners = bbox2distance(centers, target_boxes, self.reg_max).reshape(-1)
                loss_bbox = 2.0 * self.loss_bbox(decoded, target_boxes, weight=weight, avg_factor=1.0)
                loss_dfl = 0.25 * self.loss_dfl(
                    pos_pred.reshape(-1, bins),
                    corners,
                    weight=weight[:, None].expand(-1, 4).reshape(-1),
                    avg_factor=4.0,
                )
            else:
                loss_bbox, loss_dfl, weight = box.sum() * 0, box.sum() * 0, box.new_tensor(0.0)
            loss_cls = self.loss_cls(cls, lab, score, lw.reshape(-1), avg_factor)
            return loss_cls, loss_bbox, loss_dfl, weight.sum()

        cls_terms, box_terms, dfl_terms, weight_sums = multi_apply(
            single, anchors, cls_scores, bbox_preds, labels, label_weights, bbox_targets, list(STRIDES)
        )
        norm = sum(weight_sums).clamp_(min=1).item()
        return {
            "loss_cls": sum(cls_terms),
            "loss_bbox": sum(b / norm for b in box_terms),
            "loss_dfl": sum(d / norm for d in dfl_terms),
        }


class FCOSHead:
    """``FCOSHead.loss_by_feat`` (no centre sampling): focal over ``max(n_pos, 1)``, ``IoULoss(log)`` weighted by the
    centerness target over its sum, centerness BCE over ``max(n_pos, 1)``."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.loss_cls = focal_loss
        self.loss_bbox = composites.iou_loss
        self.loss_centerness = sigmoid_ce_loss

    @staticmethod
    def points(maps: Sequence[Tensor]) -> list[Tensor]:
        """``MlvlPointGenerator.grid_priors`` with offset 0.5: cell centres, x fastest."""
        out = []
        for (h, w), stride in zip(_sizes(maps), STRIDES, strict=True):
            xs = (torch.arange(w, device=maps[0].device).float() + 0.5) * stride
            ys = (torch.arange(h, device=maps[0].device).float() + 0.5) * stride
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            out.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1))
        return out

    def _targets_single(self, gt: Tensor, gt_labels: Tensor, points: Tensor, ranges: Tensor) -> tuple[Tensor, Tensor]:
        n, g = points.shape[0], gt.shape[0]
        if g == 0:
            return gt_labels.new_full((n,), self.num_classes), gt.new_zeros((n, 4))
        areas = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None].repeat(n, 1)
        ranges = ranges[:, None, :].expand(n, g, 2)
        boxes = gt[None].expand(n, g, 4)
        xs, ys = points[:, 0, None].expand(n, g), points[:, 1, None].expand(n, g)
        bbox_targets = torch.stack((xs - boxes[..., 0], ys - boxes[..., 1], boxes[..., 2] - xs, boxes[..., 3] - ys), -1)
        inside = bbox_targets.min(-1)[0] > 0
        max_dist = bbox_targets.max(-1)[0]
        in_range = (max_dist >= ranges[..., 0]) & (max_dist <= ranges[..., 1])
        areas[inside == 0] = INF
        areas[in_range == 0] = INF
        min_area, min_inds = areas.min(dim=1)
        labels = gt_labels[min_inds]
        labels[min_area == INF] = self.num_classes
        return labels, bbox_targets[range(n), min_inds]

    def get_targets(self, points: list[Tensor], targets: Targets) -> tuple[list[Tensor], list[Tensor]]:
        counts = [p.shape[0] for p in points]
        ranges = torch.cat(
            [points[0].new_tensor(r)[None].expand(n, 2) for r, n in zip(FCOS_RANGES, counts, strict=True)]
        )
        all_points = torch.cat(points)
        labels, boxes = multi_apply(
            self._targets_single,
            [t["boxes"].float() for t in targets],
            [t["labels"].long() for t in targets],
            points=all_points,
            ranges=ranges,
        )
        labels = [lab.split(counts, 0) for lab in labels]
        boxes = [b.split(counts, 0) for b in boxes]
        return (
            [torch.cat([lab[i] for lab in labels]) for i in range(len(counts))],
            [torch.cat([b[i] for b in boxes]) for i in range(len(counts))],
        )

    def __call__(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        centernesses: Sequence[Tensor],
        targets: Targets,
    ) -> dict[str, Tensor]:
        points = self.points(cls_scores)
        labels, bbox_targets = self.get_targets(points, targets)
        num_imgs = cls_scores[0].shape[0]
        cls = torch.cat([flat(c, self.num_classes) for c in cls_scores])
        box = torch.cat([flat(b, 4) for b in bbox_preds])
        ctr = torch.cat([c.permute(0, 2, 3, 1).reshape(-1) for c in centernesses])
        flat_labels, flat_targets = torch.cat(labels), torch.cat(bbox_targets)
        flat_points = torch.cat([p.repeat(num_imgs, 1) for p in points])
        pos = ((flat_labels >= 0) & (flat_labels < self.num_classes)).nonzero().reshape(-1)
        num_pos = max(torch.tensor(len(pos), dtype=torch.float, device=cls.device), 1.0)
        loss_cls = self.loss_cls(cls, flat_labels, avg_factor=num_pos)
        pos_box, pos_ctr, pos_targets = box[pos], ctr[pos], flat_targets[pos]
        lr, tb = pos_targets[:, [0, 2]], pos_targets[:, [1, 3]]
        ctr_targets = torch.sqrt(lr.min(dim=-1)[0] / lr.max(dim=-1)[0] * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0]))
        denorm = max(ctr_targets.sum().detach(), 1e-6)
        if len(pos) > 0:
            pos_points = flat_points[pos]
            loss_bbox = self.loss_bbox(
                distance2bbox(pos_points, pos_box),
                distance2bbox(pos_points, pos_targets),
                weight=ctr_targets,
                avg_factor=denorm,
            )
            loss_ctr = self.loss_centerness(pos_ctr, ctr_targets, num_pos)
        else:
            loss_bbox, loss_ctr = pos_box.sum(), pos_ctr.sum()
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr}

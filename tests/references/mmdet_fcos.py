"""MMDetection 3.x ``FCOSHead.loss_by_feat``, literally: level-then-image flattening, per-term avg factors.

Targets come from :func:`tests.references.mmdet_assigners.fcos_targets_single` (the ``areas = INF`` trick),
one image at a time; the default config has no centre sampling, ``IoULoss(log)`` weighted by the
centerness target and normalised by its sum, and the centerness BCE normalised by ``num_pos``.

Nothing here imports :mod:`lightning_losses`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tests.references.mmdet_assigners import FCOS_REGRESS_RANGES, fcos_targets_single
from tests.references.mmdet_boxes import distance2bbox, grid_points
from tests.references.mmdet_dense_heads import STRIDES, featmap_sizes_of
from tests.references.mmdet_losses import focal_loss, giou_loss, iou_loss, sigmoid_bce_soft

__all__ = ["fcos_centerness_target", "fcos_get_targets", "fcos_loss_by_feat"]


def fcos_get_targets(
    points: list[Tensor],
    targets: Sequence[dict],
    num_classes: int,
    strides: Sequence[int] = STRIDES,
    regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES,
    center_sampling: bool = False,
    center_sample_radius: float = 1.5,
    norm_on_bbox: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:
    """Per level, images concatenated: labels (B·n_l,), bbox_targets (B·n_l, 4)."""
    num_levels = len(points)
    concat_points = torch.cat(points, dim=0)
    num_points = [center.size(0) for center in points]
    labels_list, bbox_targets_list = [], []
    for t in targets:
        gt_inds, labels, bbox_targets = fcos_targets_single(
            concat_points,
            num_points,
            strides,
            t["boxes"].float(),
            t["labels"].long(),
            regress_ranges,
            center_sampling,
            center_sample_radius,
        )
        labels_list.append(labels.masked_fill(gt_inds == 0, num_classes))  # background: num_classes
        bbox_targets_list.append(bbox_targets)
    labels_list = [labels.split(num_points, 0) for labels in labels_list]
    bbox_targets_list = [b.split(num_points, 0) for b in bbox_targets_list]
    concat_lvl_labels, concat_lvl_bbox_targets = [], []
    for i in range(num_levels):
        concat_lvl_labels.append(torch.cat([labels[i] for labels in labels_list]))
        bbox_targets = torch.cat([b[i] for b in bbox_targets_list])
        if norm_on_bbox:
            bbox_targets = bbox_targets / strides[i]
        concat_lvl_bbox_targets.append(bbox_targets)
    return concat_lvl_labels, concat_lvl_bbox_targets


def fcos_centerness_target(pos_bbox_targets: Tensor) -> Tensor:
    left_right = pos_bbox_targets[:, [0, 2]]
    top_bottom = pos_bbox_targets[:, [1, 3]]
    if len(left_right) == 0:
        centerness_targets = left_right[..., 0]
    else:
        centerness_targets = (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0]) * (
            top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0]
        )
    return torch.sqrt(centerness_targets)


def fcos_loss_by_feat(
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    centernesses: Sequence[Tensor],
    targets: Sequence[dict],
    num_classes: int,
    strides: Sequence[int] = STRIDES,
    center_sampling: bool = False,
    center_sample_radius: float = 1.5,
    norm_on_bbox: bool = False,
    loss_bbox: str = "iou_log",
) -> dict[str, Tensor]:
    """FCOSHead.loss_by_feat; ``bbox_preds`` are the head's positive (l, t, r, b) after exp / clamp."""
    sizes = featmap_sizes_of(cls_scores)
    all_level_points = grid_points(sizes, strides, offset=0.5)
    labels, bbox_targets = fcos_get_targets(
        all_level_points,
        targets,
        num_classes,
        strides,
        center_sampling=center_sampling,
        center_sample_radius=center_sample_radius,
        norm_on_bbox=norm_on_bbox,
    )
    num_imgs = cls_scores[0].size(0)
    flatten_cls_scores = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, num_classes) for c in cls_scores])
    flatten_bbox_preds = torch.cat([b.permute(0, 2, 3, 1).reshape(-1, 4) for b in bbox_preds])
    flatten_centerness = torch.cat([c.permute(0, 2, 3, 1).reshape(-1) for c in centernesses])
    flatten_labels = torch.cat(labels)
    flatten_bbox_targets = torch.cat(bbox_targets)
    flatten_points = torch.cat([points.repeat(num_imgs, 1) for points in all_level_points])
    pos_inds = ((flatten_labels >= 0) & (flatten_labels < num_classes)).nonzero().reshape(-1)
    num_pos = torch.tensor(len(pos_inds), dtype=torch.float)
    num_pos = max(num_pos, 1.0)  # reduce_mean is the identity in one process
    loss_cls = focal_loss(flatten_cls_scores, flatten_labels, avg_factor=num_pos)
    pos_bbox_preds = flatten_bbox_preds[pos_inds]
    pos_centerness = flatten_centerness[pos_inds]
    pos_bbox_targets = flatten_bbox_targets[pos_inds]
    pos_centerness_targets = fcos_centerness_target(pos_bbox_targets)
    centerness_denorm = max(pos_centerness_targets.sum().detach(), 1e-6)
    if len(pos_inds) > 0:
        pos_points = flatten_points[pos_inds]
        pos_decoded_bbox_preds = distance2bbox(pos_points, pos_bbox_preds)
        pos_decoded_target_preds = distance2bbox(pos_points, pos_bbox_targets)
        if loss_bbox == "giou":
            loss_box = giou_loss(
                pos_decoded_bbox_preds, pos_decoded_target_preds, pos_centerness_targets, centerness_denorm
            )
        else:
            loss_box = iou_loss(
                pos_decoded_bbox_preds, pos_decoded_target_preds, pos_centerness_targets, centerness_denorm
            )
        loss_centerness = sigmoid_bce_soft(pos_centerness, pos_centerness_targets, None, num_pos)
    else:
        loss_box = pos_bbox_preds.sum()
        loss_centerness = pos_centerness.sum()
    return {"loss_cls": loss_cls, "loss_bbox": loss_box, "loss_centerness": loss_centerness}

"""MMDetection 3.x ``ATSSHead`` and ``GFLHead`` ``loss_by_feat``, per image and per level, literally.

Both heads share ``AnchorHead.get_targets`` with the ATSS assigner (one square anchor per cell, octave
base scale 8, targets as absolute xyxy boxes) and each detector's default config: ATSS decodes deltas
with stds (0.1, 0.1, 0.2, 0.2), GIoU ×2 weighted by the centerness target; GFL decodes the distribution
integral in stride units, QFL on the IoU score, GIoU ×2 and DFL ×0.25 weighted by the best class score.

Nothing here imports :mod:`lightning_losses`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tests.references.mmdet_assigners import mmdet_atss_assign
from tests.references.mmdet_boxes import (
    anchor_valid_flags,
    bbox2distance,
    bbox_overlaps,
    delta_decode,
    distance2bbox,
    grid_anchors,
)
from tests.references.mmdet_dense_heads import STRIDES, anchor_get_targets, featmap_sizes_of, multi_apply
from tests.references.mmdet_losses import (
    distribution_focal_loss,
    focal_loss,
    giou_loss,
    quality_focal_loss,
    sigmoid_bce_soft,
)

__all__ = [
    "ATSS_ANCHORS",
    "ATSS_STDS",
    "atss_assign",
    "atss_centerness_target",
    "atss_loss_by_feat",
    "atss_targets",
    "gfl_integral",
    "gfl_loss_by_feat",
]


ATSS_ANCHORS = {"octave_base_scale": 8, "scales_per_octave": 1, "ratios": (1.0,)}
ATSS_STDS = (0.1, 0.1, 0.2, 0.2)


def atss_assign(
    priors: Tensor, num_level_priors: Sequence[int], gt_bboxes: Tensor, gt_labels: Tensor
) -> tuple[Tensor, Tensor]:
    """``ATSSAssigner(topk=9)`` as the ATSS and GFL heads run it: ``(gt_inds, labels)``."""
    gt_inds, _, labels = mmdet_atss_assign(priors, num_level_priors, gt_bboxes, gt_labels, topk=9)
    return gt_inds, labels


def atss_targets(
    cls_scores: Sequence[Tensor],
    targets: Sequence[dict],
    num_classes: int,
    strides: Sequence[int] = STRIDES,
    pad_shapes: Sequence[tuple[int, int]] | None = None,
) -> tuple[list[Tensor], ...]:
    """ATSS/GFL get_targets: per level anchors, labels, label_weights, bbox_targets (abs xyxy); avg_factor.

    With ``pad_shapes`` the valid flags (= inside flags, allowed_border -1) of each image restrict the
    assignment, and ``num_level_priors`` counts the inside anchors of each level.
    """
    sizes = featmap_sizes_of(cls_scores)
    batch = cls_scores[0].shape[0]
    anchors = grid_anchors(sizes, strides, **ATSS_ANCHORS)
    anchor_list = [anchors for _ in range(batch)]
    if pad_shapes is None:
        valid_flag_list = [[torch.ones(a.shape[0], dtype=torch.bool) for a in anchors] for _ in range(batch)]
    else:
        valid_flag_list = [anchor_valid_flags(sizes, strides, 1, pad) for pad in pad_shapes]

    return anchor_get_targets(anchor_list, valid_flag_list, targets, num_classes, atss_assign, encode=None)


def atss_centerness_target(anchors: Tensor, gts: Tensor) -> Tensor:
    anchors_cx = (anchors[:, 2] + anchors[:, 0]) / 2
    anchors_cy = (anchors[:, 3] + anchors[:, 1]) / 2
    l_ = anchors_cx - gts[:, 0]
    t_ = anchors_cy - gts[:, 1]
    r_ = gts[:, 2] - anchors_cx
    b_ = gts[:, 3] - anchors_cy
    left_right = torch.stack([l_, r_], dim=1)
    top_bottom = torch.stack([t_, b_], dim=1)
    centerness = torch.sqrt(
        (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
        * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0])
    )
    assert not torch.isnan(centerness).any()
    return centerness


def atss_loss_by_feat(
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    centernesses: Sequence[Tensor],
    targets: Sequence[dict],
    num_classes: int,
    strides: Sequence[int] = STRIDES,
    pad_shapes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, list[Tensor]]:
    anchor_list, labels_list, label_weights_list, bbox_targets_list, _, avg_factor = atss_targets(
        cls_scores, targets, num_classes, strides, pad_shapes
    )
    avg_factor = torch.tensor(avg_factor, dtype=torch.float).item()

    def single(anchors, cls_score, bbox_pred, centerness, labels, label_weights, bbox_targets):
        anchors = anchors.reshape(-1, 4)
        cls_score = cls_score.permute(0, 2, 3, 1).reshape(-1, num_classes).contiguous()
        bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4)
        centerness = centerness.permute(0, 2, 3, 1).reshape(-1)
        bbox_targets = bbox_targets.reshape(-1, 4)
        labels = labels.reshape(-1)
        label_weights = label_weights.reshape(-1)
        loss_cls = focal_loss(cls_score, labels, label_weights, avg_factor=avg_factor)
        pos_inds = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
        if len(pos_inds) > 0:
            pos_bbox_targets = bbox_targets[pos_inds]
            pos_bbox_pred = bbox_pred[pos_inds]
            pos_anchors = anchors[pos_inds]
            pos_centerness = centerness[pos_inds]
            centerness_targets = atss_centerness_target(pos_anchors, pos_bbox_targets)
            pos_decode_bbox_pred = delta_decode(pos_anchors, pos_bbox_pred, (0.0,) * 4, ATSS_STDS)
            loss_bbox = giou_loss(
                pos_decode_bbox_pred, pos_bbox_targets, centerness_targets, avg_factor=1.0, loss_weight=2.0
            )
            loss_centerness = sigmoid_bce_soft(pos_centerness, centerness_targets, None, avg_factor)
        else:
            loss_bbox = bbox_pred.sum() * 0
            loss_centerness = centerness.sum() * 0
            centerness_targets = bbox_targets.new_tensor(0.0)
        return loss_cls, loss_bbox, loss_centerness, centerness_targets.sum()

    losses_cls, losses_bbox, loss_centerness, bbox_avg_factor = multi_apply(
        single,
        anchor_list,
        cls_scores,
        bbox_preds,
        centernesses,
        labels_list,
        label_weights_list,
        bbox_targets_list,
    )
    bbox_avg_factor = sum(bbox_avg_factor)
    bbox_avg_factor = bbox_avg_factor.clamp_(min=1).item()
    losses_bbox = [x / bbox_avg_factor for x in losses_bbox]
    return {"loss_cls": losses_cls, "loss_bbox": losses_bbox, "loss_centerness": loss_centerness}


def gfl_integral(x: Tensor, reg_max: int = 16) -> Tensor:
    project = torch.linspace(0, reg_max, reg_max + 1)
    x = F.softmax(x.reshape(-1, reg_max + 1), dim=1)
    return F.linear(x, project.type_as(x)).reshape(-1, 4)


def gfl_loss_by_feat(
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    targets: Sequence[dict],
    num_classes: int,
    strides: Sequence[int] = STRIDES,
    reg_max: int = 16,
    pad_shapes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, list[Tensor]]:
    anchor_list, labels_list, label_weights_list, bbox_targets_list, _, avg_factor = atss_targets(
        cls_scores, targets, num_classes, strides, pad_shapes
    )
    avg_factor = torch.tensor(avg_factor, dtype=torch.float).item()

    def single(anchors, cls_score, bbox_pred, labels, label_weights, bbox_targets, stride):
        anchors = anchors.reshape(-1, 4)
        cls_score = cls_score.permute(0, 2, 3, 1).reshape(-1, num_classes)
        bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4 * (reg_max + 1))
        bbox_targets = bbox_targets.reshape(-1, 4)
        labels = labels.reshape(-1)
        label_weights = label_weights.reshape(-1)
        pos_inds = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
        score = label_weights.new_zeros(labels.shape)
        if len(pos_inds) > 0:
            pos_bbox_targets = bbox_targets[pos_inds]
            pos_bbox_pred = bbox_pred[pos_inds]
            pos_anchors = anchors[pos_inds]
            anchors_cx = (pos_anchors[:, 2] + pos_anchors[:, 0]) / 2
            anchors_cy = (pos_anchors[:, 3] + pos_anchors[:, 1]) / 2
            pos_anchor_centers = torch.stack([anchors_cx, anchors_cy], dim=-1) / stride
            weight_targets = cls_score.detach().sigmoid()
            weight_targets = weight_targets.max(dim=1)[0][pos_inds]
            pos_bbox_pred_corners = gfl_integral(pos_bbox_pred, reg_max)
            pos_decode_bbox_pred = distance2bbox(pos_anchor_centers, pos_bbox_pred_corners)
            pos_decode_bbox_targets = pos_bbox_targets / stride
            score[pos_inds] = bbox_overlaps(pos_decode_bbox_pred.detach(), pos_decode_bbox_targets, is_aligned=True)
            pred_corners = pos_bbox_pred.reshape(-1, reg_max + 1)
            target_corners = bbox2distance(pos_anchor_centers, pos_decode_bbox_targets, reg_max, 0.1).reshape(-1)
            loss_bbox = giou_loss(
                pos_decode_bbox_pred, pos_decode_bbox_targets, weight_targets, avg_factor=1.0, loss_weight=2.0
            )
            loss_dfl = distribution_focal_loss(
                pred_corners,
                target_corners,
                weight_targets[:, None].expand(-1, 4).reshape(-1),
                avg_factor=4.0,
                loss_weight=0.25,
            )
        else:
            loss_bbox = bbox_pred.sum() * 0
            loss_dfl = bbox_pred.sum() * 0
            weight_targets = bbox_pred.new_tensor(0)
        loss_cls = quality_focal_loss(cls_score, labels, score, label_weights, avg_factor)
        return loss_cls, loss_bbox, loss_dfl, weight_targets.sum()

    losses_cls, losses_bbox, losses_dfl, weight_sums = multi_apply(
        single,
        anchor_list,
        cls_scores,
        bbox_preds,
        labels_list,
        label_weights_list,
        bbox_targets_list,
        list(strides),
    )
    norm = sum(weight_sums)
    norm = norm.clamp_(min=1).item()
    losses_bbox = [x / norm for x in losses_bbox]
    losses_dfl = [x / norm for x in losses_dfl]
    return {"loss_cls": losses_cls, "loss_bbox": losses_bbox, "loss_dfl": losses_dfl}

"""NetsPresso Trainer 1.4.1 ``retinanet_loss``, written out literally with torchvision's semantics.

torchvision's ``Matcher(0.5, 0.4, allow_low_quality_matches=True)`` and ``BoxCoder(weights=(1, 1, 1, 1))``,
the sigmoid focal loss summed per image and divided by its foreground count, the L1 box loss on the
foreground anchors, both averaged over the images; and NetsPresso's anchors (rounded half sizes,
anchor-minor order).

Nothing here imports :mod:`lightning_losses`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "box_coder_encode_single",
    "box_iou",
    "matcher",
    "netspresso_anchors",
    "netspresso_focal",
    "netspresso_match",
    "netspresso_retinanet_loss",
]

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


def matcher(match_quality_matrix: Tensor, high: float = 0.5, low: float = 0.4) -> Tensor:
    """torchvision Matcher(high, low, allow_low_quality_matches=True) on a (G, A) matrix."""
    matched_vals, matches = match_quality_matrix.max(dim=0)
    all_matches = matches.clone()
    below_low_threshold = matched_vals < low
    between_thresholds = (matched_vals >= low) & (matched_vals < high)
    matches[below_low_threshold] = BELOW_LOW_THRESHOLD
    matches[between_thresholds] = BETWEEN_THRESHOLDS
    highest_quality_foreach_gt, _ = match_quality_matrix.max(dim=1)
    gt_pred_pairs = torch.where(match_quality_matrix == highest_quality_foreach_gt[:, None])
    pred_inds_to_update = gt_pred_pairs[1]
    matches[pred_inds_to_update] = all_matches[pred_inds_to_update]
    return matches


def box_coder_encode_single(reference_boxes: Tensor, proposals: Tensor) -> Tensor:
    """torchvision BoxCoder(weights=(1, 1, 1, 1)).encode_single(gt, anchors)."""
    ex_widths = proposals[:, 2] - proposals[:, 0]
    ex_heights = proposals[:, 3] - proposals[:, 1]
    ex_ctr_x = proposals[:, 0] + 0.5 * ex_widths
    ex_ctr_y = proposals[:, 1] + 0.5 * ex_heights
    gt_widths = reference_boxes[:, 2] - reference_boxes[:, 0]
    gt_heights = reference_boxes[:, 3] - reference_boxes[:, 1]
    gt_ctr_x = reference_boxes[:, 0] + 0.5 * gt_widths
    gt_ctr_y = reference_boxes[:, 1] + 0.5 * gt_heights
    targets_dx = (gt_ctr_x - ex_ctr_x) / ex_widths
    targets_dy = (gt_ctr_y - ex_ctr_y) / ex_heights
    targets_dw = torch.log(gt_widths / ex_widths)
    targets_dh = torch.log(gt_heights / ex_heights)
    return torch.stack((targets_dx, targets_dy, targets_dw, targets_dh), dim=1)


def netspresso_focal(pred: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """NetsPresso SigmoidFocalLoss, reduction='sum'."""
    p = torch.sigmoid(pred)
    ce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * ((1 - p_t) ** gamma)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * loss).sum()


def netspresso_match(anchors: Tensor, targets: Sequence[dict]) -> list[Tensor]:
    matched_idxs = []
    for t in targets:
        if t["boxes"].numel() == 0:
            matched_idxs.append(torch.full((anchors.size(0),), -1, dtype=torch.int64))
            continue
        matched_idxs.append(matcher(box_iou(t["boxes"].float(), anchors)))
    return matched_idxs


def netspresso_retinanet_loss(
    cls_logits: Sequence[Tensor], bbox_regression: Sequence[Tensor], anchors: Tensor, targets: Sequence[dict]
) -> dict[str, Tensor]:
    """RetinaNetLoss: per-level (B, A_l, C) / (B, A_l, 4) outputs, one (A, 4) anchor tensor."""
    logits = torch.cat(list(cls_logits), dim=1)
    regression = torch.cat(list(bbox_regression), dim=1)
    matched_idxs = netspresso_match(anchors, targets)
    cls_losses = []
    for t, logits_i, matched in zip(targets, logits, matched_idxs, strict=True):
        foreground = matched >= 0
        num_foreground = foreground.sum()
        gt_classes_target = torch.zeros_like(logits_i)
        gt_classes_target[foreground, t["labels"][matched[foreground]]] = 1.0
        valid = matched != BETWEEN_THRESHOLDS
        cls_losses.append(netspresso_focal(logits_i[valid], gt_classes_target[valid]) / max(1, num_foreground))
    box_losses = []
    for t, reg_i, matched in zip(targets, regression, matched_idxs, strict=True):
        foreground_idxs = torch.where(matched >= 0)[0]
        num_foreground = foreground_idxs.numel()
        matched_gt = t["boxes"].float()[matched[foreground_idxs]]
        pred = reg_i[foreground_idxs, :]
        target = box_coder_encode_single(matched_gt, anchors[foreground_idxs, :])
        box_losses.append(F.l1_loss(pred, target, reduction="sum") / max(1, num_foreground))
    return {
        "loss_cls": sum(cls_losses) / len(targets),
        "loss_bbox": sum(box_losses) / max(1, len(targets)),
    }


def netspresso_anchors(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[float] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> list[Tensor]:
    """NetsPresso's anchors: round([-w, -h, w, h] / 2) shifted by (x·s, y·s), anchor-minor."""
    out = []
    ratios = torch.tensor(list(aspect_ratios), dtype=torch.float32)
    for (feat_h, feat_w), stride, size in zip(featmap_sizes, strides, sizes, strict=True):
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = w_ratios * size
        hs = h_ratios * size
        base = (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
        shifts_x = torch.arange(0, feat_w, dtype=torch.float32) * stride
        shifts_y = torch.arange(0, feat_h, dtype=torch.float32) * stride
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x = shift_x.reshape(-1)
        shift_y = shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        out.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
    return out

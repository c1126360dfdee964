"""MMDetection 3.x assigners for one image, written out literally (Python loops over boxes, the INF tricks).

- :func:`mmdet_max_iou_assign`: ``MaxIoUAssigner.assign_wrt_overlaps`` on the valid priors, unmapped.
- :func:`mmdet_atss_assign`: ``ATSSAssigner.assign`` (per-level top-k by centre distance, IoU threshold
  mean + std, centre inside the box by more than 0.01, the ``-INF`` trick for the best box).
- :func:`fcos_targets_single`: ``FCOSHead._get_targets_single`` (regress ranges, optional centre
  sampling, the ``areas = INF`` / min trick); :func:`mmdet_fcos_assign` is its assignment part.
- :func:`pseudo_sample`: ``PseudoSampler``'s positive and negative indices.

Result conventions: ``gt_inds`` is ``-1`` ignored, ``0`` negative, ``i + 1`` positive for box ``i``; labels
are ``-1`` where not positive. Nothing here imports :mod:`lightning_losses`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tests.references.mmdet_boxes import bbox_overlaps

__all__ = [
    "FCOS_REGRESS_RANGES",
    "INF",
    "fcos_targets_single",
    "mmdet_atss_assign",
    "mmdet_fcos_assign",
    "mmdet_max_iou_assign",
    "pseudo_sample",
]

INF = 1e8
FCOS_REGRESS_RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))


def mmdet_max_iou_assign(
    priors: Tensor,
    boxes: Tensor,
    labels: Tensor,
    valid: Tensor | None = None,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float = 0.4,
    min_pos_iou: float = 0.0,
    match_low_quality: bool = True,
    gt_max_assign_all: bool = True,
    skip_boxes_overlapping_nothing: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """MMDetection's assign_wrt_overlaps for one image, run on the valid priors only and unmapped (-1 elsewhere).

    ``skip_boxes_overlapping_nothing`` is the package's documented deviation: a box whose best IoU is 0
    claims no prior (MMDetection with min_pos_iou=0 would claim every zero-IoU prior); pass ``False`` for
    MMDetection itself. Returns ``(gt_inds, max_overlaps, labels)``.
    """
    num_priors = priors.shape[0]
    if valid is None:
        valid = torch.ones(num_priors, dtype=torch.bool)
    inside = priors[valid]
    num_gts, num_inside = boxes.shape[0], inside.shape[0]
    gt_inds = torch.full((num_inside,), -1, dtype=torch.long)
    max_overlaps = torch.zeros(num_inside)
    if num_gts == 0 or num_inside == 0:
        if num_gts == 0:
            gt_inds[:] = 0
    else:
        overlaps = bbox_overlaps(boxes, inside)  # (G, P)
        max_overlaps, argmax_overlaps = overlaps.max(dim=0)
        gt_max_overlaps, gt_argmax_overlaps = overlaps.max(dim=1)
        gt_inds[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0
        pos = max_overlaps >= pos_iou_thr
        gt_inds[pos] = argmax_overlaps[pos] + 1
        if match_low_quality:
            for i in range(num_gts):
                if gt_max_overlaps[i] >= min_pos_iou:
                    if skip_boxes_overlapping_nothing and gt_max_overlaps[i] <= 0:
                        continue
                    if gt_max_assign_all:
                        gt_inds[overlaps[i, :] == gt_max_overlaps[i]] = i + 1
                    else:
                        gt_inds[gt_argmax_overlaps[i]] = i + 1
    out_inds = torch.full((num_priors,), -1, dtype=torch.long)
    out_inds[valid] = gt_inds
    out_max = torch.full((num_priors,), -1.0)
    out_max[valid] = max_overlaps
    out_labels = torch.full((num_priors,), -1, dtype=torch.long)
    positive = out_inds > 0
    out_labels[positive] = labels[out_inds[positive] - 1]
    return out_inds, out_max, out_labels


def mmdet_atss_assign(
    priors: Tensor, num_level_priors: Sequence[int], boxes: Tensor, labels: Tensor, topk: int = 9
) -> tuple[Tensor, Tensor, Tensor]:
    """(gt_inds, max_overlaps, labels); max_overlaps is -INF where not positive, as in MMDetection."""
    num_gt, num_priors = boxes.size(0), priors.size(0)
    overlaps = bbox_overlaps(priors, boxes)  # (P, G)
    assigned_gt_inds = overlaps.new_full((num_priors,), 0, dtype=torch.long)
    if num_gt == 0 or num_priors == 0:
        return assigned_gt_inds, overlaps.new_zeros(num_priors), assigned_gt_inds.new_full((num_priors,), -1)

    gt_cx = (boxes[:, 0] + boxes[:, 2]) / 2.0
    gt_cy = (boxes[:, 1] + boxes[:, 3]) / 2.0
    gt_points = torch.stack((gt_cx, gt_cy), dim=1)
    priors_cx = (priors[:, 0] + priors[:, 2]) / 2.0
    priors_cy = (priors[:, 1] + priors[:, 3]) / 2.0
    priors_points = torch.stack((priors_cx, priors_cy), dim=1)
    distances = (priors_points[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()

    candidate_idxs = []
    start_idx = 0
    for priors_per_level in num_level_priors:
        end_idx = start_idx + priors_per_level
        distances_per_level = distances[start_idx:end_idx, :]
        selectable_k = min(topk, priors_per_level)
        _, topk_idxs_per_level = distances_per_level.topk(selectable_k, dim=0, largest=False)
        candidate_idxs.append(topk_idxs_per_level + start_idx)
        start_idx = end_idx
    candidate_idxs = torch.cat(candidate_idxs, dim=0)

    candidate_overlaps = overlaps[candidate_idxs, torch.arange(num_gt)]
    overlaps_mean_per_gt = candidate_overlaps.mean(0)
    overlaps_std_per_gt = candidate_overlaps.std(0)
    overlaps_thr_per_gt = overlaps_mean_per_gt + overlaps_std_per_gt
    is_pos = candidate_overlaps >= overlaps_thr_per_gt[None, :]

    for gt_idx in range(num_gt):
        candidate_idxs[:, gt_idx] += gt_idx * num_priors
    ep_priors_cx = priors_cx.view(1, -1).expand(num_gt, num_priors).contiguous().view(-1)
    ep_priors_cy = priors_cy.view(1, -1).expand(num_gt, num_priors).contiguous().view(-1)
    candidate_idxs = candidate_idxs.view(-1)
    l_ = ep_priors_cx[candidate_idxs].view(-1, num_gt) - boxes[:, 0]
    t_ = ep_priors_cy[candidate_idxs].view(-1, num_gt) - boxes[:, 1]
    r_ = boxes[:, 2] - ep_priors_cx[candidate_idxs].view(-1, num_gt)
    b_ = boxes[:, 3] - ep_priors_cy[candidate_idxs].view(-1, num_gt)
    is_in_gts = torch.stack([l_, t_, r_, b_], dim=1).min(dim=1)[0] > 0.01
    is_pos = is_pos & is_in_gts

    overlaps_inf = torch.full_like(overlaps, -INF).t().contiguous().view(-1)
    index = candidate_idxs.view(-1)[is_pos.view(-1)]
    overlaps_inf[index] = overlaps.t().contiguous().view(-1)[index]
    overlaps_inf = overlaps_inf.view(num_gt, -1).t()

    max_overlaps, argmax_overlaps = overlaps_inf.max(dim=1)
    assigned_gt_inds[max_overlaps != -INF] = argmax_overlaps[max_overlaps != -INF] + 1
    assigned_labels = assigned_gt_inds.new_full((num_priors,), -1)
    pos_inds = torch.nonzero(assigned_gt_inds > 0, as_tuple=False).squeeze()
    if pos_inds.numel() > 0:
        assigned_labels[pos_inds] = labels[assigned_gt_inds[pos_inds] - 1]
    return assigned_gt_inds, max_overlaps, assigned_labels


def fcos_targets_single(
    points: Tensor,
    num_points_per_lvl: Sequence[int],
    strides: Sequence[int],
    boxes: Tensor,
    labels: Tensor,
    regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES,
    center_sampling: bool = False,
    radius: float = 1.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(gt_inds, labels, bbox_targets)`` of one image, all levels concatenated.

    ``gt_inds`` is ``argmin + 1`` of the areas for positives, else 0; labels are -1 for background
    (MMDetection writes ``num_classes`` there); ``bbox_targets`` ``(P, 4)`` are the (l, t, r, b) distances
    to the chosen box (to box 0 for background points; zeros for an image without boxes).
    """
    num_points, num_gts = points.shape[0], boxes.shape[0]
    if num_gts == 0:
        return (
            torch.zeros(num_points, dtype=torch.long),
            torch.full((num_points,), -1, dtype=torch.long),
            boxes.new_zeros((num_points, 4)),
        )
    ranges = torch.cat(
        [points.new_tensor(r)[None].expand(n, 2) for r, n in zip(regress_ranges, num_points_per_lvl, strict=False)]
    )
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    areas = areas[None].repeat(num_points, 1)
    ranges = ranges[:, None, :].expand(num_points, num_gts, 2)
    gt = boxes[None].expand(num_points, num_gts, 4)
    xs = points[:, 0][:, None].expand(num_points, num_gts)
    ys = points[:, 1][:, None].expand(num_points, num_gts)
    left, right = xs - gt[..., 0], gt[..., 2] - xs
    top, bottom = ys - gt[..., 1], gt[..., 3] - ys
    bbox_targets = torch.stack((left, top, right, bottom), -1)

    if center_sampling:
        center_xs = (gt[..., 0] + gt[..., 2]) / 2
        center_ys = (gt[..., 1] + gt[..., 3]) / 2
        stride = center_xs.new_zeros(center_xs.shape)
        begin = 0
        for lvl, n in enumerate(num_points_per_lvl):
            stride[begin : begin + n] = strides[lvl] * radius
            begin += n
        x_mins, y_mins = center_xs - stride, center_ys - stride
        x_maxs, y_maxs = center_xs + stride, center_ys + stride
        center_gts = torch.zeros_like(gt)
        center_gts[..., 0] = torch.where(x_mins > gt[..., 0], x_mins, gt[..., 0])
        center_gts[..., 1] = torch.where(y_mins > gt[..., 1], y_mins, gt[..., 1])
        center_gts[..., 2] = torch.where(x_maxs > gt[..., 2], gt[..., 2], x_maxs)
        center_gts[..., 3] = torch.where(y_maxs > gt[..., 3], gt[..., 3], y_maxs)
        cb = torch.stack(
            (xs - center_gts[..., 0], ys - center_gts[..., 1], center_gts[..., 2] - xs, center_gts[..., 3] - ys), -1
        )
        inside_gt_bbox_mask = cb.min(-1)[0] > 0
    else:
        inside_gt_bbox_mask = bbox_targets.min(-1)[0] > 0

    max_regress_distance = bbox_targets.max(-1)[0]
    inside_regress_range = (max_regress_distance >= ranges[..., 0]) & (max_regress_distance <= ranges[..., 1])
    areas[inside_gt_bbox_mask == 0] = INF
    areas[inside_regress_range == 0] = INF
    min_area, min_area_inds = areas.min(dim=1)
    out_labels = labels[min_area_inds].clone()
    out_labels[min_area == INF] = -1
    gt_inds = min_area_inds + 1
    gt_inds[min_area == INF] = 0
    return gt_inds, out_labels, bbox_targets[range(num_points), min_area_inds]


def mmdet_fcos_assign(
    points: Tensor,
    num_points_per_lvl: Sequence[int],
    strides: Sequence[int],
    boxes: Tensor,
    labels: Tensor,
    regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES,
    center_sampling: bool = False,
    radius: float = 1.5,
) -> tuple[Tensor, Tensor]:
    """(gt_inds, labels) of :func:`fcos_targets_single`."""
    gt_inds, out_labels, _ = fcos_targets_single(
        points, num_points_per_lvl, strides, boxes, labels, regress_ranges, center_sampling, radius
    )
    return gt_inds, out_labels


def pseudo_sample(gt_inds: Tensor) -> tuple[Tensor, Tensor]:
    pos_inds = torch.nonzero(gt_inds > 0, as_tuple=False).squeeze(-1).unique()
    neg_inds = torch.nonzero(gt_inds == 0, as_tuple=False).squeeze(-1).unique()
    return pos_inds, neg_inds

"""Literal, per-image, per-level references of the dense heads' losses, written from the seed notes.

MMDetection 3.x (``/work/notes/mmdet.md`` §0-4): ``RetinaHead``, ``FCOSHead``, ``ATSSHead`` and ``GFLHead``
``loss_by_feat`` with each detector's default config, single process (``reduce_mean`` is the identity),
CPU path of ``FocalLoss``. NetsPresso Trainer 1.4 (``/work/notes/netspresso.md`` §4): ``retinanet_loss``
with torchvision's ``Matcher`` and ``BoxCoder`` semantics.

Nothing here imports :mod:`lightning_losses`: the machinery (anchor generator, assigners with Python
loops over boxes, pseudo sampler, ``unmap``, ``images_to_levels``, ``multi_apply``, per-level losses,
``weight_reduce_loss`` with ``avg_factor + eps32``, the zero-weight early returns) is re-written here
in the reference's own order of operations. Each head returns ``{term: [per-level scalars]}`` (FCOS:
scalars), which :func:`total` turns into the value mmengine's ``parse_losses`` would log.

The last section holds what the tests share: seeded scenes, map layout helpers, the value-and-gradient
comparison and a single-thread fixture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

EPS32 = torch.finfo(torch.float32).eps
INF = 1e8

# ------------------------------------------------------------------------------------------------
# §0 shared machinery


def weight_reduce_loss(
    loss: Tensor, weight: Tensor | None = None, reduction: str = "mean", avg_factor: float | None = None
) -> Tensor:
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return loss.sum()
        return loss
    if reduction == "mean":
        return loss.sum() / (avg_factor + EPS32)
    if reduction == "none":
        return loss
    raise ValueError('avg_factor can not be used with reduction="sum"')


def multi_apply(func: Callable, *args, **kwargs) -> tuple[list, ...]:
    results = map(partial(func, **kwargs), *args)
    return tuple(map(list, zip(*results, strict=True)))


def images_to_levels(target: list[Tensor], num_levels: list[int]) -> list[Tensor]:
    target = torch.stack(target, 0)
    level_targets = []
    start = 0
    for n in num_levels:
        end = start + n
        level_targets.append(target[:, start:end])
        start = end
    return level_targets


def unmap(data: Tensor, count: int, inds: Tensor, fill: float = 0) -> Tensor:
    if data.dim() == 1:
        ret = data.new_full((count,), fill)
        ret[inds.type(torch.bool)] = data
    else:
        ret = data.new_full((count, *data.size()[1:]), fill)
        ret[inds.type(torch.bool), :] = data
    return ret


def bbox_overlaps(b1: Tensor, b2: Tensor, mode: str = "iou", is_aligned: bool = False, eps: float = 1e-6) -> Tensor:
    rows, cols = b1.size(-2), b2.size(-2)
    if rows * cols == 0:
        return b1.new_zeros((rows,) if is_aligned else (rows, cols))
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    if is_aligned:
        lt = torch.max(b1[..., :2], b2[..., :2])
        rb = torch.min(b1[..., 2:], b2[..., 2:])
        wh = (rb - lt).clamp(min=0)
        overlap = wh[..., 0] * wh[..., 1]
        union = area1 + area2 - overlap
        enclosed_lt = torch.min(b1[..., :2], b2[..., :2])
        enclosed_rb = torch.max(b1[..., 2:], b2[..., 2:])
    else:
        lt = torch.max(b1[..., :, None, :2], b2[..., None, :, :2])
        rb = torch.min(b1[..., :, None, 2:], b2[..., None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        overlap = wh[..., 0] * wh[..., 1]
        union = area1[..., None] + area2[..., None, :] - overlap
        enclosed_lt = torch.min(b1[..., :, None, :2], b2[..., None, :, :2])
        enclosed_rb = torch.max(b1[..., :, None, 2:], b2[..., None, :, 2:])
    eps_t = union.new_tensor([eps])
    union = torch.max(union, eps_t)
    ious = overlap / union
    if mode == "iou":
        return ious
    enclose_wh = (enclosed_rb - enclosed_lt).clamp(min=0)
    enclose_area = torch.max(enclose_wh[..., 0] * enclose_wh[..., 1], eps_t)
    return ious - (enclose_area - union) / enclose_area


# ------------------------------------------------------------------------------------------------
# §0.3 element losses (module forward: early returns, loss_weight after the reduction)


def focal_loss(
    pred: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    avg_factor: float | None = None,
    gamma: float = 2.0,
    alpha: float = 0.25,
    loss_weight: float = 1.0,
) -> Tensor:
    """FocalLoss(use_sigmoid=True), CPU path: one-hot with C+1 columns, last dropped."""
    num_classes = pred.size(1)
    target = F.one_hot(labels, num_classes=num_classes + 1)[:, :num_classes].type_as(pred)
    p = pred.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    if weight is not None and weight.shape != loss.shape:
        weight = weight.view(-1, 1)
    return loss_weight * weight_reduce_loss(loss, weight, "mean", avg_factor)


def _zero_weight_return(pred: Tensor, weight: Tensor | None) -> Tensor | None:
    if weight is not None and not torch.any(weight > 0):
        if pred.dim() == weight.dim() + 1:
            weight = weight.unsqueeze(1)
        return (pred * weight).sum()
    return None


def l1_loss(
    pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: float | None, loss_weight: float = 1.0
) -> Tensor:
    early = _zero_weight_return(pred, weight)
    if early is not None:
        return early
    if target.numel() == 0:
        return pred.sum() * 0
    loss = torch.abs(pred - target)
    return loss_weight * weight_reduce_loss(loss, weight, "mean", avg_factor)


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None,
    avg_factor: float | None,
    beta: float = 1.0,
    loss_weight: float = 1.0,
) -> Tensor:
    early = _zero_weight_return(pred, weight)
    if early is not None:
        return early
    if target.numel() == 0:
        return pred.sum() * 0
    diff = torch.abs(pred - target)
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return loss_weight * weight_reduce_loss(loss, weight, "mean", avg_factor)


def iou_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None,
    avg_factor: float | None,
    mode: str = "log",
    eps: float = 1e-6,
    loss_weight: float = 1.0,
) -> Tensor:
    early = _zero_weight_return(pred, weight)
    if early is not None:
        return early
    if weight is not None and weight.dim() > 1:
        weight = weight.mean(-1)
    ious = bbox_overlaps(pred, target, is_aligned=True).clamp(min=eps)
    if mode == "linear":
        loss = 1 - ious
    elif mode == "square":
        loss = 1 - ious**2
    else:
        loss = -ious.log()
    return loss_weight * weight_reduce_loss(loss, weight, "mean", avg_factor)


def giou_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None,
    avg_factor: float | None,
    eps: float = 1e-6,
    loss_weight: float = 1.0,
) -> Tensor:
    early = _zero_weight_return(pred, weight)
    if early is not None:
        return early
    if weight is not None and weight.dim() > 1:
        weight = weight.mean(-1)
    loss = 1 - bbox_overlaps(pred, target, mode="giou", is_aligned=True, eps=eps)
    return loss_weight * weight_reduce_loss(loss, weight, "mean", avg_factor)


def sigmoid_bce_soft(
    pred: Tensor, label: Tensor, weight: Tensor | None, avg_factor: float | None, loss_weight: float = 1.0
) -> Tensor:
    """CrossEntropyLoss(use_sigmoid=True) with a same-shape float target."""
    valid_mask = ((label >= 0) & (label != -100)).float()
    weight = valid_mask if weight is None else weight * valid_mask
    loss = F.binary_cross_entropy_with_logits(pred, label.float(), reduction="none")
    return loss_weight * weight_reduce_loss(loss, weight.float(), "mean", avg_factor)


def quality_focal_loss(
    pred: Tensor,
    labels: Tensor,
    score: Tensor,
    weight: Tensor | None,
    avg_factor: float | None,
    beta: float = 2.0,
    loss_weight: float = 1.0,
) -> Tensor:
    pred_sigmoid = pred.sigmoid()
    scale_factor = pred_sigmoid
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = F.binary_cross_entropy_with_logits(pred, zerolabel, reduction="none") * scale_factor.pow(beta)
    bg_class_ind = pred.size(1)
    pos = ((labels >= 0) & (labels < bg_class_ind)).nonzero().squeeze(1)
    pos_label = labels[pos].long()
    scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], score[pos], reduction="none"
    ) * scale_factor.abs().pow(beta)
    loss = loss.sum(dim=1, keepdim=False)
    return loss_weight * weight_reduce_loss(loss, weight, "mean", avg_factor)


def distribution_focal_loss(
    pred: Tensor, label: Tensor, weight: Tensor | None, avg_factor: float | None, loss_weight: float = 1.0
) -> Tensor:
    dis_left = label.long()
    dis_right = dis_left + 1
    weight_left = dis_right.float() - label
    weight_right = label - dis_left.float()
    loss = (
        F.cross_entropy(pred, dis_left, reduction="none") * weight_left
        + F.cross_entropy(pred, dis_right, reduction="none") * weight_right
    )
    return loss_weight * weight_reduce_loss(loss, weight, "mean", avg_factor)


# ------------------------------------------------------------------------------------------------
# §1.1 / §2.1 prior generators


def octave_scales(octave_base_scale: float, scales_per_octave: int) -> Tensor:
    # numpy float64 in MMDetection, then torch.Tensor (float32)
    return torch.tensor(
        [2 ** (i / scales_per_octave) * octave_base_scale for i in range(scales_per_octave)], dtype=torch.float32
    )


def base_anchors(base_size: float, scales: Tensor, ratios: Tensor, center_offset: float = 0.0) -> Tensor:
    w = h = base_size
    x_center = center_offset * w
    y_center = center_offset * h
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w * w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h * h_ratios[:, None] * scales[None, :]).view(-1)
    return torch.stack([x_center - 0.5 * ws, y_center - 0.5 * hs, x_center + 0.5 * ws, y_center + 0.5 * hs], dim=-1)


def _meshgrid(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    xx = x.repeat(y.shape[0])
    yy = y.view(-1, 1).repeat(1, x.shape[0]).view(-1)
    return xx, yy


def grid_anchors(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    octave_base_scale: float,
    scales_per_octave: int,
    ratios: Sequence[float],
) -> list[Tensor]:
    scales = octave_scales(octave_base_scale, scales_per_octave)
    ratio_t = torch.tensor(list(ratios), dtype=torch.float32)
    out = []
    for (feat_h, feat_w), stride in zip(featmap_sizes, strides, strict=True):
        base = base_anchors(stride, scales, ratio_t)
        shift_x = torch.arange(0, feat_w).float() * stride
        shift_y = torch.arange(0, feat_h).float() * stride
        xx, yy = _meshgrid(shift_x, shift_y)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1)
        out.append((base[None, :, :] + shifts[:, None, :]).view(-1, 4))
    return out


def anchor_valid_flags(
    featmap_sizes: Sequence[tuple[int, int]], strides: Sequence[int], num_base_anchors: int, pad_shape: tuple[int, int]
) -> list[Tensor]:
    flags = []
    for (feat_h, feat_w), stride in zip(featmap_sizes, strides, strict=True):
        valid_h = min(math.ceil(pad_shape[0] / stride), feat_h)
        valid_w = min(math.ceil(pad_shape[1] / stride), feat_w)
        valid_x = torch.zeros(feat_w, dtype=torch.bool)
        valid_y = torch.zeros(feat_h, dtype=torch.bool)
        valid_x[:valid_w] = 1
        valid_y[:valid_h] = 1
        valid_xx, valid_yy = _meshgrid(valid_x, valid_y)
        valid = valid_xx & valid_yy
        flags.append(valid[:, None].expand(valid.size(0), num_base_anchors).contiguous().view(-1))
    return flags


def grid_points(featmap_sizes: Sequence[tuple[int, int]], strides: Sequence[int], offset: float = 0.5) -> list[Tensor]:
    out = []
    for (feat_h, feat_w), stride in zip(featmap_sizes, strides, strict=True):
        shift_x = (torch.arange(0, feat_w).float() + offset) * stride
        shift_y = (torch.arange(0, feat_h).float() + offset) * stride
        xx, yy = _meshgrid(shift_x, shift_y)
        out.append(torch.stack([xx, yy], dim=-1))
    return out


# ------------------------------------------------------------------------------------------------
# §1.4 coders


def delta_encode(proposals: Tensor, gt: Tensor, means: Sequence[float], stds: Sequence[float]) -> Tensor:
    proposals = proposals.float()
    gt = gt.float()
    px = (proposals[..., 0] + proposals[..., 2]) * 0.5
    py = (proposals[..., 1] + proposals[..., 3]) * 0.5
    pw = proposals[..., 2] - proposals[..., 0]
    ph = proposals[..., 3] - proposals[..., 1]
    gx = (gt[..., 0] + gt[..., 2]) * 0.5
    gy = (gt[..., 1] + gt[..., 3]) * 0.5
    gw = gt[..., 2] - gt[..., 0]
    gh = gt[..., 3] - gt[..., 1]
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
    return (deltas - deltas.new_tensor(means).unsqueeze(0)) / deltas.new_tensor(stds).unsqueeze(0)


def delta_decode(
    rois: Tensor, deltas: Tensor, means: Sequence[float], stds: Sequence[float], wh_ratio_clip: float = 16 / 1000
) -> Tensor:
    if deltas.size(0) == 0:
        return deltas
    deltas = deltas.reshape(-1, 4)
    denorm = deltas * deltas.new_tensor(stds).view(1, -1) + deltas.new_tensor(means).view(1, -1)
    dxy = denorm[:, :2]
    dwh = denorm[:, 2:]
    pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
    pwh = rois[:, 2:] - rois[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = abs(math.log(wh_ratio_clip))
    dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)


def distance2bbox(points: Tensor, distance: Tensor) -> Tensor:
    x1 = points[..., 0] - distance[..., 0]
    y1 = points[..., 1] - distance[..., 1]
    x2 = points[..., 0] + distance[..., 2]
    y2 = points[..., 1] + distance[..., 3]
    return torch.stack([x1, y1, x2, y2], -1)


def bbox2distance(points: Tensor, bbox: Tensor, max_dis: float | None = None, eps: float = 0.1) -> Tensor:
    left = points[:, 0] - bbox[:, 0]
    top = points[:, 1] - bbox[:, 1]
    right = bbox[:, 2] - points[:, 0]
    bottom = bbox[:, 3] - points[:, 1]
    if max_dis is not None:
        left = left.clamp(min=0, max=max_dis - eps)
        top = top.clamp(min=0, max=max_dis - eps)
        right = right.clamp(min=0, max=max_dis - eps)
        bottom = bottom.clamp(min=0, max=max_dis - eps)
    return torch.stack([left, top, right, bottom], -1)


# ------------------------------------------------------------------------------------------------
# §1.2 MaxIoUAssigner, §3.2 ATSSAssigner, §0.8 PseudoSampler


def max_iou_assign(
    priors: Tensor,
    gt_bboxes: Tensor,
    gt_labels: Tensor,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float = 0.4,
    min_pos_iou: float = 0.0,
    gt_max_assign_all: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(gt_inds, labels)``: gt_inds -1 ignored, 0 negative, i+1 positive for gt i."""
    overlaps = bbox_overlaps(gt_bboxes, priors)
    num_gts, num_bboxes = overlaps.size(0), overlaps.size(1)
    assigned = overlaps.new_full((num_bboxes,), -1, dtype=torch.long)
    if num_gts == 0 or num_bboxes == 0:
        if num_gts == 0:
            assigned[:] = 0
        return assigned, overlaps.new_full((num_bboxes,), -1, dtype=torch.long)
    max_overlaps, argmax_overlaps = overlaps.max(dim=0)
    gt_max_overlaps, gt_argmax_overlaps = overlaps.max(dim=1)
    assigned[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0
    pos_inds = max_overlaps >= pos_iou_thr
    assigned[pos_inds] = argmax_overlaps[pos_inds] + 1
    for i in range(num_gts):
        if gt_max_overlaps[i] >= min_pos_iou:
            if gt_max_assign_all:
                max_iou_inds = overlaps[i, :] == gt_max_overlaps[i]
                assigned[max_iou_inds] = i + 1
            else:
                assigned[gt_argmax_overlaps[i]] = i + 1
    labels = assigned.new_full((num_bboxes,), -1)
    pos = torch.nonzero(assigned > 0, as_tuple=False).squeeze(-1)
    if pos.numel() > 0:
        labels[pos] = gt_labels[assigned[pos] - 1]
    return assigned, labels


def atss_assign(
    priors: Tensor, num_level_priors: Sequence[int], gt_bboxes: Tensor, gt_labels: Tensor, topk: int = 9
) -> tuple[Tensor, Tensor]:
    num_gt, num_bboxes = gt_bboxes.size(0), priors.size(0)
    overlaps = bbox_overlaps(priors, gt_bboxes)
    assigned = overlaps.new_full((num_bboxes,), 0, dtype=torch.long)
    if num_gt == 0 or num_bboxes == 0:
        return assigned, overlaps.new_full((num_bboxes,), -1, dtype=torch.long)
    gt_cx = (gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2.0
    gt_cy = (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2.0
    gt_points = torch.stack((gt_cx, gt_cy), dim=1)
    b_cx = (priors[:, 0] + priors[:, 2]) / 2.0
    b_cy = (priors[:, 1] + priors[:, 3]) / 2.0
    b_points = torch.stack((b_cx, b_cy), dim=1)
    distances = (b_points[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()
    candidate_idxs = []
    start_idx = 0
    for bboxes_per_level in num_level_priors:
        end_idx = start_idx + bboxes_per_level
        distances_per_level = distances[start_idx:end_idx, :]
        selectable_k = min(topk, bboxes_per_level)
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
        candidate_idxs[:, gt_idx] += gt_idx * num_bboxes
    ep_b_cx = b_cx.view(1, -1).expand(num_gt, num_bboxes).contiguous().view(-1)
    ep_b_cy = b_cy.view(1, -1).expand(num_gt, num_bboxes).contiguous().view(-1)
    candidate_idxs = candidate_idxs.view(-1)
    l_ = ep_b_cx[candidate_idxs].view(-1, num_gt) - gt_bboxes[:, 0]
    t_ = ep_b_cy[candidate_idxs].view(-1, num_gt) - gt_bboxes[:, 1]
    r_ = gt_bboxes[:, 2] - ep_b_cx[candidate_idxs].view(-1, num_gt)
    b_ = gt_bboxes[:, 3] - ep_b_cy[candidate_idxs].view(-1, num_gt)
    is_in_gts = torch.stack([l_, t_, r_, b_], dim=1).min(dim=1)[0] > 0.01
    is_pos = is_pos & is_in_gts
    overlaps_inf = torch.full_like(overlaps, -INF).t().contiguous().view(-1)
    index = candidate_idxs.view(-1)[is_pos.view(-1)]
    overlaps_inf[index] = overlaps.t().contiguous().view(-1)[index]
    overlaps_inf = overlaps_inf.view(num_gt, -1).t()
    max_overlaps, argmax_overlaps = overlaps_inf.max(dim=1)
    assigned[max_overlaps != -INF] = argmax_overlaps[max_overlaps != -INF] + 1
    labels = assigned.new_full((num_bboxes,), -1)
    pos = torch.nonzero(assigned > 0, as_tuple=False).squeeze(-1)
    if pos.numel() > 0:
        labels[pos] = gt_labels[assigned[pos] - 1]
    return assigned, labels


def pseudo_sample(gt_inds: Tensor) -> tuple[Tensor, Tensor]:
    pos_inds = torch.nonzero(gt_inds > 0, as_tuple=False).squeeze(-1).unique()
    neg_inds = torch.nonzero(gt_inds == 0, as_tuple=False).squeeze(-1).unique()
    return pos_inds, neg_inds


# ------------------------------------------------------------------------------------------------
# §1.3 / §3.3 anchor-head targets


def _anchor_targets_single(
    flat_anchors: Tensor,
    valid_flags: Tensor,
    num_level_anchors: list[int],
    gt_bboxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    assign: Callable[[Tensor, list[int], Tensor, Tensor], tuple[Tensor, Tensor]],
    encode: Callable[[Tensor, Tensor], Tensor] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
    """One image: (anchors, labels, label_weights, bbox_targets, bbox_weights, num_pos), unmapped."""
    inside_flags = valid_flags  # allowed_border = -1
    anchors = flat_anchors[inside_flags, :]
    split = torch.split(inside_flags, num_level_anchors)
    num_level_inside = [int(flags.sum()) for flags in split]
    gt_inds, assigned_labels = assign(anchors, num_level_inside, gt_bboxes, gt_labels)
    pos_inds, neg_inds = pseudo_sample(gt_inds)
    num_valid = anchors.shape[0]
    bbox_targets = torch.zeros_like(anchors)
    bbox_weights = torch.zeros_like(anchors)
    labels = anchors.new_full((num_valid,), num_classes, dtype=torch.long)
    label_weights = anchors.new_zeros(num_valid, dtype=torch.float)
    if len(pos_inds) > 0:
        pos_gt_bboxes = gt_bboxes[gt_inds[pos_inds] - 1]
        pos_bbox_targets = pos_gt_bboxes if encode is None else encode(anchors[pos_inds], pos_gt_bboxes)
        bbox_targets[pos_inds, :] = pos_bbox_targets
        bbox_weights[pos_inds, :] = 1.0
        labels[pos_inds] = assigned_labels[pos_inds]
        label_weights[pos_inds] = 1.0
    if len(neg_inds) > 0:
        label_weights[neg_inds] = 1.0
    num_total = flat_anchors.size(0)
    anchors = unmap(anchors, num_total, inside_flags)
    labels = unmap(labels, num_total, inside_flags, fill=num_classes)
    label_weights = unmap(label_weights, num_total, inside_flags)
    bbox_targets = unmap(bbox_targets, num_total, inside_flags)
    bbox_weights = unmap(bbox_weights, num_total, inside_flags)
    return anchors, labels, label_weights, bbox_targets, bbox_weights, len(pos_inds)


def anchor_get_targets(
    anchor_list: list[list[Tensor]],
    valid_flag_list: list[list[Tensor]],
    targets: Sequence[dict],
    num_classes: int,
    assign: Callable,
    encode: Callable | None,
) -> tuple[list[Tensor], ...]:
    """Per level: anchors, labels, label_weights, bbox_targets, bbox_weights (B, n_l, ...); avg_factor."""
    num_level_anchors = [a.size(0) for a in anchor_list[0]]
    concat_anchors = [torch.cat(a) for a in anchor_list]
    concat_flags = [torch.cat(f) for f in valid_flag_list]
    results = multi_apply(
        _anchor_targets_single,
        concat_anchors,
        concat_flags,
        [num_level_anchors] * len(targets),
        [t["boxes"].float() for t in targets],
        [t["labels"].long() for t in targets],
        num_classes=num_classes,
        assign=assign,
        encode=encode,
    )
    all_anchors, all_labels, all_label_weights, all_bbox_targets, all_bbox_weights, num_pos = results
    avg_factor = sum(max(n, 1) for n in num_pos)
    return (
        images_to_levels(all_anchors, num_level_anchors),
        images_to_levels(all_labels, num_level_anchors),
        images_to_levels(all_label_weights, num_level_anchors),
        images_to_levels(all_bbox_targets, num_level_anchors),
        images_to_levels(all_bbox_weights, num_level_anchors),
        avg_factor,
    )


def _featmap_sizes(maps: Sequence[Tensor]) -> list[tuple[int, int]]:
    return [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]


def total(losses: dict) -> dict[str, Tensor]:
    """mmengine's parse_losses: a list of per-level scalars is summed, a scalar kept."""
    return {k: (sum(v) if isinstance(v, list) else v) for k, v in losses.items()}


# ------------------------------------------------------------------------------------------------
# §1 RetinaHead


RETINA_ANCHORS = {"octave_base_scale": 4, "scales_per_octave": 3, "ratios": (0.5, 1.0, 2.0)}
STRIDES = (8, 16, 32, 64, 128)


def retinanet_targets(
    cls_scores: Sequence[Tensor],
    targets: Sequence[dict],
    num_classes: int,
    strides: Sequence[int] = STRIDES,
    pad_shapes: Sequence[tuple[int, int]] | None = None,
    anchors: list[Tensor] | None = None,
) -> tuple[list[Tensor], ...]:
    """``anchors`` (one tensor per level) replace the generated ones (then ``pad_shapes`` must be None)."""
    sizes = _featmap_sizes(cls_scores)
    batch = cls_scores[0].shape[0]
    if anchors is None:
        anchors = grid_anchors(sizes, strides, **RETINA_ANCHORS)
    num_base = len(RETINA_ANCHORS["ratios"]) * RETINA_ANCHORS["scales_per_octave"]
    anchor_list = [anchors for _ in range(batch)]
    if pad_shapes is None:
        valid_flag_list = [[torch.ones(a.shape[0], dtype=torch.bool) for a in anchors] for _ in range(batch)]
    else:
        valid_flag_list = [anchor_valid_flags(sizes, strides, num_base, pad) for pad in pad_shapes]

    def assign(priors, _num_level, gt_bboxes, gt_labels):
        return max_iou_assign(priors, gt_bboxes, gt_labels, 0.5, 0.4, 0.0)

    def encode(p, g):
        return delta_encode(p, g, (0.0,) * 4, (1.0,) * 4)

    return anchor_get_targets(anchor_list, valid_flag_list, targets, num_classes, assign, encode)


def retinanet_loss_by_feat(
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    targets: Sequence[dict],
    num_classes: int,
    strides: Sequence[int] = STRIDES,
    pad_shapes: Sequence[tuple[int, int]] | None = None,
    loss_bbox: str = "smooth_l1",
    beta: float = 1.0,
    anchors: list[Tensor] | None = None,
) -> dict[str, list[Tensor]]:
    """AnchorHead.loss_by_feat with the RetinaNet config (box loss: SmoothL1(beta) or L1)."""
    _, labels_list, label_weights_list, bbox_targets_list, bbox_weights_list, avg_factor = retinanet_targets(
        cls_scores, targets, num_classes, strides, pad_shapes, anchors
    )

    def single(cls_score, bbox_pred, labels, label_weights, bbox_targets, bbox_weights):
        labels = labels.reshape(-1)
        label_weights = label_weights.reshape(-1)
        cls_score = cls_score.permute(0, 2, 3, 1).reshape(-1, num_classes)
        loss_cls = focal_loss(cls_score, labels, label_weights, avg_factor=avg_factor)
        bbox_targets = bbox_targets.reshape(-1, 4)
        bbox_weights = bbox_weights.reshape(-1, 4)
        bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4)
        if loss_bbox == "l1":
            loss_box = l1_loss(bbox_pred, bbox_targets, bbox_weights, avg_factor)
        else:
            loss_box = smooth_l1_loss(bbox_pred, bbox_targets, bbox_weights, avg_factor, beta=beta)
        return loss_cls, loss_box

    losses_cls, losses_bbox = multi_apply(
        single, cls_scores, bbox_preds, labels_list, label_weights_list, bbox_targets_list, bbox_weights_list
    )
    return {"loss_cls": losses_cls, "loss_bbox": losses_bbox}


# ------------------------------------------------------------------------------------------------
# §2 FCOSHead

FCOS_REGRESS_RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))


def _fcos_targets_single(
    gt_bboxes: Tensor,
    gt_labels: Tensor,
    points: Tensor,
    regress_ranges: Tensor,
    num_points_per_lvl: list[int],
    num_classes: int,
    strides: Sequence[int],
    center_sampling: bool,
    radius: float,
) -> tuple[Tensor, Tensor]:
    num_points = points.size(0)
    num_gts = gt_bboxes.size(0)
    if num_gts == 0:
        return gt_labels.new_full((num_points,), num_classes), gt_bboxes.new_zeros((num_points, 4))
    areas = (gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1])
    areas = areas[None].repeat(num_points, 1)
    regress_ranges = regress_ranges[:, None, :].expand(num_points, num_gts, 2)
    gt_bboxes = gt_bboxes[None].expand(num_points, num_gts, 4)
    xs, ys = points[:, 0], points[:, 1]
    xs = xs[:, None].expand(num_points, num_gts)
    ys = ys[:, None].expand(num_points, num_gts)
    left = xs - gt_bboxes[..., 0]
    right = gt_bboxes[..., 2] - xs
    top = ys - gt_bboxes[..., 1]
    bottom = gt_bboxes[..., 3] - ys
    bbox_targets = torch.stack((left, top, right, bottom), -1)
    if center_sampling:
        center_xs = (gt_bboxes[..., 0] + gt_bboxes[..., 2]) / 2
        center_ys = (gt_bboxes[..., 1] + gt_bboxes[..., 3]) / 2
        center_gts = torch.zeros_like(gt_bboxes)
        stride = center_xs.new_zeros(center_xs.shape)
        lvl_begin = 0
        for lvl_idx, num_points_lvl in enumerate(num_points_per_lvl):
            lvl_end = lvl_begin + num_points_lvl
            stride[lvl_begin:lvl_end] = strides[lvl_idx] * radius
            lvl_begin = lvl_end
        x_mins = center_xs - stride
        y_mins = center_ys - stride
        x_maxs = center_xs + stride
        y_maxs = center_ys + stride
        center_gts[..., 0] = torch.where(x_mins > gt_bboxes[..., 0], x_mins, gt_bboxes[..., 0])
        center_gts[..., 1] = torch.where(y_mins > gt_bboxes[..., 1], y_mins, gt_bboxes[..., 1])
        center_gts[..., 2] = torch.where(x_maxs > gt_bboxes[..., 2], gt_bboxes[..., 2], x_maxs)
        center_gts[..., 3] = torch.where(y_maxs > gt_bboxes[..., 3], gt_bboxes[..., 3], y_maxs)
        cb_dist_left = xs - center_gts[..., 0]
        cb_dist_right = center_gts[..., 2] - xs
        cb_dist_top = ys - center_gts[..., 1]
        cb_dist_bottom = center_gts[..., 3] - ys
        center_bbox = torch.stack((cb_dist_left, cb_dist_top, cb_dist_right, cb_dist_bottom), -1)
        inside_gt_bbox_mask = center_bbox.min(-1)[0] > 0
    else:
        inside_gt_bbox_mask = bbox_targets.min(-1)[0] > 0
    max_regress_distance = bbox_targets.max(-1)[0]
    inside_regress_range = (max_regress_distance >= regress_ranges[..., 0]) & (
        max_regress_distance <= regress_ranges[..., 1]
    )
    areas[inside_gt_bbox_mask == 0] = INF
    areas[inside_regress_range == 0] = INF
    min_area, min_area_inds = areas.min(dim=1)
    labels = gt_labels[min_area_inds]
    labels[min_area == INF] = num_classes
    bbox_targets = bbox_targets[range(num_points), min_area_inds]
    return labels, bbox_targets


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
    expanded = [points[i].new_tensor(regress_ranges[i])[None].expand_as(points[i]) for i in range(num_levels)]
    concat_regress_ranges = torch.cat(expanded, dim=0)
    concat_points = torch.cat(points, dim=0)
    num_points = [center.size(0) for center in points]
    labels_list, bbox_targets_list = multi_apply(
        _fcos_targets_single,
        [t["boxes"].float() for t in targets],
        [t["labels"].long() for t in targets],
        points=concat_points,
        regress_ranges=concat_regress_ranges,
        num_points_per_lvl=num_points,
        num_classes=num_classes,
        strides=strides,
        center_sampling=center_sampling,
        radius=center_sample_radius,
    )
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
    sizes = _featmap_sizes(cls_scores)
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


# ------------------------------------------------------------------------------------------------
# §3 ATSSHead, §4 GFLHead (shared targets)

ATSS_ANCHORS = {"octave_base_scale": 8, "scales_per_octave": 1, "ratios": (1.0,)}
ATSS_STDS = (0.1, 0.1, 0.2, 0.2)


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
    sizes = _featmap_sizes(cls_scores)
    batch = cls_scores[0].shape[0]
    anchors = grid_anchors(sizes, strides, **ATSS_ANCHORS)
    anchor_list = [anchors for _ in range(batch)]
    if pad_shapes is None:
        valid_flag_list = [[torch.ones(a.shape[0], dtype=torch.bool) for a in anchors] for _ in range(batch)]
    else:
        valid_flag_list = [anchor_valid_flags(sizes, strides, 1, pad) for pad in pad_shapes]

    def assign(priors, num_level, gt_bboxes, gt_labels):
        return atss_assign(priors, num_level, gt_bboxes, gt_labels, topk=9)

    return anchor_get_targets(anchor_list, valid_flag_list, targets, num_classes, assign, encode=None)


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


# ------------------------------------------------------------------------------------------------
# NetsPresso Trainer retinanet_loss (torchvision Matcher / BoxCoder semantics)

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


# ------------------------------------------------------------------------------------------------
# Test scenes and comparisons (shared by the preset tests; not part of any reference)


@pytest.fixture(autouse=True, scope="module")
def single_intra_op_thread():
    """The tensors here are tiny: one intra-op thread avoids oversubscription slowdowns on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


IMAGE_SIZE = 128
FEATMAP_SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # a 128 x 128 image, strides 8 .. 128

# name: (seed, boxes per image, square image side, largest box side). B = 2; one image without boxes;
# "large" reaches the upper levels (RetinaNet / FCOS level 2, ATSS / GFL level 2 and up); "tiny" boxes have
# only low-quality RetinaNet matches and so few positives that Σ centerness < 1 (the clamps of FCOS / ATSS).
SCENES = {
    "seed0": (0, (3, 5), 128, 120.0),
    "seed1": (1, (6, 0), 128, 120.0),
    "seed2": (2, (1, 4), 128, 120.0),
    "large": (3, (4, 2), 256, 250.0),
    "tiny": (13, (1, 1), 128, 12.0),
}


def featmap_sizes(image_side: int, strides: Sequence[int] = STRIDES) -> list[tuple[int, int]]:
    return [(math.ceil(image_side / s), math.ceil(image_side / s)) for s in strides]


def scene(name: str, num_classes: int) -> tuple[torch.Generator, list[dict[str, Tensor]], list[tuple[int, int]]]:
    """A seeded generator (for the maps), the targets and the feature-map sizes of a named scene."""
    seed, counts, side, max_size = SCENES[name]
    generator = torch.Generator().manual_seed(seed)
    targets = random_targets(generator, counts, num_classes, (side, side), max_size=max_size)
    return generator, targets, featmap_sizes(side)


def random_targets(
    generator: torch.Generator,
    counts: Sequence[int],
    num_classes: int,
    image_size: tuple[int, int] | Sequence[tuple[int, int]] = (IMAGE_SIZE, IMAGE_SIZE),
    min_size: float = 8.0,
    max_size: float = 120.0,
) -> list[dict[str, Tensor]]:
    """One dict per image with ``counts[i]`` random float boxes inside an ``(H, W)`` image."""
    sizes = [image_size] * len(counts) if isinstance(image_size[0], int) else list(image_size)
    targets = []
    for m, (height, width) in zip(counts, sizes, strict=True):
        limit = torch.tensor([float(width), float(height)])
        wh = min_size + torch.rand(m, 2, generator=generator) * (torch.clamp(limit, max=max_size) - min_size)
        xy = torch.rand(m, 2, generator=generator) * (limit - wh)
        labels = torch.randint(0, num_classes, (m,), generator=generator)
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1), "labels": labels})
    return targets


def random_maps(
    generator: torch.Generator,
    batch: int,
    channels: int,
    sizes: Sequence[tuple[int, int]] = FEATMAP_SIZES,
    scale: float = 1.0,
    shift: float = 0.0,
    positive: bool = False,
) -> list[Tensor]:
    """Leaf per-level maps ``(B, channels, H_l, W_l)`` that require grad (``exp`` of them if ``positive``)."""
    maps = []
    for height, width in sizes:
        m = torch.randn(batch, channels, height, width, generator=generator) * scale + shift
        maps.append((m.exp() if positive else m).requires_grad_())
    return maps


def levels_to_maps(per_level: Sequence[Tensor], sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Per level ``(B, H·W·A, k)`` rows ``(y, x, a)`` back to maps ``(B, A·k, H, W)`` (channel ``a·k + j``)."""
    maps = []
    for rows, (height, width) in zip(per_level, sizes, strict=True):
        batch = rows.shape[0]
        maps.append(rows.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous())
    return maps


def grads(value: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """``d value / d inputs``; an input the value does not depend on gets zeros."""
    got = torch.autograd.grad(value, list(inputs), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(got, inputs, strict=True)]


def assert_terms_match(
    got: dict[str, Tensor], want: dict[str, Tensor], inputs: Sequence[Tensor], rtol: float = 1e-4, atol: float = 1e-6
) -> None:
    """Same keys, values within float32 round-off, and the same gradient of every term wrt ``inputs``."""
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(
            got[key], want[key].to(got[key].dtype), rtol=rtol, atol=atol, msg=lambda m, k=key: f"{k}: {m}"
        )
        got_grads = grads(got[key], inputs) if got[key].requires_grad else [torch.zeros_like(x) for x in inputs]
        want_grads = grads(want[key], inputs) if want[key].requires_grad else [torch.zeros_like(x) for x in inputs]
        for i, (g, w) in enumerate(zip(got_grads, want_grads, strict=True)):
            scale = float(w.abs().max()) if w.numel() else 0.0
            torch.testing.assert_close(
                g, w, rtol=rtol, atol=atol * max(scale, 1e-3), msg=lambda m, k=key, i=i: f"d {k} / d input {i}: {m}"
            )

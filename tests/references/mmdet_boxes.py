"""MMDetection 3.x box machinery, written out literally: ``bbox_overlaps``, prior generators, box coders.

``bbox_overlaps`` (``structures/bbox/bbox_overlaps.py``): iou / iof / giou, aligned or pairwise, union and
enclosing area clamped with ``max(., eps)``. Priors: ``AnchorGenerator`` (octave scales, ``center_offset``
0, anchor-minor order, valid flags from the pad shape) and ``MlvlPointGenerator`` (cell centres with
offset 0.5). Coders: ``DeltaXYWHBBoxCoder`` and the distance (l, t, r, b) coder of FCOS / GFL.

Nothing here imports :mod:`lightning_losses`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "anchor_valid_flags",
    "base_anchors",
    "bbox2distance",
    "bbox_overlaps",
    "delta_decode",
    "delta_encode",
    "distance2bbox",
    "grid_anchors",
    "grid_points",
    "octave_scales",
]


def bbox_overlaps(b1: Tensor, b2: Tensor, mode: str = "iou", is_aligned: bool = False, eps: float = 1e-6) -> Tensor:
    """MMDetection's bbox_overlaps for iou / iof / giou; union and enclosing area clamped with max(., eps)."""
    rows, cols = b1.size(-2), b2.size(-2)
    batch_shape = b1.shape[:-2]
    if rows * cols == 0:
        return b1.new_zeros(batch_shape + ((rows,) if is_aligned else (rows, cols)))
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    if is_aligned:
        lt = torch.max(b1[..., :2], b2[..., :2])
        rb = torch.min(b1[..., 2:], b2[..., 2:])
        wh = (rb - lt).clamp(min=0)
        overlap = wh[..., 0] * wh[..., 1]
        union = area1 + area2 - overlap if mode in ("iou", "giou") else area1
        enclosed_lt = torch.min(b1[..., :2], b2[..., :2])
        enclosed_rb = torch.max(b1[..., 2:], b2[..., 2:])
    else:
        lt = torch.max(b1[..., :, None, :2], b2[..., None, :, :2])
        rb = torch.min(b1[..., :, None, 2:], b2[..., None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        overlap = wh[..., 0] * wh[..., 1]
        union = area1[..., None] + area2[..., None, :] - overlap if mode in ("iou", "giou") else area1[..., None]
        enclosed_lt = torch.min(b1[..., :, None, :2], b2[..., None, :, :2])
        enclosed_rb = torch.max(b1[..., :, None, 2:], b2[..., None, :, 2:])
    eps_t = union.new_tensor([eps])
    union = torch.max(union, eps_t)
    ious = overlap / union
    if mode in ("iou", "iof"):
        return ious
    enclose_wh = (enclosed_rb - enclosed_lt).clamp(min=0)
    enclose_area = torch.max(enclose_wh[..., 0] * enclose_wh[..., 1], eps_t)
    return ious - (enclose_area - union) / enclose_area


# ------------------------------------------------------------------------------------------------
# Prior generators (AnchorGenerator, MlvlPointGenerator)


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
# Box coders (DeltaXYWHBBoxCoder, DistancePointBBoxCoder)


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

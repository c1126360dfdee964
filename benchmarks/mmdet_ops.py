"""The pieces of MMDetection 3.x's dense-head code path that :mod:`benchmarks.mmdet_heads` puts together.

Written from MMDetection's semantics (not its code): prior generators, ``bbox_overlaps``, the box coders, the pseudo
sampler, the ``MaxIoUAssigner`` and ``ATSSAssigner`` of one image (vectorised over its priors × boxes, with
MMDetection's loops over the boxes), ``multi_apply`` / ``images_to_levels`` / ``unmap``, and the loss functions as
MMDetection computes them off CUDA (``FocalLoss`` by one-hot and ``py_sigmoid_focal_loss``, ``SmoothL1Loss``,
``CrossEntropyLoss(use_sigmoid)``, ``QualityFocalLoss``; the IoU family and DFL are the composites of
:mod:`benchmarks.composites`), with the host reads MMDetection makes (the zero-weight checks, ``nonzero``).
Benchmark baselines only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import composites

__all__ = [
    "FCOS_RANGES",
    "INF",
    "STRIDES",
    "Targets",
    "aligned_iou",
    "atss_assign",
    "bbox2distance",
    "centerness_of",
    "delta_decode",
    "delta_encode",
    "distance2bbox",
    "flat",
    "focal_loss",
    "grid_anchors",
    "images_to_levels",
    "max_iou_assign",
    "multi_apply",
    "pairwise_iou",
    "pseudo_sample",
    "quality_focal_loss",
    "sigmoid_ce_loss",
    "smooth_l1_loss",
    "unmap",
    "valid_flags",
]

STRIDES = (8, 16, 32, 64, 128)
INF = 1e8
FCOS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF))
Targets = Sequence[Mapping[str, Tensor]]


def multi_apply(func: Callable, *args: object, **kwargs: object) -> tuple[list, ...]:
    return tuple(map(list, zip(*map(partial(func, **kwargs), *args), strict=True)))


def images_to_levels(per_image: list[Tensor], counts: list[int]) -> list[Tensor]:
    return list(torch.stack(per_image, 0).split(counts, dim=1))


def unmap(data: Tensor, count: int, inds: Tensor, fill: float = 0) -> Tensor:
    out = data.new_full((count, *data.shape[1:]), fill)
    out[inds.bool()] = data
    return out


# ------------------------------------------------------------------------------------------------
# Priors, overlaps, coders


def grid_anchors(
    sizes: Sequence[tuple[int, int]], base_scale: float, scales: int, ratios: Sequence[float], device: torch.device
) -> list[Tensor]:
    """``AnchorGenerator.grid_priors``: base anchors centred on cell corners, the anchors of a cell adjacent."""
    out = []
    octave = torch.tensor([2 ** (i / scales) * base_scale for i in range(scales)], device=device)
    h_ratios = torch.tensor(list(ratios), device=device).sqrt()
    for (h, w), stride in zip(sizes, STRIDES, strict=True):
        ws = (stride / h_ratios[:, None] * octave[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * octave[None, :]).reshape(-1)
        base = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)
        xs = torch.arange(w, device=device).float() * stride
        ys = torch.arange(h, device=device).float() * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx.reshape(-1), yy.reshape(-1)] * 2, dim=-1)
        out.append((shifts[:, None, :] + base[None]).reshape(-1, 4))
    return out


def valid_flags(
    sizes: Sequence[tuple[int, int]], per_cell: int, pad: tuple[int, int], device: torch.device
) -> list[Tensor]:
    out = []
    for (h, w), stride in zip(sizes, STRIDES, strict=True):
        vh, vw = min(math.ceil(pad[0] / stride), h), min(math.ceil(pad[1] / stride), w)
        valid = (torch.arange(h, device=device) < vh)[:, None] & (torch.arange(w, device=device) < vw)[None]
        out.append(valid.reshape(-1, 1).expand(-1, per_cell).reshape(-1))
    return out


def pairwise_iou(b1: Tensor, b2: Tensor, eps: float = 1e-6) -> Tensor:
    """``bbox_overlaps(b1, b2)`` (mode iou): ``(N, M)``, union clamped at ``eps``."""
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.max(b1[:, None, :2], b2[None, :, :2])
    rb = torch.min(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    return overlap / torch.max(area1[:, None] + area2[None] - overlap, overlap.new_tensor([eps]))


def aligned_iou(b1: Tensor, b2: Tensor, eps: float = 1e-6) -> Tensor:
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    wh = (torch.min(b1[:, 2:], b2[:, 2:]) - torch.max(b1[:, :2], b2[:, :2])).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    return overlap / torch.max(area1 + area2 - overlap, overlap.new_tensor([eps]))


def delta_encode(anchors: Tensor, gt: Tensor, stds: Sequence[float]) -> Tensor:
    """``DeltaXYWHBBoxCoder.encode`` (means 0)."""
    pxy, pwh = (anchors[:, :2] + anchors[:, 2:]) * 0.5, anchors[:, 2:] - anchors[:, :2]
    gxy, gwh = (gt[:, :2] + gt[:, 2:]) * 0.5, gt[:, 2:] - gt[:, :2]
    deltas = torch.cat([(gxy - pxy) / pwh, torch.log(gwh / pwh)], dim=-1)
    return deltas / deltas.new_tensor(stds)[None]


def delta_decode(anchors: Tensor, deltas: Tensor, stds: Sequence[float]) -> Tensor:
    """``DeltaXYWHBBoxCoder.decode`` (means 0, ``wh_ratio_clip`` 16/1000, no border clip)."""
    denorm = deltas * deltas.new_tensor(stds)[None]
    pxy, pwh = (anchors[:, :2] + anchors[:, 2:]) * 0.5, anchors[:, 2:] - anchors[:, :2]
    limit = abs(math.log(16 / 1000))
    gxy, gwh = pxy + pwh * denorm[:, :2], pwh * denorm[:, 2:].clamp(min=-limit, max=limit).exp()
    return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)


def distance2bbox(points: Tensor, d: Tensor) -> Tensor:
    return torch.stack(
        [points[:, 0] - d[:, 0], points[:, 1] - d[:, 1], points[:, 0] + d[:, 2], points[:, 1] + d[:, 3]], -1
    )


def bbox2distance(points: Tensor, b: Tensor, max_dis: float, eps: float = 0.1) -> Tensor:
    d = torch.stack(
        [points[:, 0] - b[:, 0], points[:, 1] - b[:, 1], b[:, 2] - points[:, 0], b[:, 3] - points[:, 1]], -1
    )
    return d.clamp(min=0, max=max_dis - eps)


def pseudo_sample(gt_inds: Tensor) -> tuple[Tensor, Tensor]:
    """``PseudoSampler``: positive and negative indices."""
    return (gt_inds > 0).nonzero().squeeze(-1).unique(), (gt_inds == 0).nonzero().squeeze(-1).unique()


# ------------------------------------------------------------------------------------------------
# Loss functions (MMDetection's off-CUDA paths; reductions by composites.weight_reduce)


def _zero_weight(pred: Tensor, weight: Tensor | None) -> Tensor | None:
    if weight is not None and not torch.any(weight > 0):
        return (pred * (weight.unsqueeze(1) if pred.dim() == weight.dim() + 1 else weight)).sum()
    return None


def focal_loss(
    pred: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    avg_factor: float | None = None,
    gamma: float = 2.0,
    alpha: float = 0.25,
) -> Tensor:
    """``FocalLoss(use_sigmoid=True)`` off CUDA: one-hot of ``labels`` (``C + 1`` columns, last dropped), then the
    composite ``py_sigmoid_focal_loss``; a per-row ``weight`` becomes a column."""
    c = pred.size(1)
    target = F.one_hot(labels, num_classes=c + 1)[:, :c].type_as(pred)
    p = pred.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    if weight is not None and weight.shape != loss.shape:
        weight = weight.view(-1, 1)
    return composites.weight_reduce(loss, weight, avg_factor)


def smooth_l1_loss(pred: Tensor, target: Tensor, weight: Tensor, avg_factor: float, beta: float = 1.0) -> Tensor:
    shortcut = _zero_weight(pred, weight)
    if shortcut is not None:
        return shortcut
    diff = (pred - target).abs()
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return composites.weight_reduce(loss, weight, avg_factor)


def sigmoid_ce_loss(pred: Tensor, label: Tensor, avg_factor: float | None) -> Tensor:
    """``CrossEntropyLoss(use_sigmoid=True)`` with a float target of ``pred``'s shape (``ignore_index`` -100)."""
    valid = ((label >= 0) & (label != -100)).float()
    loss = F.binary_cross_entropy_with_logits(pred, label.float(), reduction="none")
    return composites.weight_reduce(loss, valid, avg_factor)


def quality_focal_loss(
    pred: Tensor, labels: Tensor, score: Tensor, weight: Tensor, avg_factor: float, beta: float = 2.0
) -> Tensor:
    """``QualityFocalLoss``: every entry scored as a negative, the positives' entries overwritten, summed per row."""
    p = pred.sigmoid()
    loss = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none") * p.pow(beta)
    pos = ((labels >= 0) & (labels < pred.size(1))).nonzero().squeeze(1)
    pos_label = labels[pos].long()
    scale = score[pos] - p[pos, pos_label]
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], score[pos], reduction="none"
    ) * scale.abs().pow(beta)
    return composites.weight_reduce(loss.sum(dim=1), weight, avg_factor)


def centerness_of(points: Tensor, boxes: Tensor) -> Tensor:
    lr = torch.stack([points[:, 0] - boxes[:, 0], boxes[:, 2] - points[:, 0]], dim=1)
    tb = torch.stack([points[:, 1] - boxes[:, 1], boxes[:, 3] - points[:, 1]], dim=1)
    return torch.sqrt(lr.min(dim=-1)[0] / lr.max(dim=-1)[0] * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0]))


def flat(m: Tensor, channels: int) -> Tensor:
    return m.permute(0, 2, 3, 1).reshape(-1, channels)


# ------------------------------------------------------------------------------------------------
# Assigners of one image, vectorised over its priors × boxes


def max_iou_assign(
    priors: Tensor, gt: Tensor, pos_thr: float = 0.5, neg_thr: float = 0.4, min_pos_iou: float = 0.0
) -> Tensor:
    """``MaxIoUAssigner.assign_wrt_overlaps`` of one image: ``gt_inds`` (−1 ignored, 0 negative, ``i + 1`` box i)."""
    gt_inds = priors.new_full((priors.shape[0],), -1, dtype=torch.long)
    if gt.shape[0] == 0:
        return gt_inds.fill_(0)
    overlaps = pairwise_iou(gt, priors)  # (G, P)
    max_overlaps, argmax = overlaps.max(dim=0)
    gt_max, _ = overlaps.max(dim=1)
    gt_inds[(max_overlaps >= 0) & (max_overlaps < neg_thr)] = 0
    pos = max_overlaps >= pos_thr
    gt_inds[pos] = argmax[pos] + 1
    for i in range(gt.shape[0]):  # low-quality matches, box by box, every prior at the box's best IoU
        if gt_max[i] >= min_pos_iou:
            gt_inds[overlaps[i, :] == gt_max[i]] = i + 1
    return gt_inds


def atss_assign(priors: Tensor, level_counts: list[int], gt: Tensor, topk: int = 9) -> Tensor:
    """``ATSSAssigner.assign`` of one image: ``gt_inds`` (0 negative, ``i + 1`` box i)."""
    num_gt, num_priors = gt.shape[0], priors.shape[0]
    overlaps = pairwise_iou(priors, gt)  # (P, G)
    gt_inds = overlaps.new_zeros((num_priors,), dtype=torch.long)
    if num_gt == 0:
        return gt_inds
    gt_points = (gt[:, :2] + gt[:, 2:]) / 2.0
    prior_points = (priors[:, :2] + priors[:, 2:]) / 2.0
    distances = (prior_points[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()
    candidates, start = [], 0
    for count, level in zip(level_counts, distances.split(level_counts), strict=True):
        _, idx = level.topk(min(topk, count), dim=0, largest=False)
        candidates.append(idx + start)
        start += count
    candidates = torch.cat(candidates, dim=0)
    candidate_overlaps = overlaps[candidates, torch.arange(num_gt)]
    is_pos = candidate_overlaps >= (candidate_overlaps.mean(0) + candidate_overlaps.std(0))[None, :]
    for i in range(num_gt):
        candidates[:, i] += i * num_priors
    cx = prior_points[:, 0].view(1, -1).expand(num_gt, num_priors).reshape(-1)[candidates].view(-1, num_gt)
    cy = prior_points[:, 1].view(1, -1).expand(num_gt, num_priors).reshape(-1)[candidates].view(-1, num_gt)
    inside = torch.stack([cx - gt[:, 0], cy - gt[:, 1], gt[:, 2] - cx, gt[:, 3] - cy], dim=1).min(dim=1)[0] > 0.01
    is_pos = is_pos & inside
    overlaps_inf = torch.full_like(overlaps, -INF).t().contiguous().view(-1)
    index = candidates.view(-1)[is_pos.view(-1)]
    overlaps_inf[index] = overlaps.t().contiguous().view(-1)[index]
    max_overlaps, argmax = overlaps_inf.view(num_gt, -1).t().max(dim=1)
    gt_inds[max_overlaps != -INF] = argmax[max_overlaps != -INF] + 1
    return gt_inds

"""Textbook composite losses: the baselines of the benchmark, every intermediate a separate tensor op.

These follow MMDetection's pure-PyTorch code paths (``py_sigmoid_focal_loss``, ``quality_focal_loss``,
``bbox_overlaps``, ``iou_loss`` … ``ciou_loss``, ``distribution_focal_loss``, ``weight_reduce_loss``) and
torchvision's ``sigmoid_focal_loss``, written out here so the benchmark measures what a user would get
from the unfused formula. Autograd keeps every intermediate alive for backward, which is what the fused
kernels of ``lightning_losses`` are measured against. They are baselines only: the package's tests hold
the numerical references.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bce_floor",
    "ciou_loss",
    "diou_loss",
    "distribution_focal_loss",
    "giou_loss",
    "iou_loss",
    "mmdet_focal_loss",
    "quality_focal_loss",
    "torchvision_focal_loss",
    "weight_reduce",
]

_EPS = torch.finfo(torch.float32).eps


def weight_reduce(loss: Tensor, weight: Tensor | None, avg_factor: float | None) -> Tensor:
    """MMDetection's ``weight_reduce_loss`` with ``reduction="mean"``: ``Σ w·ℓ / (avg_factor + eps)``."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return loss.mean()
    return loss.sum() / (avg_factor + _EPS)


def mmdet_focal_loss(
    pred: Tensor, labels: Tensor, gamma: float = 2.0, alpha: float = 0.25, avg_factor: float | None = None
) -> Tensor:
    """MMDetection's ``FocalLoss`` off CUDA: one-hot of ``labels`` in ``[0, C]``, then ``py_sigmoid_focal_loss``."""
    num_classes = pred.shape[1]
    target = F.one_hot(labels, num_classes=num_classes + 1)[:, :num_classes].type_as(pred)
    pred_sigmoid = pred.sigmoid()
    pt = (1 - pred_sigmoid) * target + pred_sigmoid * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    return weight_reduce(loss, None, avg_factor)


def torchvision_focal_loss(pred: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """torchvision's ``sigmoid_focal_loss`` (also NetsPresso's ``focal_loss``) with ``reduction="mean"``."""
    p = torch.sigmoid(pred)
    ce_loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * loss).mean()


def quality_focal_loss(
    pred: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0, avg_factor: float | None = None
) -> Tensor:
    """MMDetection's ``quality_focal_loss``: negatives everywhere, then the positives' entries overwritten."""
    pred_sigmoid = pred.sigmoid()
    scale_factor = pred_sigmoid
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = F.binary_cross_entropy_with_logits(pred, zerolabel, reduction="none") * scale_factor.pow(beta)
    bg_class_ind = pred.size(1)
    pos = ((labels >= 0) & (labels < bg_class_ind)).nonzero().squeeze(1)
    pos_label = labels[pos].long()
    scale_factor = scores[pos] - pred_sigmoid[pos, pos_label]
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], scores[pos], reduction="none"
    ) * scale_factor.abs().pow(beta)
    return weight_reduce(loss.sum(dim=1), None, avg_factor)


def bce_floor(pred: Tensor, target: Tensor, avg_factor: float | None = None) -> Tensor:
    """The native floor: one ``binary_cross_entropy_with_logits`` over the same logits and a dense target."""
    if avg_factor is None:
        return F.binary_cross_entropy_with_logits(pred, target)
    return F.binary_cross_entropy_with_logits(pred, target, reduction="sum") / avg_factor


def _aligned_overlaps(pred: Tensor, target: Tensor, mode: str, eps: float) -> Tensor:
    """MMDetection's ``bbox_overlaps(..., is_aligned=True)`` for ``iou`` / ``giou``."""
    area1 = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    area2 = (target[..., 2] - target[..., 0]) * (target[..., 3] - target[..., 1])
    lt = torch.max(pred[..., :2], target[..., :2])
    rb = torch.min(pred[..., 2:], target[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - overlap
    eps_t = union.new_tensor([eps])
    union = torch.max(union, eps_t)
    ious = overlap / union
    if mode == "iou":
        return ious
    enclosed_lt = torch.min(pred[..., :2], target[..., :2])
    enclosed_rb = torch.max(pred[..., 2:], target[..., 2:])
    enclose_wh = (enclosed_rb - enclosed_lt).clamp(min=0)
    enclose_area = torch.max(enclose_wh[..., 0] * enclose_wh[..., 1], eps_t)
    return ious - (enclose_area - union) / enclose_area


def _zero_weight(pred: Tensor, weight: Tensor | None) -> Tensor | None:
    """MMDetection's box-loss shortcut (a host sync): ``(pred * weight).sum()`` when no weight is positive."""
    if weight is not None and not torch.any(weight > 0):
        return (pred * weight.unsqueeze(-1)).sum()
    return None


def iou_loss(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor: float | None = None, eps: float = 1e-6
) -> Tensor:
    """MMDetection's ``IoULoss(mode="log")``: ``-log(max(IoU, eps))``."""
    shortcut = _zero_weight(pred, weight)
    if shortcut is not None:
        return shortcut
    ious = _aligned_overlaps(pred, target, "iou", 1e-6).clamp(min=eps)
    return weight_reduce(-ious.log(), weight, avg_factor)


def giou_loss(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor: float | None = None, eps: float = 1e-6
) -> Tensor:
    """MMDetection's ``GIoULoss``: ``1 - GIoU``."""
    shortcut = _zero_weight(pred, weight)
    if shortcut is not None:
        return shortcut
    return weight_reduce(1 - _aligned_overlaps(pred, target, "giou", eps), weight, avg_factor)


def _diou_terms(pred: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """IoU, squared center distance and squared enclosing diagonal, as MMDetection's ``diou_loss`` spells them."""
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    ap = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    ag = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    union = ap + ag - overlap + eps
    ious = overlap / union
    enclose_x1y1 = torch.min(pred[:, :2], target[:, :2])
    enclose_x2y2 = torch.max(pred[:, 2:], target[:, 2:])
    enclose_wh = (enclose_x2y2 - enclose_x1y1).clamp(min=0)
    cw = enclose_wh[:, 0]
    ch = enclose_wh[:, 1]
    c2 = cw**2 + ch**2 + eps
    b1_x1, b1_y1 = pred[:, 0], pred[:, 1]
    b1_x2, b1_y2 = pred[:, 2], pred[:, 3]
    b2_x1, b2_y1 = target[:, 0], target[:, 1]
    b2_x2, b2_y2 = target[:, 2], target[:, 3]
    left = ((b2_x1 + b2_x2) - (b1_x1 + b1_x2)) ** 2 / 4
    right = ((b2_y1 + b2_y2) - (b1_y1 + b1_y2)) ** 2 / 4
    return ious, left + right, c2


def diou_loss(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor: float | None = None, eps: float = 1e-6
) -> Tensor:
    """MMDetection's ``DIoULoss``: ``1 - IoU + ρ²/c²``."""
    shortcut = _zero_weight(pred, weight)
    if shortcut is not None:
        return shortcut
    ious, rho2, c2 = _diou_terms(pred, target, eps)
    return weight_reduce(1 - (ious - rho2 / c2), weight, avg_factor)


def ciou_loss(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor: float | None = None, eps: float = 1e-6
) -> Tensor:
    """MMDetection's ``CIoULoss``: ``1 - clamp(IoU - ρ²/c² - αv, -1, 1)``, α gated on IoU > 0.5, no gradient."""
    shortcut = _zero_weight(pred, weight)
    if shortcut is not None:
        return shortcut
    ious, rho2, c2 = _diou_terms(pred, target, eps)
    w1, h1 = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + eps
    w2, h2 = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1] + eps
    factor = 4 / math.pi**2
    v = factor * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = (ious > 0.5).float() * v / (1 - ious + v)
    cious = ious - (rho2 / c2 + alpha * v)
    return weight_reduce(1 - cious.clamp(min=-1.0, max=1.0), weight, avg_factor)


def distribution_focal_loss(
    pred: Tensor, label: Tensor, weight: Tensor | None = None, avg_factor: float | None = None
) -> Tensor:
    """MMDetection's ``distribution_focal_loss``: two ``cross_entropy`` calls on the bracketing bins."""
    dis_left = label.long()
    dis_right = dis_left + 1
    weight_left = dis_right.float() - label
    weight_right = label - dis_left.float()
    loss = (
        F.cross_entropy(pred, dis_left, reduction="none") * weight_left
        + F.cross_entropy(pred, dis_right, reduction="none") * weight_right
    )
    return weight_reduce(loss, weight, avg_factor)

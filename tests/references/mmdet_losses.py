"""MMDetection 3.x element losses, written out literally: ``weight_reduce_loss``, the IoU family, the heads' calls.

- :func:`weight_reduce_loss` (``models/losses/utils.py``): × weight, then reduce; ``avg_factor`` gives
  ``sum / (avg_factor + eps32)`` and is an error with ``sum``.
- ``mmdet_{iou,giou,diou,ciou}_loss``: the element-wise losses of aligned boxes (``iou_loss.py``), each with
  its own placement of ``eps``.
- The rest is each module's ``forward`` with the dense heads' arguments: the zero-weight early returns of the
  box losses (``(pred * weight).sum()``), ``loss_weight`` applied after the reduction, ``FocalLoss`` on its
  CPU path (one-hot with ``C + 1`` columns, the last dropped).

Nothing here imports :mod:`lightning_losses`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tests.references.mmdet_boxes import bbox_overlaps

__all__ = [
    "EPS32",
    "distribution_focal_loss",
    "focal_loss",
    "giou_loss",
    "iou_loss",
    "l1_loss",
    "mmdet_ciou_loss",
    "mmdet_diou_loss",
    "mmdet_giou_loss",
    "mmdet_iou_loss",
    "quality_focal_loss",
    "sigmoid_bce_soft",
    "smooth_l1_loss",
    "weight_reduce_loss",
]

EPS32 = torch.finfo(torch.float32).eps


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
    loss = mmdet_iou_loss(pred, target, mode, eps)
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
    loss = mmdet_giou_loss(pred, target, eps)
    return loss_weight * weight_reduce_loss(loss, weight, "mean", avg_factor)


# ------------------------------------------------------------------------------------------------
# Element-wise IoU-family losses of aligned boxes (models/losses/iou_loss.py)


def mmdet_iou_loss(pred, target, mode="log", eps=1e-6):
    """iou_loss: aligned IoU (union eps fixed at the default 1e-6), then clamp(min=eps) before the mode."""
    ious = bbox_overlaps(pred, target, is_aligned=True).clamp(min=eps)
    if mode == "linear":
        return 1 - ious
    if mode == "square":
        return 1 - ious**2
    return -ious.log()


def mmdet_giou_loss(pred, target, eps=1e-7):
    """giou_loss: the loss eps is handed to bbox_overlaps (union and enclosure clamp)."""
    return 1 - bbox_overlaps(pred, target, mode="giou", is_aligned=True, eps=eps)


def _mmdet_diou_parts(pred, target, eps):
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
    c2 = enclose_wh[:, 0] ** 2 + enclose_wh[:, 1] ** 2 + eps
    left = ((target[:, 0] + target[:, 2]) - (pred[:, 0] + pred[:, 2])) ** 2 / 4
    right = ((target[:, 1] + target[:, 3]) - (pred[:, 1] + pred[:, 3])) ** 2 / 4
    return ious, (left + right) / c2


def mmdet_diou_loss(pred, target, eps=1e-7):
    """diou_loss: eps added (not clamped) to the union and to c²."""
    ious, penalty = _mmdet_diou_parts(pred, target, eps)
    return 1 - (ious - penalty)


def mmdet_ciou_loss(pred, target, eps=1e-7):
    """ciou_loss: eps on both heights, α = [IoU > 0.5]·v/(1 − IoU + v) without grad, 1 − clamp(CIoU, −1, 1)."""
    ious, penalty = _mmdet_diou_parts(pred, target, eps)
    w1, h1 = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + eps
    w2, h2 = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1] + eps
    v = (4 / math.pi**2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = (ious > 0.5).float() * v / (1 - ious + v)
    cious = ious - (penalty + alpha * v)
    return 1 - cious.clamp(min=-1.0, max=1.0)


# ------------------------------------------------------------------------------------------------
# Classification losses as the heads call them


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

"""MMDetection 3.x element losses as the dense heads call them, written out literally.

Each function is the module's ``forward`` with the head's arguments: the zero-weight early returns of
the box losses (``(pred * weight).sum()``), ``weight_reduce_loss`` with ``avg_factor + eps32``, and
``loss_weight`` applied after the reduction. ``FocalLoss`` takes its CPU path (one-hot with ``C + 1``
columns, the last dropped).

Nothing here imports :mod:`lightning_losses`.
"""

from __future__ import annotations

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

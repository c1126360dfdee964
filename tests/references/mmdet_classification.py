"""MMDetection 3.x classification losses, written out literally in that code's own style.

From ``mmdet/models/losses/{utils,cross_entropy_loss,focal_loss,gfocal_loss}.py``: unmasked element losses,
one-hot rows filled through ``nonzero``, positives overwritten by index, and ``weight_reduce_loss``'s
``sum / (avg_factor + eps32)`` (:func:`tests.references.mmdet_losses.weight_reduce_loss`). The
cross-entropies are written out with ``log_softmax`` / ``logsigmoid`` so they do not share the package's
calls to ``F.cross_entropy`` / ``F.binary_cross_entropy_with_logits``. :class:`MMCrossEntropyLoss` is the
module's forward over them.

Nothing here imports :mod:`lightning_losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.references.mmdet_losses import weight_reduce_loss

__all__ = [
    "MMCrossEntropyLoss",
    "mm_bce_elementwise",
    "mm_bce_prob",
    "mm_binary_cross_entropy",
    "mm_cross_entropy",
    "mm_distribution_focal_loss",
    "mm_expand_onehot_labels",
    "mm_mask_cross_entropy",
    "mm_py_sigmoid_focal_loss",
    "mm_quality_focal_loss",
    "mm_quality_focal_loss_tensor_target",
]


def mm_cross_entropy(
    pred,
    label,
    weight=None,
    reduction="mean",
    avg_factor=None,
    class_weight=None,
    ignore_index=-100,
    avg_non_ignore=False,
    label_smoothing=0.0,
):
    """``cross_entropy`` with the softmax CE written out; ``label_smoothing`` with torch's meaning."""
    ignore_index = -100 if ignore_index is None else ignore_index
    num_classes = pred.size(1)
    log_p = pred.log_softmax(dim=1)
    cw_shape = (1, num_classes) + (1,) * (pred.dim() - 2)
    cw = torch.ones(cw_shape) if class_weight is None else class_weight.view(cw_shape)
    if label.is_floating_point():
        smoothed = label * (1 - label_smoothing) + label_smoothing / num_classes
        loss = -(cw * smoothed * log_p).sum(dim=1)
    else:
        valid = label != ignore_index
        safe = torch.where(valid, label, torch.zeros_like(label))
        w_y = cw.expand_as(pred).gather(1, safe.unsqueeze(1)).squeeze(1)
        nll = -log_p.gather(1, safe.unsqueeze(1)).squeeze(1) * w_y
        uniform = -(cw * log_p).sum(dim=1) / num_classes
        loss = (1 - label_smoothing) * nll + label_smoothing * uniform
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        if avg_factor is None and avg_non_ignore and reduction == "mean":
            avg_factor = label.numel() - (label == ignore_index).sum().item()
    if weight is not None:
        weight = weight.float()
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def mm_bce_elementwise(pred, target, pos_weight=None):
    """-[p_w · y · log σ(x) + (1 - y) · log(1 - σ(x))]."""
    pos = F.logsigmoid(pred) * target
    if pos_weight is not None:
        pos = pos * pos_weight
    return -(pos + (1 - target) * F.logsigmoid(-pred))


def mm_bce_prob(prob, target):
    return -(target * prob.log() + (1 - target) * torch.log1p(-prob))


def mm_expand_onehot_labels(labels, label_weights, label_channels, ignore_index):
    bin_labels = labels.new_full((labels.size(0), label_channels), 0)
    valid_mask = (labels >= 0) & (labels != ignore_index)
    inds = torch.nonzero(valid_mask & (labels < label_channels), as_tuple=False).squeeze(1)
    if inds.numel() > 0:
        bin_labels[inds, labels[inds]] = 1
    valid_mask = valid_mask.view(-1, 1).expand(labels.size(0), label_channels).float()
    if label_weights is None:
        bin_label_weights = valid_mask
    elif label_weights.dim() == 1:
        bin_label_weights = label_weights.view(-1, 1).repeat(1, label_channels)
        bin_label_weights *= valid_mask
    else:  # (N, C) element weights: not in MMDetection (which takes (N,)); the natural extension
        bin_label_weights = label_weights * valid_mask
    return bin_labels, bin_label_weights, valid_mask


def mm_binary_cross_entropy(
    pred,
    label,
    weight=None,
    reduction="mean",
    avg_factor=None,
    class_weight=None,
    ignore_index=-100,
    avg_non_ignore=False,
):
    ignore_index = -100 if ignore_index is None else ignore_index
    if pred.dim() != label.dim():
        label, weight, valid_mask = mm_expand_onehot_labels(label, weight, pred.size(-1), ignore_index)
    else:
        valid_mask = ((label >= 0) & (label != ignore_index)).float()
        weight = valid_mask if weight is None else weight * valid_mask
    if avg_factor is None and avg_non_ignore and reduction == "mean":
        avg_factor = valid_mask.sum().item()
    weight = weight.float()
    loss = mm_bce_elementwise(pred, label.float(), class_weight)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def mm_mask_cross_entropy(pred, target, label, reduction="mean", avg_factor=None, class_weight=None):
    """MMDetection's slice-and-BCE; ``class_weight`` per RoI class (the package's documented meaning)."""
    inds = torch.arange(0, pred.size(0), dtype=torch.long)
    pred_slice = pred[inds, label]
    loss = mm_bce_elementwise(pred_slice, target)
    weight = None if class_weight is None else class_weight[label].view(-1, 1, 1)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def mm_py_sigmoid_focal_loss(
    pred, target, weight=None, gamma=2.0, alpha=0.25, reduction="mean", avg_factor=None, activated=False
):
    """``py_sigmoid_focal_loss`` / ``py_focal_loss_with_prob``; ``alpha=None`` drops the balance."""
    if pred.dim() != target.dim():
        num_classes = pred.size(1)
        target = F.one_hot(target, num_classes=num_classes + 1)[:, :num_classes]
    target = target.type_as(pred)
    prob = pred if activated else pred.sigmoid()
    pt = (1 - prob) * target + prob * (1 - target)
    balance = 1.0 if alpha is None else alpha * target + (1 - alpha) * (1 - target)
    focal_weight = balance * pt.pow(gamma)
    bce = mm_bce_prob(pred, target) if activated else mm_bce_elementwise(pred, target)
    loss = bce * focal_weight
    if weight is not None:
        if weight.shape != loss.shape:
            if weight.size(0) == loss.size(0):
                weight = weight.view(-1, 1)
            else:
                assert weight.numel() == loss.numel()
                weight = weight.view(loss.size(0), -1)
        assert weight.ndim == loss.ndim
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def _bce(pred, target, activated):
    return mm_bce_prob(pred, target) if activated else mm_bce_elementwise(pred, target)


def mm_quality_focal_loss(pred, target, beta=2.0, activated=False):
    """``quality_focal_loss`` / ``quality_focal_loss_with_prob``: negatives for all, positives overwritten."""
    label, score = target
    prob = pred if activated else pred.sigmoid()
    scale_factor = prob
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = _bce(pred, zerolabel, activated) * scale_factor.pow(beta)
    bg_class_ind = pred.size(1)
    pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    scale_factor = score[pos] - prob[pos, pos_label]
    loss[pos, pos_label] = _bce(pred[pos, pos_label], score[pos], activated) * scale_factor.abs().pow(beta)
    return loss.sum(dim=1, keepdim=False)


def mm_quality_focal_loss_tensor_target(pred, target, beta=2.0, activated=False):
    prob = pred if activated else pred.sigmoid()
    target = target.type(pred.dtype)
    loss = _bce(pred, torch.zeros_like(pred), activated) * prob.pow(beta)
    pos = target != 0
    scale_factor = target[pos] - prob[pos]
    loss[pos] = _bce(pred[pos], target[pos], activated) * scale_factor.abs().pow(beta)
    return loss.sum(dim=1, keepdim=False)


def mm_distribution_focal_loss(pred, label):
    dis_left = label.long()
    dis_right = dis_left + 1
    weight_left = dis_right.float() - label
    weight_right = label - dis_left.float()
    return (
        F.cross_entropy(pred, dis_left, reduction="none") * weight_left
        + F.cross_entropy(pred, dis_right, reduction="none") * weight_right
    )


class MMCrossEntropyLoss:
    """``CrossEntropyLoss.forward``: reduction override, per-call ``ignore_index``, ``class_weight`` as a new
    tensor, ``loss_weight`` after the reduction."""

    def __init__(
        self,
        use_sigmoid=False,
        reduction="mean",
        class_weight=None,
        ignore_index=None,
        loss_weight=1.0,
        avg_non_ignore=False,
    ):
        self.use_sigmoid = use_sigmoid
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.class_weight = class_weight
        self.ignore_index = ignore_index
        self.avg_non_ignore = avg_non_ignore
        self.cls_criterion = mm_binary_cross_entropy if use_sigmoid else mm_cross_entropy

    def __call__(self, cls_score, label, weight=None, avg_factor=None, reduction_override=None, ignore_index=None):
        reduction = reduction_override if reduction_override else self.reduction
        if ignore_index is None:
            ignore_index = self.ignore_index
        class_weight = None if self.class_weight is None else cls_score.new_tensor(self.class_weight)
        return self.loss_weight * self.cls_criterion(
            cls_score,
            label,
            weight,
            class_weight=class_weight,
            reduction=reduction,
            avg_factor=avg_factor,
            ignore_index=ignore_index,
            avg_non_ignore=self.avg_non_ignore,
        )

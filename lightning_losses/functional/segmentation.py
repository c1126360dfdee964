"""Segmentation losses: OHEM cross-entropy, class-balanced boundary BCE, boundaries from a label mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_losses.functional.validation import check_floating, check_ndim, check_tensor

__all__ = ["balanced_boundary_bce", "boundary_from_mask", "ohem_cross_entropy"]


def _check_logits_mask(pred: Tensor, target: Tensor) -> None:
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    check_floating(pred, "pred")
    check_ndim(pred, (4,), "pred", "logits of shape (B, K, H, W)")
    if target.shape != (pred.shape[0], *pred.shape[2:]):
        raise ValueError(
            f"`target` must have shape {(pred.shape[0], *pred.shape[2:])} for `pred` of shape {tuple(pred.shape)}, "
            f"got {tuple(target.shape)}"
        )
    if target.is_floating_point():
        raise TypeError(f"`target` must hold integer class indices, got dtype {target.dtype}")


def ohem_cross_entropy(
    pred: Tensor,
    target: Tensor,
    thres: float = 0.9,
    min_kept: int = 131072,
    ignore_index: int = 255,
    class_weight: Tensor | None = None,
) -> Tensor:
    r"""Online hard example mining cross-entropy, as in PIDNet's training code.

    Pixels are ranked by the probability :math:`p_y` of their true class. With :math:`p_{(k)}` the
    :math:`k`-th smallest over the :math:`n` non-ignored pixels (0-based), the threshold is
    :math:`\tau = \max(p_{(\min(m, n-1))}, \text{thres})` and the loss is the plain mean of the per-pixel
    cross-entropy :math:`-w_y \log p_y` over the pixels with :math:`p_y < \tau`: every pixel below
    ``thres``, or about the ``min_kept`` hardest when fewer are. With nothing kept (e.g. every pixel
    ignored) the result is 0 with a graph (the reference returns NaN or fails). No host sync.

    Args:
        pred: logits ``(B, K, H, W)``.
        target: ``(B, H, W)`` int64 labels with ``ignore_index``.
        thres: probability below which a pixel is always kept.
        min_kept: :math:`m`, pixels kept at least (per call, not scaled by the batch).
        ignore_index: label excluded from the loss.
        class_weight: optional ``(K,)`` weights folded into each pixel's loss.

    Example:
        >>> pred = torch.tensor([[[[4.0, 0.0]], [[0.0, 0.0]]]])  # p_y = 0.98 and 0.5
        >>> ohem_cross_entropy(pred, torch.tensor([[[0, 0]]]), thres=0.9, min_kept=1)  # keeps only the second
        tensor(0.6931)

    Reference: Xu et al., *PIDNet: A Real-time Semantic Segmentation Network Inspired by PID Controllers*, CVPR 2023.
    """
    _check_logits_mask(pred, target)
    if min_kept < 0:
        raise ValueError(f"`min_kept` must be >= 0, got {min_kept}")
    min_kept = max(1, int(min_kept))
    valid = target != ignore_index
    safe_target = torch.where(valid, target, 0).long()
    weight = None if class_weight is None else class_weight.to(device=pred.device, dtype=pred.dtype)
    pixel_loss = F.cross_entropy(pred, safe_target, weight=weight, reduction="none")
    with torch.no_grad():
        prob = F.softmax(pred.float(), dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
        flat = torch.where(valid, prob, 2.0).reshape(-1)  # ignored pixels sort after every probability
        num_valid = valid.sum()
        kth = flat.kthvalue(min(min_kept, flat.numel() - 1) + 1).values if flat.numel() else flat.new_ones(())
        largest_valid = torch.where(valid, prob, -1.0).amax() if flat.numel() else flat.new_zeros(())
        min_value = torch.where(num_valid - 1 < min_kept, largest_valid, kth)
        threshold = torch.clamp(min_value, min=thres)
        kept = valid & (prob < threshold)
    # Summed in (at least) float32: half-precision sums of a 640² batch overflow.
    dtype = torch.promote_types(pred.dtype, torch.float32)
    return (pixel_loss * kept).sum(dtype=dtype) / kept.sum(dtype=dtype).clamp(min=1)


def balanced_boundary_bce(pred: Tensor, target: Tensor) -> Tensor:
    r"""Class-balanced BCE of boundary logits, averaged over all pixels (PIDNet's boundary loss).

    With :math:`P` boundary pixels (target 1) and :math:`N` others (target 0), positives are weighted
    :math:`N / (P + N)` and negatives :math:`P / (P + N)`; any other target value weighs 0. The mean
    runs over every element.

    Args:
        pred: boundary logits ``(B, 1, H, W)`` (or any shape matching ``target`` after squeezing).
        target: ``(B, H, W)`` (or ``pred``'s shape) in ``{0, 1}``.

    Example:
        >>> pred = torch.zeros(1, 1, 1, 4)
        >>> balanced_boundary_bce(pred, torch.tensor([[[1, 0, 0, 0]]]))  # weights 3/4, 1/4 ×3: mean 1.5/4 · log 2
        tensor(0.2599)
    """
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    check_floating(pred, "pred")
    if pred.ndim == target.ndim + 1 and pred.shape[1] == 1:
        pred = pred.squeeze(1)
    if pred.shape != target.shape:
        raise ValueError(
            f"`pred` {tuple(pred.shape)} and `target` {tuple(target.shape)} must match (pred may have a channel of 1)"
        )
    # Counts, weights and the mean in (at least) float32: a 640² fp16 batch has more pixels than fp16 holds.
    positive = target == 1
    negative = target == 0
    dtype = torch.promote_types(pred.dtype, torch.float32)
    num_pos = positive.sum(dtype=dtype)
    num_neg = negative.sum(dtype=dtype)
    total = (num_pos + num_neg).clamp(min=1)
    weight = positive * (num_neg / total) + negative * (num_pos / total)
    return F.binary_cross_entropy_with_logits(pred.to(dtype), target.to(dtype), weight=weight, reduction="mean")


def boundary_from_mask(target: Tensor, ignore_index: int = 255, kernel_size: int = 3) -> Tensor:
    """Boundary map of a label mask: valid pixels whose ``k × k`` neighbourhood holds another valid class.

    Args:
        target: ``(B, H, W)`` int64 labels.
        ignore_index: label that is neither a class nor a boundary.
        kernel_size: odd neighbourhood size.

    Returns:
        ``(B, H, W)`` float in ``{0, 1}``.

    Example:
        >>> boundary_from_mask(torch.tensor([[[0, 0, 1, 1]]]))
        tensor([[[0., 1., 1., 0.]]])
    """
    check_tensor(target, "target")
    check_ndim(target, (3,), "target", "a label mask of shape (B, H, W)")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` must be a positive odd int, got {kernel_size}")
    valid = target != ignore_index
    labels = target.float()
    pad = kernel_size // 2
    high = torch.where(valid, labels, -1.0).unsqueeze(1)
    low = torch.where(valid, -labels, -float(2**24)).unsqueeze(1)
    neighbour_max = F.max_pool2d(high, kernel_size, stride=1, padding=pad).squeeze(1)
    neighbour_min = -F.max_pool2d(low, kernel_size, stride=1, padding=pad).squeeze(1)
    return (valid & ((neighbour_max > labels) | (neighbour_min < labels))).float()

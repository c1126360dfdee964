"""Varifocal loss: an IoU-aware binary cross-entropy whose negatives are down-weighted focal-style."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_losses.functional.reduction import weight_reduce_loss
from lightning_losses.functional.validation import check_floating, check_same_shape, check_tensor, check_weight

__all__ = ["varifocal_loss"]


def _check_number(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")


def varifocal_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
    detach_focal_weight: bool = False,
) -> Tensor:
    r"""Varifocal loss of logits against IoU-aware soft targets (MMDetection 3.x semantics).

    .. math::
        \ell = \mathrm{BCE}(x, q)\cdot\begin{cases}
            q \ (\text{or } 1 \text{ without } iou\_weighted) & q > 0 \\
            \alpha\, |\sigma(x) - q|^{\gamma} & q \le 0
        \end{cases}

    with :math:`q` the target score (the IoU of the predicted box with its ground truth on the object's class
    column, 0 elsewhere). Positives are weighted by their own target score, negatives focal-style by
    :math:`\alpha\,\sigma(x)^\gamma`. The binary cross-entropy is taken from logits and every element is computed
    in float32 (half-precision inputs are upcast), so the loss is safe under autocast and for logits of
    :math:`\pm 10^4`; the result is float32 for half-precision inputs.

    Args:
        pred: logits, any shape (typically ``(N, C)``).
        target: soft targets in ``[0, 1]`` of ``pred``'s shape.
        weight: element-wise weight broadcastable to ``pred``.
        alpha: weight :math:`\alpha \ge 0` of the negatives.
        gamma: focusing exponent :math:`\gamma \ge 0` of the negatives.
        iou_weighted: weight positives by their target score (else by 1).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of the element count.
        detach_focal_weight: take the factor above as a constant (no gradient through :math:`\sigma(x)` in it), as
            RT-DETR's criterion does; MMDetection 3.x keeps that gradient (``False``).

    Returns:
        The loss reduced as asked; ``pred``'s shape for ``"none"``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0]])
        >>> varifocal_loss(pred, torch.tensor([[0.5, 0.0]]), reduction="sum")  # 0.5·log2 + 0.75·0.25·log2
        tensor(0.4765)

    Reference: Zhang et al., *VarifocalNet: An IoU-aware Dense Object Detector*, CVPR 2021, arXiv:2008.13367.
    """
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    check_floating(pred, "pred")
    check_same_shape(pred, target)
    check_weight(weight, pred.shape)
    _check_number(alpha, "alpha")
    _check_number(gamma, "gamma")
    logits = pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred
    score = target.to(logits.dtype)
    positive = score > 0
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal_weight):
        negative_weight = alpha * (logits.sigmoid() - score).abs().pow(gamma)
        focal_weight = torch.where(positive, score if iou_weighted else torch.ones_like(score), negative_weight)
    loss = F.binary_cross_entropy_with_logits(logits, score, reduction="none") * focal_weight
    if weight is not None:
        weight = weight.to(logits.dtype)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)

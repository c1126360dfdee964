"""Element-wise regression losses: L1, smooth L1, MSE and balanced L1."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_losses.functional.reduction import weight_reduce_loss
from lightning_losses.functional.validation import check_floating, check_same_shape, check_tensor

__all__ = ["balanced_l1_loss", "l1_loss", "mse_loss", "smooth_l1_loss"]


def _diff(pred: Tensor, target: Tensor) -> Tensor:
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    check_floating(pred, "pred")
    check_same_shape(pred, target)
    return pred - target.to(pred.dtype)


def l1_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""L1 loss :math:`\ell = |x - y|`.

    Args:
        pred: predictions of any shape.
        target: targets of ``pred``'s shape.
        weight: element-wise weight broadcastable to ``pred``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of the element count.

    Example:
        >>> l1_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
        tensor(1.5000)
    """
    return weight_reduce_loss(_diff(pred, target).abs(), weight, reduction, avg_factor)


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    beta: float = 1.0,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Smooth L1 (Huber) loss.

    .. math::
        \ell = \begin{cases} 0.5\, d^2 / \beta & d < \beta \\ d - 0.5\, \beta & \text{otherwise} \end{cases},
        \quad d = |x - y|

    Args:
        pred: predictions of any shape.
        target: targets of ``pred``'s shape.
        weight: element-wise weight broadcastable to ``pred``.
        beta: transition point :math:`\beta > 0` between the quadratic and linear parts.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of the element count.

    Example:
        >>> smooth_l1_loss(torch.tensor([0.5, 3.0]), torch.zeros(2), reduction="none")
        tensor([0.1250, 2.5000])

    Reference: Girshick, *Fast R-CNN*, ICCV 2015.
    """
    if not beta > 0:
        raise ValueError(f"`beta` must be > 0, got {beta}")
    diff = _diff(pred, target).abs()
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def mse_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Squared error :math:`\ell = (x - y)^2`.

    Args:
        pred: predictions of any shape.
        target: targets of ``pred``'s shape.
        weight: element-wise weight broadcastable to ``pred``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of the element count.

    Example:
        >>> mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
        tensor(2.5000)
    """
    diff = _diff(pred, target)
    return weight_reduce_loss(diff * diff, weight, reduction, avg_factor)


def balanced_l1_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Balanced L1 loss (Libra R-CNN).

    .. math::
        \ell = \begin{cases}
            \frac{\alpha}{b}(b d + 1)\log\!\left(\frac{b d}{\beta} + 1\right) - \alpha d & d < \beta \\
            \gamma d + \frac{\gamma}{b} - \alpha \beta & \text{otherwise}
        \end{cases}, \quad b = e^{\gamma / \alpha} - 1,\; d = |x - y|

    Args:
        pred: predictions of any shape.
        target: targets of ``pred``'s shape.
        weight: element-wise weight broadcastable to ``pred``.
        alpha: :math:`\alpha`, scales the loss of inliers.
        gamma: :math:`\gamma`, the gradient bound of outliers.
        beta: :math:`\beta > 0`, the inlier / outlier boundary.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of the element count.

    Example:
        >>> balanced_l1_loss(torch.tensor([0.0, 2.0]), torch.zeros(2), reduction="none")
        tensor([0.0000, 2.5786])

    Reference: Pang et al., *Libra R-CNN: Towards Balanced Learning for Object Detection*, CVPR 2019.
    """
    if not beta > 0:
        raise ValueError(f"`beta` must be > 0, got {beta}")
    if not alpha > 0:
        raise ValueError(f"`alpha` must be > 0, got {alpha}")
    diff = _diff(pred, target).abs()
    b = math.exp(gamma / alpha) - 1
    # The log branch sees diff clamped to beta: where it is not taken, a large diff (past float16's range
    # once multiplied by b) would overflow it and turn the masked gradient into NaN.
    small = diff.clamp(max=beta)
    loss = torch.where(
        diff < beta,
        alpha / b * (b * small + 1) * torch.log(b * small / beta + 1) - alpha * small,
        gamma * diff + gamma / b - alpha * beta,
    )
    return weight_reduce_loss(loss, weight, reduction, avg_factor)

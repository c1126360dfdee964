"""The one weighting and reduction rule every loss in the package shares."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_losses.functional._checks import check_weight

__all__ = ["REDUCTIONS", "check_reduction", "reduce_loss", "reduction_divisor", "weight_reduce_loss"]

REDUCTIONS = ("none", "mean", "sum")
_EPS = torch.finfo(torch.float32).eps


def check_reduction(reduction: str, name: str = "reduction") -> str:
    """Return ``reduction`` if it is one of ``none``, ``mean``, ``sum``; raise ``ValueError`` otherwise."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"`{name}` must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Reduce an element-wise loss by ``none``, ``mean`` or ``sum``.

    The mean of an empty tensor is 0 (with a graph to ``loss``), not NaN, so a batch without any
    element to score contributes nothing instead of poisoning the step.

    Example:
        >>> reduce_loss(torch.tensor([1.0, 2.0, 6.0]), "mean")
        tensor(3.)
        >>> reduce_loss(torch.zeros(0), "mean")
        tensor(0.)
    """
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum()
    raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")


def _check_avg_factor(avg_factor: float | Tensor) -> None:
    if isinstance(avg_factor, Tensor):
        if avg_factor.numel() != 1:
            raise ValueError(f"`avg_factor` must be a scalar, got a tensor of shape {tuple(avg_factor.shape)}")
        # A tensor normaliser stays on its device: checking its value would be a host sync.
        return
    if not isinstance(avg_factor, (int, float)) or isinstance(avg_factor, bool):
        raise TypeError(f"`avg_factor` must be a number or a scalar tensor, got {type(avg_factor).__name__}")
    if not math.isfinite(avg_factor) or avg_factor < 0:
        raise ValueError(f"`avg_factor` must be finite and >= 0, got {avg_factor}")


def weight_reduce_loss(
    loss: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Multiply an element-wise loss by ``weight`` and reduce it.

    .. math::
        \ell = \begin{cases}
            w \odot l & \text{none} \\
            \sum_i w_i l_i & \text{sum} \\
            \frac{1}{n} \sum_i w_i l_i & \text{mean, no avg\_factor} \\
            \frac{1}{\text{avg\_factor} + \epsilon} \sum_i w_i l_i & \text{mean with avg\_factor}
        \end{cases}

    with :math:`\epsilon` the float32 machine epsilon and :math:`n` the number of elements of
    ``loss`` (not the sum of the weights). This is the rule of the visdet / MMDetection losses.

    Args:
        loss: element-wise loss.
        weight: multiplies ``loss`` element-wise; must broadcast to ``loss``'s shape.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: replaces the element count of ``mean``; a number or a scalar tensor. With
            ``"none"`` it is ignored, with ``"sum"`` it is an error.

    Returns:
        The weighted loss, reduced as asked.

    Example:
        >>> loss = torch.tensor([1.0, 2.0, 3.0])
        >>> weight_reduce_loss(loss, torch.tensor([1.0, 0.0, 1.0]), "mean")
        tensor(1.3333)
        >>> weight_reduce_loss(loss, reduction="mean", avg_factor=2.0)
        tensor(3.)
    """
    divisor = reduction_divisor(loss.numel(), reduction, avg_factor)
    if weight is not None:
        check_weight(weight, loss.shape)
        loss = loss * weight
    if divisor is None:
        return loss
    return loss.sum() / divisor


def reduction_divisor(numel: int, reduction: str, avg_factor: float | Tensor | None = None) -> float | Tensor | None:
    """What the weighted sum is divided by: the rule of :func:`weight_reduce_loss` in one place.

    ``None`` for ``"none"``, 1 for ``"sum"``, ``max(numel, 1)`` for ``"mean"`` and ``avg_factor + eps`` for
    ``"mean"`` with an ``avg_factor``. Fused losses that reduce inside their kernel call this too.

    Example:
        >>> reduction_divisor(8, "mean"), reduction_divisor(8, "mean", avg_factor=2.0) == 2.0 + _EPS
        (8, True)
    """
    check_reduction(reduction)
    if avg_factor is None:
        return {"none": None, "sum": 1, "mean": max(numel, 1)}[reduction]
    _check_avg_factor(avg_factor)
    if reduction == "sum":
        raise ValueError('`avg_factor` cannot be used with reduction="sum"')
    if reduction == "none":
        return None
    return avg_factor + _EPS

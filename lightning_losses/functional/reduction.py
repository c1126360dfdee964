"""The one weighting and reduction rule every loss in the package shares, and MMDetection's zero-weight rule
for box losses."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_losses.functional.validation import check_weight

__all__ = [
    "REDUCTIONS",
    "accumulation_dtype",
    "check_reduction",
    "has_positive_weight",
    "reduce_loss",
    "reduction_divisor",
    "weight_reduce_loss",
    "zero_weight_grad",
    "zero_weight_select",
    "zero_weight_shortcut",
    "zero_weight_value",
]

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
    element to score contributes nothing instead of poisoning the step. Sums accumulate in at least
    float32 (:func:`accumulation_dtype`): a half-precision loss reduces to float32.

    Example:
        >>> reduce_loss(torch.tensor([1.0, 2.0, 6.0]), "mean")
        tensor(3.)
        >>> reduce_loss(torch.zeros(0), "mean")
        tensor(0.)
    """
    if reduction == "none":
        return loss
    dtype = accumulation_dtype(loss.dtype)
    if reduction == "sum":
        return loss.sum(dtype=dtype)
    if reduction == "mean":
        return loss.mean(dtype=dtype) if loss.numel() > 0 else loss.sum(dtype=dtype)
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
    ``loss`` (not the sum of the weights). This is the rule of MMDetection 3.x's losses. The sum
    accumulates in at least float32 (:func:`accumulation_dtype`), so a half-precision loss reduces to a
    float32 value instead of overflowing past 65,504; float64 stays float64.

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
    return loss.sum(dtype=accumulation_dtype(loss.dtype)) / divisor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and counts accumulate in: at least float32 (float16 overflows past 65,504), float64 stays.

    Example:
        >>> accumulation_dtype(torch.float16), accumulation_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)


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
    if isinstance(avg_factor, Tensor) and not avg_factor.is_floating_point():
        avg_factor = avg_factor.float()  # a count: float32, whatever the default dtype (bf16-true)
    return avg_factor + _EPS


# MMDetection's zero-weight rule. Its box losses (L1, smooth L1, IoU family) return ``(pred * weight).sum()``
# instead of the loss when ``weight`` has no positive entry, before ``loss_weight`` is applied; that value
# (zero for non-negative weights) keeps a graph to ``pred``. The functions below are the rule's only
# implementation: the plain path calls zero_weight_shortcut, the fused row kernels call the pieces.


def has_positive_weight(weight: Tensor) -> Tensor:
    """Whether ``weight`` has a positive entry: a 0-dim bool tensor on ``weight``'s device (no host read)."""
    return (weight > 0).any()


def zero_weight_value(pred: Tensor, weight: Tensor) -> Tensor:
    r"""The rule's value :math:`\sum_i w_i \sum_k \mathrm{pred}_{ik}`, that is ``(pred * weight).sum()``.

    A per-row ``weight`` (one dim fewer than ``pred``) multiplies the row sums, so no ``pred``-sized
    temporary is made; any other ``weight`` broadcasts against ``pred``.

    Example:
        >>> zero_weight_value(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0.0, -1.0]))
        tensor(-7.)
    """
    if pred.dim() == weight.dim() + 1:
        return (pred.sum(-1) * weight).sum()
    return (pred * weight).sum()


def zero_weight_select(loss: Tensor, value: Tensor, has_positive: Tensor) -> Tensor:
    """``loss`` where ``has_positive``, else the rule's ``value``.

    For a scalar ``loss`` the choice is made on the device (no host sync). For an element-wise loss
    (``reduction="none"``) the result's shape depends on it, so one boolean is read back, as MMDetection 3.x
    does.
    """
    if loss.ndim == 0:
        return torch.where(has_positive, loss, value.to(loss.dtype))
    return loss if bool(has_positive) else value


def zero_weight_shortcut(loss: Tensor, pred: Tensor, weight: Tensor | None) -> Tensor:
    """MMDetection's box-loss rule: when ``weight`` has no positive entry, return ``(pred * weight).sum()``.

    That value is a 0-dim zero (for non-negative weights) that carries a graph to ``pred`` and skips
    ``loss_weight``. For a scalar ``loss`` the choice is made on the device (no host sync); for an
    element-wise loss (``reduction="none"``) the result's shape depends on it, so one boolean is read
    back, as the reference does.

    Example:
        >>> pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> zero_weight_shortcut(torch.tensor(5.0), pred, torch.tensor([0.0, 0.0]))
        tensor(0.)
        >>> zero_weight_shortcut(torch.tensor(5.0), pred, torch.tensor([0.0, 1.0]))
        tensor(5.)
    """
    if weight is None:
        return loss
    return zero_weight_select(loss, zero_weight_value(pred, weight), has_positive_weight(weight))


def zero_weight_grad(grad: Tensor, has_positive: Tensor, upstream: Tensor, weight: Tensor) -> Tensor:
    """Backward of the rule's scalar choice for rows of ``pred``: the loss's ``grad`` where ``has_positive``,
    else the gradient of :func:`zero_weight_value`, ``upstream · w_i`` on every element of row ``i``.

    Args:
        grad: ``(N, ...)`` gradient of the loss with respect to ``pred``.
        has_positive: 0-dim bool, from :func:`has_positive_weight`.
        upstream: the incoming gradient, a scalar or ``(N,)``.
        weight: ``(N,)`` per-row weight.
    """
    value_grad = (upstream * weight).reshape(weight.shape + (1,) * (grad.dim() - weight.dim()))
    return torch.where(has_positive, grad, value_grad.expand_as(grad))

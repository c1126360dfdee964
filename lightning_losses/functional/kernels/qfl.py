r"""Quality focal loss (GFL) per element and its closed-form gradient; a sample's loss is its row's sum.

.. math::
    \ell_{i,c} = \begin{cases}
        \mathrm{BCE}(x_{i,c}, s_i)\,|s_i - \sigma(x_{i,c})|^\beta & c = y_i \\
        \mathrm{BCE}(x_{i,c}, 0)\,\sigma(x_{i,c})^\beta & \text{otherwise}
    \end{cases}, \qquad \mathrm{BCE}(x, s) = \log(1 + e^x) - x s

Positives come from class labels with one score per row, or from a dense soft target (its non-zero
entries). These are the kernels of
:func:`~lightning_losses.functional.kernels.elementwise.fused_quality_focal_loss`; inputs are trusted.

Reference: Li et al., *Generalized Focal Loss*, NeurIPS 2020 (arXiv:2006.04388).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_losses.functional.kernels.sigmoid import class_mask, power, sigmoid_softplus

__all__ = ["qfl", "qfl_grad"]


def _positives(x: Tensor, labels: Tensor | None, scores: Tensor | None, target: Tensor | None) -> tuple[Tensor, Tensor]:
    """Positive mask and per-element score: from ``labels`` / ``scores`` or a soft target (non-zero = positive)."""
    if labels is not None:
        return class_mask(labels, x), scores.to(x.dtype)[:, None]
    return target != 0, target


def qfl(x: Tensor, labels: Tensor | None, scores: Tensor | None, target: Tensor | None, beta: float) -> Tensor:
    r"""QFL per element of the ``(N, C)`` logits ``x``.

    Args:
        x: ``(N, C)`` logits.
        labels: ``(N,)`` classes (outside ``[0, C)``: no positive), with ``scores`` ``(N,)``; or ``None``.
        scores: the quality target of each row's label.
        target: ``(N, C)`` soft target instead of ``labels`` / ``scores``.
        beta: modulating exponent.

    Example:
        >>> qfl(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([0.5]), None, 2.0)  # log2·0, log2·0.25
        tensor([[0.0000, 0.1733]])
    """
    positive, score = _positives(x, labels, scores, target)
    p, softplus = sigmoid_softplus(x)
    negative = softplus * power(p, beta)
    positive_loss = (softplus - x * score) * power((score - p).abs(), beta)
    return torch.where(positive, positive_loss, negative)


def qfl_grad(x: Tensor, labels: Tensor | None, scores: Tensor | None, target: Tensor | None, beta: float) -> Tensor:
    r"""Gradient of :func:`qfl` per element, with :math:`d = \sigma - s`.

    .. math::
        \text{neg: } \sigma^\beta(\sigma + \beta (1 - \sigma)\log(1 + e^x)), \quad
        \text{pos: } d|d|^\beta + \beta\,\mathrm{BCE}\,\mathrm{sign}(d)|d|^{\beta - 1}\sigma(1 - \sigma)
    """
    positive, score = _positives(x, labels, scores, target)
    p, softplus = sigmoid_softplus(x)
    negative = power(p, beta) * (p + beta * (1 - p) * softplus)
    d = p - score
    if beta == 2.0:
        modulated = 2 * d
    else:
        modulated = beta * torch.sign(d) * d.abs().clamp(min=torch.finfo(d.dtype).tiny).pow(beta - 1)
    positive_grad = d * power(d.abs(), beta) + (softplus - x * score) * modulated * p * (1 - p)
    return torch.where(positive, positive_grad, negative)

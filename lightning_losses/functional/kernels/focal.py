r"""Sigmoid focal loss per element and its closed-form gradient, for class labels and for dense targets.

Both forms write the loss through :math:`z`, the logit signed towards the wrong answer, so that
:math:`\sigma(z) = 1 - p_t` and :math:`\log(1 + e^z) = -\log p_t` (the binary cross-entropy):

.. math::
    \ell = \alpha_t\,(1 - p_t)^\gamma\,(-\log p_t), \qquad
    \alpha_t = \alpha t + (1 - \alpha)(1 - t)

``alpha=None`` drops :math:`\alpha_t`. These are the kernels of
:func:`~lightning_losses.functional.kernels.elementwise.fused_sigmoid_focal_loss`; inputs are trusted.

Reference: Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017 (arXiv:1708.02002).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_losses.functional.kernels.sigmoid import class_mask, power, sigmoid_softplus

__all__ = ["focal_dense", "focal_dense_grad", "focal_labels", "focal_labels_grad"]


def _balance(positive: Tensor, alpha: float | None, negate_positive: bool = False) -> Tensor | float:
    r""":math:`\alpha_t`: ``alpha`` at positives and ``1 - alpha`` elsewhere (``-alpha`` at positives if asked)."""
    if alpha is None:
        return torch.where(positive, -1.0, 1.0) if negate_positive else 1.0
    return torch.where(positive, -alpha if negate_positive else alpha, 1 - alpha)


def focal_labels(x: Tensor, labels: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Binary targets from class labels: with :math:`z = (1 - 2t)\,x`,
    :math:`\ell = \alpha_t\,\sigma(z)^\gamma \log(1 + e^z)`.

    Args:
        x: ``(N, C)`` logits.
        labels: ``(N,)`` classes; outside ``[0, C)`` a row has no positive.
        gamma: focusing parameter.
        alpha: positive balance, or ``None``.

    Example:
        >>> focal_labels(torch.zeros(1, 2), torch.tensor([0]), 2.0, 0.25)  # 0.25·0.25·log2, 0.75·0.25·log2
        tensor([[0.0433, 0.1300]])
    """
    positive = class_mask(labels, x)
    q, softplus = sigmoid_softplus(torch.where(positive, -x, x))
    return power(q, gamma) * softplus * _balance(positive, alpha)


def focal_labels_grad(x: Tensor, labels: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Gradient of :func:`focal_labels` with respect to ``x``.

    .. math::
        \partial\ell/\partial x = (1 - 2t)\,\alpha_t\,\sigma(z)^\gamma
        [\gamma (1 - \sigma(z)) \log(1 + e^z) + \sigma(z)]
    """
    positive = class_mask(labels, x)
    q, softplus = sigmoid_softplus(torch.where(positive, -x, x))
    inner = q if gamma == 0.0 else gamma * (1 - q) * softplus + q
    return power(q, gamma) * inner * _balance(positive, alpha, negate_positive=True)


def _dense_balance(t: Tensor, alpha: float | None) -> Tensor | float:
    return 1.0 if alpha is None else (1 - alpha) + (2 * alpha - 1) * t


def focal_dense(x: Tensor, t: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Soft targets :math:`t \in [0, 1]`: :math:`q = \sigma + t(1 - 2\sigma)` (the soft :math:`1 - p_t`),
    :math:`\ell = \alpha_t\,q^\gamma (\log(1 + e^x) - x t)`.

    Example:
        >>> focal_dense(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), 2.0, 0.25)
        tensor([[0.0433, 0.1300]])
    """
    p, softplus = sigmoid_softplus(x)
    q = p + t * (1 - 2 * p)
    return power(q, gamma) * (softplus - x * t) * _dense_balance(t, alpha)


def focal_dense_grad(x: Tensor, t: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Gradient of :func:`focal_dense` with respect to ``x``.

    .. math::
        \partial\ell/\partial x =
        \alpha_t[\gamma q^{\gamma-1}(1 - 2t)\sigma(1 - \sigma)\mathrm{BCE} + q^\gamma(\sigma - t)]
    """
    p, softplus = sigmoid_softplus(x)
    q = p + t * (1 - 2 * p)
    grad = power(q, gamma) * (p - t)
    if gamma != 0.0:
        q_pow = q if gamma == 2.0 else q.clamp(min=torch.finfo(q.dtype).tiny).pow(gamma - 1)
        grad = grad + gamma * q_pow * (1 - 2 * t) * p * (1 - p) * (softplus - x * t)
    return grad * _dense_balance(t, alpha)

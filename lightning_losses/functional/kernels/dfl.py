r"""Distribution focal loss (GFL) per row and its closed-form gradient.

With :math:`y_l = \lfloor y \rfloor`, :math:`y_r = y_l + 1` (clamped to the last bin), :math:`w_l = y_r - y`,
:math:`w_r = y - y_l` and :math:`\mathrm{lse}(x) = \log \sum_j e^{x_j}`:

.. math::
    \ell = w_l(\mathrm{lse}(x) - x_{y_l}) + w_r(\mathrm{lse}(x) - x_{y_r})

The forward also returns :math:`\mathrm{lse}(x)`, which the gradient reuses (one pass, no reduction).
These are the kernels :func:`~lightning_losses.functional.distribution_focal_loss` hands to
:func:`~lightning_losses.functional.kernels.rows.fused_rowwise_loss`; inputs are trusted.

Reference: Li et al., *Generalized Focal Loss*, NeurIPS 2020 (arXiv:2006.04388).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dfl", "dfl_grad"]


def _bins(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The two bins around each target (the right one clamped to the last bin) and their weights."""
    left = target.long()
    weight_left = (left + 1).to(pred.dtype) - target
    weight_right = target - left.to(pred.dtype)
    right = (left + 1).clamp(max=pred.shape[1] - 1)
    return left[:, None], right[:, None], weight_left, weight_right


def dfl(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    r"""The loss of each row of the ``(N, n+1)`` bin logits at the ``(N,)`` targets in ``[0, n]``, and
    :math:`\mathrm{lse}(x)` per row.

    Example:
        >>> dfl(torch.zeros(1, 5), torch.tensor([4.0]))  # log 5 and log 5
        (tensor([1.6094]), tensor([1.6094]))
    """
    left, right, weight_left, weight_right = _bins(pred, target)
    lse = torch.logsumexp(pred, dim=1)
    left_term = (lse - pred.gather(1, left).squeeze(1)) * weight_left
    return left_term + (lse - pred.gather(1, right).squeeze(1)) * weight_right, lse


def dfl_grad(pred: Tensor, target: Tensor, grad_out: Tensor, lse: Tensor) -> Tensor:
    r"""``grad_out`` ``(N,)`` times the gradient of :func:`dfl`, given the forward's :math:`\mathrm{lse}(x)`:
    :math:`g\,((w_l + w_r)\,e^{x - \mathrm{lse}(x)} - w_l e_{y_l} - w_r e_{y_r})`."""
    left, right, weight_left, weight_right = _bins(pred, target)
    bins = torch.arange(pred.shape[1], device=pred.device)
    onehots = (bins == left) * weight_left[:, None] + (bins == right) * weight_right[:, None]
    softmax = torch.exp(pred - lse[:, None]) * (weight_left + weight_right)[:, None]
    return (softmax - onehots) * grad_out[:, None]

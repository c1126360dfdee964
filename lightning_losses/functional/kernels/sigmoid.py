r"""Pieces the sigmoid kernels share: :math:`\sigma(z)` with :math:`\log(1 + e^z)` from one exponential, small
integer powers without ``pow``, and the one-hot class mask built from labels."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_mask", "power", "sigmoid_softplus"]


def sigmoid_softplus(z: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`\sigma(z)` and :math:`\log(1 + e^z)` from one exponential :math:`e = e^{-|z|}`, both stable.

    Example:
        >>> sigmoid_softplus(torch.tensor([0.0, 100.0]))
        (tensor([0.5000, 1.0000]), tensor([  0.6931, 100.0000]))
    """
    e = torch.exp(-z.abs())
    r = 1 / (1 + e)
    return torch.where(z >= 0, r, e * r), z.clamp(min=0) + torch.log1p(e)


def power(q: Tensor, exponent: float) -> Tensor:
    """``q ** exponent``, with the exponents 0, 1 and 2 as plain products (``0 ** 0 = 1``)."""
    if exponent == 2.0:
        return q * q
    if exponent == 1.0:
        return q
    if exponent == 0.0:
        return torch.ones_like(q)
    return q.pow(exponent)


def class_mask(labels: Tensor, x: Tensor) -> Tensor:
    """The one-hot rows of ``labels`` ``(N,)`` as a mask over ``x``'s classes ``(N, C)``; labels outside
    ``[0, C)`` (the background ``C``, an ignored ``-1``) give an all-false row."""
    return labels[:, None] == torch.arange(x.shape[-1], device=x.device)

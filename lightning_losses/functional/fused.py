"""Fused, low-memory kernels: autograd Functions with closed-form backward that save only their inputs.

The textbook focal loss keeps every intermediate (``σ(x)``, the BCE, ``1 - p_t``, its power, the
balance, the product) alive for backward: about eight ``N × C`` tensors. These Functions save the
logits and the (label or dense) target, recompute what backward needs chunk by chunk, build one-hot
rows from class labels on the fly and can fold the weighting and reduction into the same pass, so the
extra peak memory is the gradient plus one chunk of temporaries. Values equal the composite formula to
float32 round-off; half-precision inputs are computed in float32.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["fused_quality_focal_loss", "fused_sigmoid_focal_loss", "run_kernel"]

_CHUNK_ELEMENTS = 1 << 20  # bounds the temporaries; large enough that per-chunk overhead stays small
COMPILE_ENV = "LIGHTNING_LOSSES_COMPILE"
COMPILE_MIN_ELEMENTS = 1 << 21
_compiled: dict[Callable[..., Tensor], Callable[..., Tensor] | None] = {}


def run_kernel(fn: Callable[..., Tensor], numel: int, *args: Any, min_elements: int = COMPILE_MIN_ELEMENTS) -> Tensor:
    """Call a chunk kernel, through ``torch.compile`` when that pays off.

    ``LIGHTNING_LOSSES_COMPILE=1`` always compiles, ``0`` never; by default (``auto``) inputs of at
    least ``min_elements`` elements do, where one compilation (seconds) is repaid by fusing
    a kernel's dozen element-wise passes into one. Shapes start static and only the sizes that change
    between calls (the rows of a last chunk) become dynamic: the class or bin count stays a constant the
    compiler can vectorise over (measured 30–40 % faster per chunk than all-dynamic shapes). A failed
    compilation (no C++ compiler, an unsupported platform) warns once and the eager kernel runs from
    then on.
    """
    mode = os.environ.get(COMPILE_ENV, "auto")
    if mode == "0" or (mode != "1" and numel < min_elements) or torch.compiler.is_compiling():
        return fn(*args)
    compiled = _compiled.get(fn, fn)
    if compiled is fn:
        compiled = _compiled[fn] = torch.compile(fn, dynamic=None)
    if compiled is None:
        return fn(*args)
    try:
        return compiled(*args)
    except Exception as err:  # degrade to eager wherever the compiler is unavailable
        warnings.warn(
            f"torch.compile of {fn.__name__} failed ({type(err).__name__}); using eager kernels", stacklevel=2
        )
        _compiled[fn] = None
        return fn(*args)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point else dtype


def _chunk_rows(row_size: int, fraction: int = 1) -> int:
    """Rows per chunk: ``1/fraction`` of the chunk budget."""
    return max(1, _CHUNK_ELEMENTS // fraction // max(row_size, 1))


def _pow(q: Tensor, gamma: float) -> Tensor:
    if gamma == 2.0:
        return q * q
    if gamma == 1.0:
        return q
    if gamma == 0.0:
        return torch.ones_like(q)
    return q.pow(gamma)


def _label_sign(labels: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """For one-hot rows built from ``labels``: ``s = 1 - 2t`` (so ``z = s·x``) and the positive mask."""
    positive = labels[:, None] == torch.arange(x.shape[-1], device=x.device)
    return 1 - 2 * positive.to(x.dtype), positive


def _balance(t: Tensor, alpha: float | None) -> Tensor | None:
    return None if alpha is None else (1 - alpha) + (2 * alpha - 1) * t


def _focal_forward_labels(x: Tensor, labels: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Binary targets: with :math:`z = (1 - 2t)\,x`, :math:`\ell = w\,\sigma(z)^\gamma \log(1 + e^z)`."""
    sign, positive = _label_sign(labels, x)
    z = x * sign
    loss = _pow(torch.sigmoid(z), gamma) * torch.nn.functional.softplus(z)
    balance = _balance(positive.to(x.dtype), alpha)
    return loss if balance is None else loss * balance


def _focal_grad_labels(x: Tensor, labels: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Gradient of :func:`_focal_forward_labels`.

    .. math:: \partial\ell/\partial x = (1 - 2t)\,w\,\sigma(z)^\gamma [\gamma (1 - \sigma(z)) \log(1 + e^z) + \sigma(z)]
    """
    sign, positive = _label_sign(labels, x)
    z = x * sign
    q = torch.sigmoid(z)
    inner = q if gamma == 0.0 else gamma * (1 - q) * torch.nn.functional.softplus(z) + q
    grad = _pow(q, gamma) * inner * sign
    balance = _balance(positive.to(x.dtype), alpha)
    return grad if balance is None else grad * balance


def _focal_forward_dense(x: Tensor, t: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Soft targets: :math:`q = \sigma + t(1 - 2\sigma)`, :math:`\ell = w\,q^\gamma (\log(1 + e^x) - x t)`."""
    p = torch.sigmoid(x)
    q = p + t * (1 - 2 * p)
    loss = _pow(q, gamma) * (torch.nn.functional.softplus(x) - x * t)
    balance = _balance(t, alpha)
    return loss if balance is None else loss * balance


def _focal_grad_dense(x: Tensor, t: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Gradient of :func:`_focal_forward_dense`.

    .. math::
        \partial\ell/\partial x = w[\gamma q^{\gamma-1}(1 - 2t)\sigma(1 - \sigma)\mathrm{BCE} + q^\gamma(\sigma - t)]
    """
    p = torch.sigmoid(x)
    q = p + t * (1 - 2 * p)
    grad = _pow(q, gamma) * (p - t)
    if gamma != 0.0:
        bce = torch.nn.functional.softplus(x) - x * t
        q_pow = q if gamma == 2.0 else q.clamp(min=torch.finfo(q.dtype).tiny).pow(gamma - 1)
        grad = grad + gamma * q_pow * (1 - 2 * t) * p * (1 - p) * bce
    balance = _balance(t, alpha)
    return grad if balance is None else grad * balance


def _chunk_terms(
    fn_labels: Any,
    fn_dense: Any,
    pred: Tensor,
    target: Tensor | None,
    labels: Tensor | None,
    start: int,
    stop: int,
    dtype: torch.dtype,
    gamma: float,
    alpha: float | None,
) -> Tensor:
    x = pred[start:stop].to(dtype)
    if labels is not None:
        return run_kernel(fn_labels, pred.numel(), x, labels[start:stop], gamma, alpha)
    return run_kernel(fn_dense, pred.numel(), x, target[start:stop].to(dtype), gamma, alpha)


class _SigmoidFocal(torch.autograd.Function):
    """Sigmoid focal loss over ``(N, ...)`` logits, reduced (``divisor`` given) or element-wise."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        pred: Tensor,
        target: Tensor | None,
        labels: Tensor | None,
        weight: Tensor | None,
        divisor: float | Tensor | None,
        gamma: float,
        alpha: float | None,
    ) -> Tensor:
        dtype = _compute_dtype(pred.dtype)
        rows = pred.shape[0]
        step = _chunk_rows(pred[0].numel() if rows else 1)
        total = torch.zeros((), dtype=dtype, device=pred.device)
        out = None if divisor is not None else torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            loss = _chunk_terms(
                _focal_forward_labels, _focal_forward_dense, pred, target, labels, start, stop, dtype, gamma, alpha
            )
            if weight is not None:
                loss = loss * weight[start:stop]
            if out is None:
                total += loss.sum()
            else:
                out[start:stop] = loss
        ctx.save_for_backward(pred, target, labels, weight, divisor if isinstance(divisor, Tensor) else None)
        ctx.divisor = divisor
        ctx.gamma, ctx.alpha = gamma, alpha
        if out is not None:
            return out
        return total / divisor

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        pred, target, labels, weight, divisor_tensor = ctx.saved_tensors
        divisor = divisor_tensor if divisor_tensor is not None else ctx.divisor
        dtype = _compute_dtype(pred.dtype)
        grad = torch.empty_like(pred)
        rows = pred.shape[0]
        step = _chunk_rows(pred[0].numel() if rows else 1)
        scale = grad_out.to(dtype) / divisor if divisor is not None else None
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            g = _chunk_terms(
                _focal_grad_labels, _focal_grad_dense, pred, target, labels, start, stop, dtype, ctx.gamma, ctx.alpha
            )
            if weight is not None:
                g = g * weight[start:stop]
            g = g * (scale if scale is not None else grad_out[start:stop].to(dtype))
            grad[start:stop] = g
        return grad, None, None, None, None, None, None


def fused_sigmoid_focal_loss(
    pred: Tensor,
    target: Tensor | None,
    labels: Tensor | None,
    weight: Tensor | None,
    divisor: float | Tensor | None,
    gamma: float,
    alpha: float | None,
) -> Tensor:
    """Sigmoid focal loss from the fused kernel (see :func:`~lightning_losses.functional.sigmoid_focal_loss`).

    Args:
        pred: ``(N, ...)`` logits.
        target: dense target of ``pred``'s shape, or ``None`` with ``labels``.
        labels: ``(N,)`` class indices in ``[0, C]`` for ``(N, C)`` logits (``C`` = background).
        weight: element weight, broadcast to ``pred``'s shape.
        divisor: reduce to ``Σ w·ℓ / divisor`` (from :func:`reduction_divisor`); ``None`` returns ``w·ℓ``.
        gamma: focusing parameter.
        alpha: positive balance, or ``None``.
    """
    if weight is not None:
        weight = weight.expand(pred.shape)
    if divisor is not None and not isinstance(divisor, Tensor):
        divisor = float(divisor)
    return _SigmoidFocal.apply(pred, target, labels, weight, divisor, gamma, alpha)


def _qfl_positive(
    x: Tensor, labels: Tensor | None, scores: Tensor | None, target: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Positive mask and per-element score of a chunk: from ``labels`` / ``scores`` or a soft target."""
    if labels is not None:
        positive = labels[:, None] == torch.arange(x.shape[-1], device=x.device)
        return positive, scores.to(x.dtype)[:, None].expand_as(x)
    return target != 0, target


def _qfl_forward(x: Tensor, positive: Tensor, score: Tensor, beta: float) -> Tensor:
    r"""Per-sample QFL: :math:`\sum_c` of BCE to ``s`` times :math:`|s - \sigma|^\beta` (positives) or
    :math:`\sigma^\beta` (others), with :math:`\mathrm{BCE}(x, s) = \log(1 + e^x) - x s`."""
    p = torch.sigmoid(x)
    softplus = torch.nn.functional.softplus(x)
    negative = softplus * _pow(p, beta)
    positive_loss = (softplus - x * score) * _pow((score - p).abs(), beta)
    return torch.where(positive, positive_loss, negative).sum(dim=-1)


def _qfl_grad(x: Tensor, positive: Tensor, score: Tensor, beta: float) -> Tensor:
    r"""Gradient of :func:`_qfl_forward` per element (before the upstream per-sample factor).

    .. math::
        \text{neg: } \sigma^\beta(\sigma + \beta (1 - \sigma)\log(1 + e^x)), \quad
        \text{pos: } d|d|^\beta + \beta\,\mathrm{BCE}\,\mathrm{sign}(d)|d|^{\beta - 1}\sigma(1 - \sigma),
        \quad d = \sigma - s
    """
    p = torch.sigmoid(x)
    softplus = torch.nn.functional.softplus(x)
    negative = _pow(p, beta) * (p + beta * (1 - p) * softplus)
    d = p - score
    if beta == 2.0:
        modulated = 2 * d
    else:
        modulated = beta * torch.sign(d) * d.abs().clamp(min=torch.finfo(d.dtype).tiny).pow(beta - 1)
    positive_grad = d * _pow(d.abs(), beta) + (softplus - x * score) * modulated * p * (1 - p)
    return torch.where(positive, positive_grad, negative)


def _rows(tensors: tuple[Tensor | None, ...], start: int, stop: int, dtype: torch.dtype) -> list[Tensor | None]:
    """Rows ``start:stop`` of each tensor (floating ones in ``dtype``), ``None`` passed through."""
    out: list[Tensor | None] = []
    for t in tensors:
        if t is None:
            out.append(None)
        else:
            rows = t[start:stop]
            out.append(rows.to(dtype) if rows.is_floating_point() else rows)
    return out


class _QualityFocal(torch.autograd.Function):
    """Quality focal loss over ``(N, C)`` logits: per-sample values, or their weighted reduction."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        pred: Tensor,
        labels: Tensor | None,
        scores: Tensor | None,
        target: Tensor | None,
        weight: Tensor | None,
        divisor: float | Tensor | None,
        beta: float,
    ) -> Tensor:
        dtype = _compute_dtype(pred.dtype)
        rows = pred.shape[0]
        step = _chunk_rows(pred.shape[-1])
        total = torch.zeros((), dtype=dtype, device=pred.device)
        out = None if divisor is not None else torch.empty(rows, dtype=pred.dtype, device=pred.device)
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            x = pred[start:stop].to(dtype)
            positive, score = _qfl_positive(x, *_rows((labels, scores, target), start, stop, dtype))
            loss = run_kernel(_qfl_forward, pred.numel(), x, positive, score, beta)
            if weight is not None:
                loss = loss * weight[start:stop]
            if out is None:
                total += loss.sum()
            else:
                out[start:stop] = loss
        ctx.save_for_backward(pred, labels, scores, target, weight, divisor if isinstance(divisor, Tensor) else None)
        ctx.divisor, ctx.beta = divisor, beta
        return out if out is not None else total / divisor

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        pred, labels, scores, target, weight, divisor_tensor = ctx.saved_tensors
        divisor = divisor_tensor if divisor_tensor is not None else ctx.divisor
        dtype = _compute_dtype(pred.dtype)
        grad = torch.empty_like(pred)
        rows = pred.shape[0]
        step = _chunk_rows(pred.shape[-1])
        scale = grad_out.to(dtype) / divisor if divisor is not None else None
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            x = pred[start:stop].to(dtype)
            positive, score = _qfl_positive(x, *_rows((labels, scores, target), start, stop, dtype))
            g = run_kernel(_qfl_grad, pred.numel(), x, positive, score, ctx.beta)
            row = scale if scale is not None else grad_out[start:stop].to(dtype)[:, None]
            if weight is not None:
                row = row * weight[start:stop, None]
            grad[start:stop] = g * row
        return grad, None, None, None, None, None, None


def fused_quality_focal_loss(
    pred: Tensor,
    labels: Tensor | None,
    scores: Tensor | None,
    target: Tensor | None,
    weight: Tensor | None,
    divisor: float | Tensor | None,
    beta: float,
) -> Tensor:
    """Quality focal loss from the fused kernel (see :func:`~lightning_losses.functional.quality_focal_loss`).

    Args:
        pred: ``(N, C)`` logits.
        labels: ``(N,)`` classes in ``[0, C]`` (``C`` = background), with ``scores`` ``(N,)``; or ``None``.
        scores: quality targets of the ``labels``.
        target: ``(N, C)`` soft target (non-zero entries are the positives) instead of labels / scores.
        weight: ``(N,)`` per-sample weight.
        divisor: reduce to ``Σ w·ℓ / divisor``; ``None`` returns the ``(N,)`` per-sample losses.
        beta: modulating exponent.
    """
    if weight is not None:
        weight = weight.expand(pred.shape[:1])
    if divisor is not None and not isinstance(divisor, Tensor):
        divisor = float(divisor)
    return _QualityFocal.apply(pred, labels, scores, target, weight, divisor, beta)

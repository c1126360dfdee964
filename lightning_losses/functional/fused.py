"""Fused, low-memory kernels: autograd Functions with closed-form backward that save only their inputs.

The textbook focal loss keeps every intermediate (``σ(x)``, the BCE, ``1 - p_t``, its power, the
balance, the product) alive for backward: about eight ``N × C`` tensors. Here one autograd Function
(:class:`_ElementwiseLoss`) saves the logits and the (label or dense) target and runs three kernels:
the weighted sum of the loss (or the weighted loss written into its output), and the gradient written
straight into ``pred``'s gradient. One-hot rows are built from class labels inside the kernels, and
``σ(z)`` and ``log(1 + e^z)`` share one exponential. Compiled (:func:`run_kernel`), each kernel is one
pass over the inputs with no temporaries, so it runs on the whole input; eagerly it runs chunk by chunk,
so the extra peak memory is the gradient plus one chunk of temporaries. Values equal the composite
formula to float32 round-off; half-precision inputs are computed in float32.
"""

from __future__ import annotations

import functools
import os
import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["compiles", "fused_quality_focal_loss", "fused_sigmoid_focal_loss", "run_kernel"]

_CHUNK_ELEMENTS = 1 << 20  # bounds the eager temporaries; large enough that per-chunk overhead stays small
COMPILE_ENV = "LIGHTNING_LOSSES_COMPILE"
COMPILE_MIN_ELEMENTS = 1 << 21
_compiled: dict[Any, Callable[..., Any] | None] = {}
_FAILED = object()  # key present in ``_compiled`` once a compilation failed: every kernel runs eager since


def compiles(numel: int, min_elements: int = COMPILE_MIN_ELEMENTS) -> bool:
    """Whether :func:`run_kernel` sends an input of ``numel`` elements through ``torch.compile``."""
    mode = os.environ.get(COMPILE_ENV, "auto")
    if mode == "0" or (mode != "1" and numel < min_elements) or torch.compiler.is_compiling():
        return False
    return _FAILED not in _compiled


def run_kernel(fn: Callable[..., Any], numel: int, *args: Any, min_elements: int = COMPILE_MIN_ELEMENTS) -> Any:
    """Call a chunk kernel, through ``torch.compile`` when that pays off.

    ``LIGHTNING_LOSSES_COMPILE=1`` always compiles, ``0`` never; by default (``auto``) inputs of at
    least ``min_elements`` elements do, where one compilation (seconds) is repaid by fusing
    a kernel's dozen element-wise passes into one. Shapes start static and only the sizes that change
    between calls become dynamic: the class or bin count stays a constant the compiler can vectorise
    over (measured 30–40 % faster than all-dynamic shapes). A failed compilation (no C++ compiler, an
    unsupported platform) warns once and eager kernels run from then on.
    """
    if not compiles(numel, min_elements):
        return fn(*args)
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=None)
    try:
        return _compiled[fn](*args)
    except Exception as err:  # degrade to eager wherever the compiler is unavailable
        warnings.warn(
            f"torch.compile of {fn.__name__} failed ({type(err).__name__}); using eager kernels", stacklevel=2
        )
        _compiled[_FAILED] = None
        return fn(*args)


_kernels: dict[tuple[str, Callable[..., Any]], Callable[..., Any]] = {}


def cached_kernel(kind: str, fn: Callable[..., Any], kernel: Callable[..., Any]) -> Callable[..., Any]:
    """``kernel`` (a closure over ``fn``) as a function with a code object of its own, one per ``(kind, fn)``.

    Dynamo caches compilations per code object (8 at most): kernels that were all closures of one shared
    function would exhaust it and drop the later ones to eager.
    """
    key = (kind, fn)
    if key not in _kernels:
        name = f"{getattr(fn, '__name__', 'kernel')}_{kind}"
        code = kernel.__code__.replace(co_name=name)
        own = types.FunctionType(code, kernel.__globals__, name, kernel.__defaults__, kernel.__closure__)
        _kernels[key] = functools.update_wrapper(own, kernel, assigned=("__doc__", "__annotations__"))
    return _kernels[key]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point else dtype


def _rows_per_call(pred: Tensor, whole: bool, max_rows: int | None = None) -> int:
    """Rows per kernel call: all of them if ``whole`` (a compiled kernel that allocates no temporaries), else
    a chunk of ``_CHUNK_ELEMENTS`` elements (``max_rows`` rows at most)."""
    rows = pred.shape[0]
    if whole:
        return max(rows, 1)
    step = max(1, _CHUNK_ELEMENTS // max(pred[0].numel() if rows else 1, 1))
    return step if max_rows is None else min(step, max_rows)


def _to_compute(t: Tensor) -> Tensor:
    return t.to(_compute_dtype(t.dtype)) if t.is_floating_point() else t


def _pow(q: Tensor, gamma: float) -> Tensor:
    if gamma == 2.0:
        return q * q
    if gamma == 1.0:
        return q
    if gamma == 0.0:
        return torch.ones_like(q)
    return q.pow(gamma)


def _sigmoid_softplus(z: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`\sigma(z)` and :math:`\log(1 + e^z)` from one exponential :math:`e = e^{-|z|}`, both stable."""
    e = torch.exp(-z.abs())
    r = 1 / (1 + e)
    return torch.where(z >= 0, r, e * r), z.clamp(min=0) + torch.log1p(e)


def _positive(labels: Tensor, x: Tensor) -> Tensor:
    """The one-hot rows of ``labels`` as a mask over ``x``'s classes (labels outside ``[0, C)`` give none)."""
    return labels[:, None] == torch.arange(x.shape[-1], device=x.device)


def _balance(positive: Tensor, alpha: float | None, negate_positive: bool = False) -> Tensor | float:
    r""":math:`\alpha_t`: ``alpha`` at positives and ``1 - alpha`` elsewhere (``-alpha`` at positives if asked)."""
    if alpha is None:
        return torch.where(positive, -1.0, 1.0) if negate_positive else 1.0
    return torch.where(positive, -alpha if negate_positive else alpha, 1 - alpha)


def _focal_labels(x: Tensor, labels: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Binary targets: with :math:`z = (1 - 2t)\,x`, :math:`\ell = \alpha_t\,\sigma(z)^\gamma \log(1 + e^z)`."""
    positive = _positive(labels, x)
    q, softplus = _sigmoid_softplus(torch.where(positive, -x, x))
    return _pow(q, gamma) * softplus * _balance(positive, alpha)


def _focal_labels_grad(x: Tensor, labels: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Gradient of :func:`_focal_labels`.

    .. math::
        \partial\ell/\partial x = (1 - 2t)\,\alpha_t\,\sigma(z)^\gamma
        [\gamma (1 - \sigma(z)) \log(1 + e^z) + \sigma(z)]
    """
    positive = _positive(labels, x)
    q, softplus = _sigmoid_softplus(torch.where(positive, -x, x))
    inner = q if gamma == 0.0 else gamma * (1 - q) * softplus + q
    return _pow(q, gamma) * inner * _balance(positive, alpha, negate_positive=True)


def _dense_balance(t: Tensor, alpha: float | None) -> Tensor | float:
    return 1.0 if alpha is None else (1 - alpha) + (2 * alpha - 1) * t


def _focal_dense(x: Tensor, t: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Soft targets: :math:`q = \sigma + t(1 - 2\sigma)`, :math:`\ell = \alpha_t\,q^\gamma (\log(1 + e^x) - x t)`."""
    p, softplus = _sigmoid_softplus(x)
    q = p + t * (1 - 2 * p)
    return _pow(q, gamma) * (softplus - x * t) * _dense_balance(t, alpha)


def _focal_dense_grad(x: Tensor, t: Tensor, gamma: float, alpha: float | None) -> Tensor:
    r"""Gradient of :func:`_focal_dense`.

    .. math::
        \partial\ell/\partial x =
        \alpha_t[\gamma q^{\gamma-1}(1 - 2t)\sigma(1 - \sigma)\mathrm{BCE} + q^\gamma(\sigma - t)]
    """
    p, softplus = _sigmoid_softplus(x)
    q = p + t * (1 - 2 * p)
    grad = _pow(q, gamma) * (p - t)
    if gamma != 0.0:
        q_pow = q if gamma == 2.0 else q.clamp(min=torch.finfo(q.dtype).tiny).pow(gamma - 1)
        grad = grad + gamma * q_pow * (1 - 2 * t) * p * (1 - p) * (softplus - x * t)
    return grad * _dense_balance(t, alpha)


def _qfl_parts(x: Tensor, labels: Tensor | None, scores: Tensor | None, target: Tensor | None) -> tuple[Tensor, Tensor]:
    """Positive mask and per-element score: from ``labels`` / ``scores`` or a soft target (non-zero = positive)."""
    if labels is not None:
        return _positive(labels, x), scores.to(x.dtype)[:, None]
    return target != 0, target


def _qfl(x: Tensor, labels: Tensor | None, scores: Tensor | None, target: Tensor | None, beta: float) -> Tensor:
    r"""QFL per element (a sample's loss is its row's sum): BCE to ``s`` times :math:`|s - \sigma|^\beta` at
    positives, :math:`\sigma^\beta` times BCE to 0 elsewhere; :math:`\mathrm{BCE}(x, s) = \log(1 + e^x) - x s`."""
    positive, score = _qfl_parts(x, labels, scores, target)
    p, softplus = _sigmoid_softplus(x)
    negative = softplus * _pow(p, beta)
    positive_loss = (softplus - x * score) * _pow((score - p).abs(), beta)
    return torch.where(positive, positive_loss, negative)


def _qfl_grad(x: Tensor, labels: Tensor | None, scores: Tensor | None, target: Tensor | None, beta: float) -> Tensor:
    r"""Gradient of :func:`_qfl` per element.

    .. math::
        \text{neg: } \sigma^\beta(\sigma + \beta (1 - \sigma)\log(1 + e^x)), \quad
        \text{pos: } d|d|^\beta + \beta\,\mathrm{BCE}\,\mathrm{sign}(d)|d|^{\beta - 1}\sigma(1 - \sigma),
        \quad d = \sigma - s
    """
    positive, score = _qfl_parts(x, labels, scores, target)
    p, softplus = _sigmoid_softplus(x)
    negative = _pow(p, beta) * (p + beta * (1 - p) * softplus)
    d = p - score
    if beta == 2.0:
        modulated = 2 * d
    else:
        modulated = beta * torch.sign(d) * d.abs().clamp(min=torch.finfo(d.dtype).tiny).pow(beta - 1)
    positive_grad = d * _pow(d.abs(), beta) + (softplus - x * score) * modulated * p * (1 - p)
    return torch.where(positive, positive_grad, negative)


def _broadcast(factor: Tensor, like: Tensor) -> Tensor:
    """A per-row ``factor`` ``(rows,)`` viewed against the element-wise ``like`` ``(rows, C)``."""
    if 0 < factor.ndim < like.ndim:
        return factor.reshape(factor.shape + (1,) * (like.ndim - factor.ndim))
    return factor


def _sum_kernel(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``(x, w, *tensors, *consts) -> Σ w·fn`` over every element (a per-row ``w`` broadcast over the row)."""

    def kernel(x: Tensor, w: Tensor | None, *args: Any) -> Tensor:
        loss = fn(_to_compute(x), *(_to_compute(a) if isinstance(a, Tensor) else a for a in args))
        return (loss if w is None else loss * _broadcast(w, loss)).sum()

    return cached_kernel("sum", fn, kernel)


def _out_kernel(fn: Callable[..., Tensor], per_row: bool) -> Callable[..., None]:
    """``(out, x, w, *tensors, *consts)``: ``out ← w·fn``, or ``w·Σ_c fn`` per row."""

    def kernel(out: Tensor, x: Tensor, w: Tensor | None, *args: Any) -> None:
        loss = fn(_to_compute(x), *(_to_compute(a) if isinstance(a, Tensor) else a for a in args))
        if per_row:
            loss = loss.sum(dim=-1)
        out.copy_(loss if w is None else loss * w)

    return cached_kernel("rows" if per_row else "out", fn, kernel)


def _grad_kernel(grad_fn: Callable[..., Tensor]) -> Callable[..., None]:
    """``(out, x, w, coef, *tensors, *consts)``: ``out ← ∂fn/∂x · w · coef`` (per-row factors broadcast)."""

    def kernel(out: Tensor, x: Tensor, w: Tensor | None, coef: Tensor, *args: Any) -> None:
        grad = grad_fn(_to_compute(x), *(_to_compute(a) if isinstance(a, Tensor) else a for a in args))
        out.copy_(grad * _broadcast(coef if w is None else coef * w, grad))

    return cached_kernel("grad", grad_fn, kernel)


def _slice(t: Tensor | None, start: int, stop: int) -> Tensor | None:
    return None if t is None else t[start:stop]


class _ElementwiseLoss(torch.autograd.Function):
    """``Σ w·fn(pred, *tensors) / divisor`` (or ``w·fn`` unreduced) with ``grad_fn`` as the closed-form backward.

    ``fn`` and ``grad_fn`` are element-wise over ``pred``; with ``per_row=True`` a sample's loss is its
    row's sum and ``weight`` is per row, else ``weight`` has ``pred``'s shape. ``tensors`` (labels,
    targets) are sliced by rows along with ``pred``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        fn: Callable[..., Tensor],
        grad_fn: Callable[..., Tensor],
        per_row: bool,
        consts: tuple[Any, ...],
        weight: Tensor | None,
        divisor: float | Tensor | None,
        pred: Tensor,
        *tensors: Tensor | None,
    ) -> Tensor:
        dtype = _compute_dtype(pred.dtype)
        rows, numel = pred.shape[0], pred.numel()
        out = None
        if divisor is None:
            out = torch.empty(pred.shape[:1] if per_row else pred.shape, dtype=pred.dtype, device=pred.device)
        kernel = _out_kernel(fn, per_row) if out is not None else _sum_kernel(fn)
        # Compiled on the CPU, inductor stores reused exp/log terms whose loop it cannot fuse with a row-wise
        # reduction (QFL's): chunks bound those buffers.
        step = _rows_per_call(pred, whole=not per_row and compiles(numel))
        parts = [pred.new_zeros((), dtype=dtype)]
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            chunk = [_slice(t, start, stop) for t in (pred, weight, *tensors)]
            if out is None:
                parts.append(run_kernel(kernel, numel, *chunk, *consts))
            else:
                run_kernel(kernel, numel, out[start:stop], *chunk, *consts)
        ctx.save_for_backward(pred, weight, divisor if isinstance(divisor, Tensor) else None, *tensors)
        ctx.divisor, ctx.grad_fn, ctx.consts = divisor, grad_fn, consts
        if out is not None:
            return out
        return (parts[-1] if len(parts) == 2 else torch.stack(parts).sum()) / divisor

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        pred, weight, divisor_tensor, *tensors = ctx.saved_tensors
        divisor = divisor_tensor if divisor_tensor is not None else ctx.divisor
        dtype = _compute_dtype(pred.dtype)
        coef = grad_out.to(dtype) / divisor if divisor is not None else grad_out.to(dtype)
        grad = torch.empty_like(pred)
        rows, numel = pred.shape[0], pred.numel()
        step = _rows_per_call(pred, whole=compiles(numel))
        kernel = _grad_kernel(ctx.grad_fn)
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            x, w, *chunk = (_slice(t, start, stop) for t in (pred, weight, *tensors))
            c = coef if coef.ndim == 0 else coef[start:stop]
            run_kernel(kernel, numel, grad[start:stop], x, w, c, *chunk, *ctx.consts)
        return (None, None, None, None, None, None, grad, *(None for _ in tensors))


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
    consts = (float(gamma), None if alpha is None else float(alpha))
    if labels is not None:
        return _ElementwiseLoss.apply(_focal_labels, _focal_labels_grad, False, consts, weight, divisor, pred, labels)
    return _ElementwiseLoss.apply(_focal_dense, _focal_dense_grad, False, consts, weight, divisor, pred, target)


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
    return _ElementwiseLoss.apply(_qfl, _qfl_grad, True, (float(beta),), weight, divisor, pred, labels, scores, target)

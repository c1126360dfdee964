"""Low-memory per-row losses (IoU family, DFL): an autograd Function that saves only its inputs.

Written as plain tensor code, a box loss keeps a few dozen ``(N,)`` intermediates alive for backward.
Here the forward runs a per-row kernel under no graph, and the backward recomputes either a closed-form
gradient or the kernel's vector-Jacobian product (:func:`torch.func.vjp`), which ``torch.compile`` turns
into one loop from the inputs to the gradient. Weighting and the reduction happen inside, so the reduced
path never holds a per-row tensor either. Eager kernels run chunk by chunk, which bounds their
temporaries; compiled ones take the whole input, except a vector-Jacobian product, which still stores a
buffer per box coordinate. A kernel may also keep one value per row for backward (DFL keeps its
log-sum-exp, so its backward is a single pass without a reduction).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_losses.functional.fused import (
    COMPILE_MIN_ELEMENTS,
    _compute_dtype,
    _rows_per_call,
    cached_kernel,
    compiles,
    run_kernel,
)

__all__ = ["fused_rowwise_loss", "vjp_kernel"]

# Rows per chunk, at most: a compiled vector-Jacobian product still writes about fifteen per-row buffers
# (one per slice of a box's coordinates), and eagerly every intermediate is one.
_MAX_CHUNK_ROWS = 1 << 16


def vjp_kernel(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``(pred, target, grad_out, *args) -> grad_out · ∂fn(pred, target, *args)/∂pred``, one function per ``fn``.

    Traced by ``torch.compile`` (through :mod:`torch.func`), the forward and its derivative become one
    fused loop that reads the inputs and writes the gradient; eagerly it recomputes the kernel's
    intermediates for one chunk at a time.
    """

    def kernel(pred: Tensor, target: Tensor, grad_out: Tensor, *args: Any) -> Tensor:
        _, pullback = torch.func.vjp(lambda p: fn(p, target, *args), pred)
        return pullback(grad_out)[0]

    return cached_kernel("vjp", fn, kernel)


def _forward_kernel(fn: Callable[..., Any], kind: str, saves: bool) -> Callable[..., Any]:
    """Per chunk: ``w·fn`` per row (``"rows"``), ``Σ w·fn`` (``"sum"``), or ``[Σ w·fn, Σ_i w_i Σ_k x_ik]``
    (``"shortcut"``: the second sum is the zero-weight rule's value); with ``saves``, paired with the
    per-row values ``fn`` keeps for backward."""

    def kernel(x: Tensor, t: Tensor, w: Tensor | None, *args: Any) -> Any:
        loss = fn(x, t, *args)
        saved = None
        if saves:
            loss, saved = loss
        if w is not None:
            loss = loss * w
        if kind == "rows":
            result = loss
        elif kind == "sum":
            result = loss.sum()
        else:
            rows_sum = x.reshape(x.shape[0], -1).sum(-1)
            result = torch.stack([loss.sum(), (rows_sum if w is None else rows_sum * w).sum()])
        return (result, saved) if saves else result

    return cached_kernel(kind, fn, kernel)


def _backward_kernel(grad_fn: Callable[..., Tensor]) -> Callable[..., None]:
    """Per chunk, into ``out``: ``grad_fn`` at ``coef · w`` (``coef`` a scalar or per row), or the zero-weight
    rule's gradient ``upstream · w`` where ``has_positive`` is false."""

    def kernel(
        out: Tensor,
        x: Tensor,
        t: Tensor,
        coef: Tensor,
        w: Tensor | None,
        has_positive: Tensor | None,
        upstream: Tensor,
        saved: Tensor | None,
        *args: Any,
    ) -> None:
        g = coef.expand(x.shape[0]) if coef.ndim == 0 else coef
        if w is not None:
            g = g * w
        grad = grad_fn(x, t, g, *args) if saved is None else grad_fn(x, t, g, saved, *args)
        if has_positive is not None:
            shape = (x.shape[0],) + (1,) * (x.dim() - 1)
            grad = torch.where(has_positive, grad, (upstream * w).reshape(shape).expand_as(grad))
        out.copy_(grad)  # compiled, the kernel stores straight into the gradient's rows

    return cached_kernel("backward", grad_fn, kernel)


class _RowwiseLoss(torch.autograd.Function):
    """``scale · Σ w·fn(pred, target) / divisor`` (or ``scale · w·fn`` per row) with backward from the inputs only.

    With ``shortcut`` (a weight and a divisor given), MMDetection's box-loss rule is folded in: where no
    weight is positive the result is ``Σ_i w_i Σ_k pred_ik`` instead, chosen on the device. One autograd
    node then carries both branches, so backward writes a single ``pred``-sized gradient. With ``saves``,
    ``fn`` returns ``(loss, saved)`` and the per-row ``saved`` (say, a log-sum-exp) goes to ``grad_fn``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        fn: Callable[..., Any],
        grad_fn: Callable[..., Tensor],
        closed_form: bool,
        min_elements: int,
        weight: Tensor | None,
        divisor: float | Tensor | None,
        scale: float,
        shortcut: bool,
        saves: bool,
        pred: Tensor,
        target: Tensor,
        *args: Any,
    ) -> Tensor:
        dtype = _compute_dtype(pred.dtype)
        rows = pred.shape[0]
        step = _rows_per_call(pred, compiles(pred.numel(), min_elements), _MAX_CHUNK_ROWS)
        kind = "rows" if divisor is None else "shortcut" if shortcut else "sum"
        kernel = _forward_kernel(fn, kind, saves)
        parts, saved_parts = [], []
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            x, t = pred[start:stop].to(dtype), target[start:stop].to(dtype)
            w = None if weight is None else weight[start:stop].to(dtype)
            part = run_kernel(kernel, pred.numel(), x, t, w, *args, min_elements=min_elements)
            if saves:
                part, saved_part = part
                saved_parts.append(saved_part)
            parts.append(part)
        saved = None
        if saves:
            saved = torch.cat(saved_parts) if len(saved_parts) > 1 else saved_parts[0] if saved_parts else None
        has_positive = (weight > 0).any() if shortcut else None
        divisor_tensor = divisor if isinstance(divisor, Tensor) else None
        ctx.save_for_backward(pred, target, weight, divisor_tensor, has_positive, saved)
        ctx.divisor, ctx.scale, ctx.grad_fn, ctx.min_elements, ctx.args = divisor, scale, grad_fn, min_elements, args
        ctx.closed_form = closed_form
        if divisor is None:
            out = torch.cat(parts) if parts else pred.new_zeros(0, dtype=dtype)
            return out * scale if scale != 1.0 else out
        if not shortcut:
            total = torch.stack(parts).sum() if parts else pred.new_zeros((), dtype=dtype)
            return scale * (total / divisor)
        sums = torch.stack(parts).sum(0) if parts else pred.new_zeros(2, dtype=dtype)
        loss = scale * (sums[0] / divisor)
        return torch.where(has_positive, loss, sums[1])

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        pred, target, weight, divisor_tensor, has_positive, saved = ctx.saved_tensors
        divisor = divisor_tensor if divisor_tensor is not None else ctx.divisor
        dtype = _compute_dtype(pred.dtype)
        rows = pred.shape[0]
        # A compiled vector-Jacobian product keeps per-coordinate buffers: it runs chunk by chunk.
        step = _rows_per_call(pred, ctx.closed_form and compiles(pred.numel(), ctx.min_elements), _MAX_CHUNK_ROWS)
        upstream = grad_out.to(dtype)
        coef = upstream * (ctx.scale / divisor) if divisor is not None else upstream * ctx.scale
        kernel = _backward_kernel(ctx.grad_fn)
        grad = torch.empty_like(pred)
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            x, t = pred[start:stop].to(dtype), target[start:stop].to(dtype)
            w = None if weight is None else weight[start:stop].to(dtype)
            g = coef if coef.ndim == 0 else coef[start:stop]
            up = upstream if upstream.ndim == 0 else upstream[start:stop]
            run_kernel(
                kernel,
                pred.numel(),
                grad[start:stop],
                x,
                t,
                g,
                w,
                has_positive,
                up,
                None if saved is None else saved[start:stop],
                *ctx.args,
                min_elements=ctx.min_elements,
            )
        return (None,) * 9 + (grad, None, *(None for _ in ctx.args))


def fused_rowwise_loss(
    fn: Callable[..., Tensor],
    pred: Tensor,
    target: Tensor,
    *args: Any,
    weight: Tensor | None = None,
    divisor: float | Tensor | None = None,
    scale: float = 1.0,
    zero_weight_shortcut: bool = False,
    grad_fn: Callable[..., Tensor] | None = None,
    saves: bool = False,
    min_elements: int = COMPILE_MIN_ELEMENTS,
) -> Tensor:
    """``scale · w · fn(pred, target, *args)`` per row of ``pred``, summed and divided by ``divisor`` if given,
    through a low-memory autograd Function.

    Backward saves only the inputs and computes the gradient chunk by chunk with
    ``grad_fn(pred, target, grad_out, *args)`` (a closed form), or by default the vector-Jacobian product
    of ``fn`` (:func:`vjp_kernel`), so no intermediate of ``fn`` outlives the forward. Both run through
    :func:`~lightning_losses.functional.fused.run_kernel` (compiled from ``min_elements`` elements).
    Half-precision inputs are computed in float32 and the loss is float32. Where ``target`` or
    ``weight`` needs a gradient too, the same formula runs under plain autograd.

    Args:
        fn: ``(pred rows, target rows, *args) -> (rows,)`` loss kernel.
        pred: ``(N, ...)`` predictions.
        target: ``(N, ...)`` targets, sliced along with ``pred``.
        args: non-tensor arguments of ``fn``.
        weight: per-row weight, broadcast to ``(N,)``.
        divisor: reduce to ``scale · Σ w·ℓ / divisor`` (from :func:`reduction_divisor`); ``None`` returns
            ``scale · w·ℓ`` per row.
        scale: multiplier of the loss (a module's ``loss_weight``).
        zero_weight_shortcut: with a ``weight`` and a ``divisor``: where no weight is positive, return
            ``Σ_i w_i Σ_k pred_ik`` without ``scale`` (MMDetection's box-loss rule), decided on the device.
        grad_fn: closed-form gradient of ``fn`` with respect to ``pred``.
        saves: ``fn`` returns ``(loss, saved)``: ``saved`` is an ``(N,)`` per-row value the forward keeps
            for backward, which calls ``grad_fn(pred, target, grad_out, saved, *args)`` (needs ``grad_fn``).
        min_elements: compile threshold of ``run_kernel``.
    """
    if weight is not None:
        weight = weight.expand(pred.shape[:1])
    shortcut = zero_weight_shortcut and weight is not None and divisor is not None
    if torch.is_grad_enabled() and (target.requires_grad or (weight is not None and weight.requires_grad)):
        dtype = _compute_dtype(pred.dtype)
        loss = fn(pred.to(dtype), target.to(dtype), *args)
        loss = loss[0] if saves else loss
        loss = loss if weight is None else loss * weight
        if divisor is None:
            return loss * scale
        loss = scale * (loss.sum() / divisor)
        if not shortcut:
            return loss
        rows_sum = pred.to(dtype).reshape(pred.shape[0], -1).sum(-1)
        return torch.where((weight > 0).any(), loss, (rows_sum * weight).sum())
    if divisor is not None and not isinstance(divisor, Tensor):
        divisor = float(divisor)
    if saves and grad_fn is None:
        raise ValueError("`saves=True` needs a closed-form `grad_fn` that takes the saved rows")
    closed_form = grad_fn is not None
    grad_fn = grad_fn or vjp_kernel(fn)
    return _RowwiseLoss.apply(
        fn, grad_fn, closed_form, min_elements, weight, divisor, float(scale), shortcut, saves, pred, target, *args
    )

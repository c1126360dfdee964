"""Low-memory per-row losses (IoU family, DFL): an autograd Function that saves only its inputs.

Written as plain tensor code, a box loss keeps a few dozen ``(N,)`` intermediates alive for backward.
Here the forward runs a per-row kernel under no graph, and the backward recomputes either a closed-form
gradient or the kernel's vector-Jacobian product (:func:`torch.func.vjp`), which ``torch.compile`` turns
into one loop from the inputs to the gradient. Weighting and the reduction happen inside, so the reduced
path never holds a per-row tensor either. Eager kernels run chunk by chunk, which bounds their
temporaries; compiled ones take the whole input, except a vector-Jacobian product, which still stores a
buffer per box coordinate. A kernel may also keep one value per row for backward (DFL keeps its
log-sum-exp, so its backward is a single pass without a reduction). MMDetection's zero-weight rule comes
from :mod:`lightning_losses.functional.reduction`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_losses.functional.kernels.runtime import (
    autocast_off,
    cached_kernel,
    compiles,
    compute_dtype,
    row_chunks,
    run_chunked,
    run_kernel,
)
from lightning_losses.functional.reduction import (
    has_positive_weight,
    zero_weight_grad,
    zero_weight_select,
    zero_weight_value,
)

__all__ = ["RowwiseSpec", "fused_rowwise_loss", "vjp_kernel"]

# Rows per chunk, at most: a compiled vector-Jacobian product still writes about fifteen per-row buffers
# (one per slice of a box's coordinates), and eagerly every intermediate is one.
MAX_CHUNK_ROWS = 1 << 16
# Below this many elements of ``pred`` an eager call runs as plain autograd (its saved intermediates are a few
# small tensors); the Function's per-call cost would be larger than the loss itself.
PLAIN_MAX_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class RowwiseSpec:
    """What one call of the fused row Function computes: everything but its tensors.

    Args:
        fn: ``(pred rows, target rows, *args) -> (rows,)`` loss, or ``(loss, saved)`` with ``saves``.
        grad_fn: ``(pred, target, grad_out, [saved,] *args) -> grad_out · ∂fn/∂pred``.
        closed_form: ``grad_fn`` is a closed form (not :func:`vjp_kernel`): compiled, it takes the whole input.
        args: the trailing non-tensor arguments of ``fn`` and ``grad_fn``.
        divisor: reduce to ``scale · Σ w·ℓ / divisor``; ``None`` returns ``scale · w·ℓ`` per row.
        scale: multiplier of the loss.
        zero_weight_rule: apply MMDetection's zero-weight rule to the reduced loss (needs a weight).
        saves: ``fn`` also returns a per-row value that ``grad_fn`` takes.
        min_elements: compile threshold of :func:`~lightning_losses.functional.kernels.runtime.run_kernel`
            (``None``: its :data:`~lightning_losses.functional.kernels.runtime.COMPILE_MIN_ELEMENTS`).
    """

    fn: Callable[..., Any]
    grad_fn: Callable[..., Tensor]
    closed_form: bool = False
    args: tuple[Any, ...] = ()
    divisor: float | Tensor | None = None
    scale: float = 1.0
    zero_weight_rule: bool = False
    saves: bool = False
    min_elements: int | None = None

    @property
    def kind(self) -> str:
        """The forward kernel's result: per-row losses, their sum, or the sum with the zero-weight value."""
        return "rows" if self.divisor is None else "shortcut" if self.zero_weight_rule else "sum"


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
    """Per chunk: ``w·fn`` per row (``"rows"``), ``Σ w·fn`` (``"sum"``), or ``[Σ w·fn, zero_weight_value]``
    (``"shortcut"``); with ``saves``, paired with the per-row values ``fn`` keeps for backward."""

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
            result = torch.stack([loss.sum(), zero_weight_value(x.reshape(x.shape[0], -1), w)])
        return (result, saved) if saves else result

    return cached_kernel(kind, fn, kernel)


def _backward_kernel(grad_fn: Callable[..., Tensor]) -> Callable[..., None]:
    """Per chunk, into ``out``: ``grad_fn`` at ``coef · w`` (``coef`` a scalar or per row), through the
    zero-weight rule's gradient when ``has_positive`` is given."""

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
            grad = zero_weight_grad(grad, has_positive, upstream, w)
        out.copy_(grad)  # compiled, the kernel stores straight into the gradient's rows

    return cached_kernel("backward", grad_fn, kernel)


class _RowwiseLoss(torch.autograd.Function):
    """``scale · Σ w·fn(pred, target) / divisor`` (or ``scale · w·fn`` per row) with backward from the inputs only,
    as described by a :class:`RowwiseSpec`.

    With ``zero_weight_rule``, MMDetection's box-loss rule is folded in: where no weight is positive the result is
    the rule's value instead, chosen on the device. One autograd node then carries both branches, so backward
    writes a single ``pred``-sized gradient. With ``saves``, the per-row values ``fn`` keeps (say, a
    log-sum-exp) go to ``grad_fn``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, spec: RowwiseSpec, pred: Tensor, target: Tensor, weight: Tensor | None
    ) -> Tensor:
        dtype = compute_dtype(pred.dtype)
        numel = pred.numel()
        kernel = _forward_kernel(spec.fn, spec.kind, spec.saves)

        def run(whole: bool) -> tuple[list[Tensor], list[Tensor]]:
            parts, saved_parts = [], []
            for rows in row_chunks(pred, whole, MAX_CHUNK_ROWS):
                x, t = pred[rows].to(dtype), target[rows].to(dtype)
                w = None if weight is None else weight[rows].to(dtype)
                part = run_kernel(kernel, numel, x, t, w, *spec.args, min_elements=spec.min_elements, whole=whole)
                if spec.saves:
                    part, saved_part = part
                    saved_parts.append(saved_part)
                parts.append(part)
            return parts, saved_parts

        parts, saved_parts = run_chunked(run, numel, spec.min_elements)
        saved = None
        if spec.saves:
            saved = torch.cat(saved_parts) if len(saved_parts) > 1 else saved_parts[0] if saved_parts else None
        has_positive = has_positive_weight(weight) if spec.zero_weight_rule else None
        ctx.spec = spec
        ctx.save_for_backward(pred, target, weight, has_positive, saved)
        if spec.divisor is None:
            out = torch.cat(parts) if parts else pred.new_zeros(0, dtype=dtype)
            return out * spec.scale if spec.scale != 1.0 else out
        if not spec.zero_weight_rule:
            total = torch.stack(parts).sum() if parts else pred.new_zeros((), dtype=dtype)
            return spec.scale * (total / spec.divisor)
        sums = torch.stack(parts).sum(0) if parts else pred.new_zeros(2, dtype=dtype)
        return zero_weight_select(spec.scale * (sums[0] / spec.divisor), sums[1], has_positive)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        spec: RowwiseSpec = ctx.spec
        pred, target, weight, has_positive, saved = ctx.saved_tensors
        dtype = compute_dtype(pred.dtype)
        numel = pred.numel()
        upstream = grad_out.to(dtype)
        coef = upstream * (spec.scale / spec.divisor) if spec.divisor is not None else upstream * spec.scale
        kernel = _backward_kernel(spec.grad_fn)
        grad = torch.empty_like(pred)

        def fill(compiled: bool) -> Tensor:
            # A compiled vector-Jacobian product keeps per-coordinate buffers: it runs chunk by chunk.
            whole = compiled and spec.closed_form
            for rows in row_chunks(pred, whole, MAX_CHUNK_ROWS):
                x, t = pred[rows].to(dtype), target[rows].to(dtype)
                w = None if weight is None else weight[rows].to(dtype)
                g = coef if coef.ndim == 0 else coef[rows]
                up = upstream if upstream.ndim == 0 else upstream[rows]
                part = None if saved is None else saved[rows]
                args = (grad[rows], x, t, g, w, has_positive, up, part, *spec.args)
                run_kernel(kernel, numel, *args, min_elements=spec.min_elements, whole=whole)
            return grad

        run_chunked(fill, numel, spec.min_elements)
        return None, grad, None, None


def _plain_autograd(spec: RowwiseSpec, pred: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """The same loss as :class:`_RowwiseLoss` as plain tensor code, for a target or weight that needs a gradient."""
    dtype = compute_dtype(pred.dtype)
    with autocast_off(pred.device.type):
        loss = spec.fn(pred.to(dtype), target.to(dtype), *spec.args)
    loss = loss[0] if spec.saves else loss
    loss = loss if weight is None else loss * weight
    if spec.divisor is None:
        return loss * spec.scale
    loss = spec.scale * (loss.sum() / spec.divisor)
    if not spec.zero_weight_rule:
        return loss
    rows = pred.to(dtype).reshape(pred.shape[0], math.prod(pred.shape[1:]))  # also for 0 rows
    return zero_weight_select(loss, zero_weight_value(rows, weight), has_positive_weight(weight))


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
    min_elements: int | None = None,
) -> Tensor:
    """``scale · w · fn(pred, target, *args)`` per row of ``pred``, summed and divided by ``divisor`` if given,
    through a low-memory autograd Function.

    Backward saves only the inputs and computes the gradient chunk by chunk with
    ``grad_fn(pred, target, grad_out, *args)`` (a closed form), or by default the vector-Jacobian product
    of ``fn`` (:func:`vjp_kernel`), so no intermediate of ``fn`` outlives the forward. Both run through
    :func:`~lightning_losses.functional.kernels.runtime.run_kernel` (compiled from ``min_elements``
    elements). Half-precision inputs are computed in float32 and the loss is float32. Where ``target`` or
    ``weight`` needs a gradient too, and for eager inputs under :data:`PLAIN_MAX_ELEMENTS` elements (where the
    saved intermediates are small and the Function's per-call cost would dominate), the same formula runs under
    plain autograd, in float32 with autocast off.

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
            ``Σ_i w_i Σ_k pred_ik`` without ``scale`` (MMDetection's box-loss rule,
            :func:`~lightning_losses.functional.reduction.zero_weight_shortcut`), decided on the device.
        grad_fn: closed-form gradient of ``fn`` with respect to ``pred``.
        saves: ``fn`` returns ``(loss, saved)``: ``saved`` is an ``(N,)`` per-row value the forward keeps
            for backward, which calls ``grad_fn(pred, target, grad_out, saved, *args)`` (needs ``grad_fn``).
        min_elements: compile threshold of ``run_kernel``.

    Example:
        >>> rows = lambda p, t: ((p - t) ** 2).sum(1)
        >>> fused_rowwise_loss(rows, torch.ones(2, 3), torch.zeros(2, 3), divisor=2.0)
        tensor(3.)
    """
    if weight is not None:
        weight = weight.expand(pred.shape[:1])
    spec = RowwiseSpec(
        fn,
        grad_fn or vjp_kernel(fn),
        closed_form=grad_fn is not None,
        args=args,
        divisor=divisor if divisor is None or isinstance(divisor, Tensor) else float(divisor),
        scale=float(scale),
        zero_weight_rule=zero_weight_shortcut and weight is not None and divisor is not None,
        saves=saves,
        min_elements=min_elements,
    )
    if saves and grad_fn is None:
        raise ValueError("`saves=True` needs a closed-form `grad_fn` that takes the saved rows")
    if torch.is_grad_enabled() and (target.requires_grad or (weight is not None and weight.requires_grad)):
        return _plain_autograd(spec, pred, target, weight)
    if pred.numel() < PLAIN_MAX_ELEMENTS and not compiles(pred.numel(), min_elements):
        # Small and eager: the Function's fixed cost (chunk loop, a torch.func.vjp per chunk) exceeds what plain
        # autograd costs, and the intermediates it would save are small.
        return _plain_autograd(spec, pred, target, weight)
    return _RowwiseLoss.apply(spec, pred, target, weight)

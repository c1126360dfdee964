"""Fused, low-memory element-wise losses (sigmoid focal, QFL): an autograd Function that saves only its inputs.

The textbook focal loss keeps every intermediate (``σ(x)``, the BCE, ``1 - p_t``, its power, the balance, the
product) alive for backward: about eight ``N × C`` tensors. Here one autograd Function (:class:`_ElementwiseLoss`)
saves the logits and the (label or dense) target. A reduced call that needs a gradient (training) runs one kernel
that returns the weighted sum of the loss and writes the weighted gradient from the same read of the inputs;
backward scales that gradient in place by the incoming gradient over the divisor and returns it, so it is the only
``N × C`` tensor the call allocates. Otherwise (unreduced output, a retained graph run a second time) the forward
writes the loss and backward recomputes the gradient in one pass. One-hot rows are built from class labels inside
the kernels. Compiled (:func:`~lightning_losses.functional.kernels.runtime.run_kernel`), each kernel is one pass
over the inputs with no temporaries, so it runs on the whole input; eagerly it runs chunk by chunk, so the extra
peak memory is the gradient plus one chunk of temporaries. Values equal the composite formula to float32 round-off;
half-precision inputs are computed in float32 (the kept gradient too). The per-element math is in
:mod:`~lightning_losses.functional.kernels.focal` and :mod:`~lightning_losses.functional.kernels.qfl`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_losses.functional.kernels.focal import focal_dense, focal_dense_grad, focal_labels, focal_labels_grad
from lightning_losses.functional.kernels.qfl import qfl, qfl_grad
from lightning_losses.functional.kernels.runtime import (
    cached_kernel,
    compute_dtype,
    row_chunks,
    run_chunked,
    run_kernel,
    to_compute,
)

__all__ = ["ElementwiseSpec", "fused_quality_focal_loss", "fused_sigmoid_focal_loss"]


@dataclass(frozen=True)
class ElementwiseSpec:
    """What one call of the fused element-wise Function computes: everything but its tensors.

    Args:
        fn: ``(x, *tensors, *consts) -> ℓ``, the loss of every element of ``x``.
        grad_fn: ``(x, *tensors, *consts) -> ∂ℓ/∂x``, element-wise.
        consts: the trailing non-tensor arguments of ``fn`` and ``grad_fn`` (``gamma``, ``alpha``, ``beta``).
        divisor: reduce to ``Σ w·ℓ / divisor``; ``None`` returns ``w·ℓ`` unreduced.
        per_row: a sample's loss is its row's sum and ``weight`` is per row; else ``weight`` has ``x``'s shape.
    """

    fn: Callable[..., Tensor]
    grad_fn: Callable[..., Tensor]
    consts: tuple[Any, ...] = ()
    divisor: float | Tensor | None = None
    per_row: bool = False


def _broadcast(factor: Tensor, like: Tensor) -> Tensor:
    """A per-row ``factor`` ``(rows,)`` viewed against the element-wise ``like`` ``(rows, C)``."""
    if 0 < factor.ndim < like.ndim:
        return factor.reshape(factor.shape + (1,) * (like.ndim - factor.ndim))
    return factor


def _sum_kernel(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``(x, w, *tensors, *consts) -> Σ w·fn`` over every element (a per-row ``w`` broadcast over the row)."""

    def kernel(x: Tensor, w: Tensor | None, *args: Any) -> Tensor:
        loss = fn(to_compute(x), *(to_compute(a) if isinstance(a, Tensor) else a for a in args))
        return (loss if w is None else loss * _broadcast(w, loss)).sum()

    return cached_kernel("sum", fn, kernel)


def _sum_grad_kernel(fn: Callable[..., Tensor], grad_fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``(grad, x, w, *tensors, *consts) -> Σ w·fn``, writing ``grad ← w·∂fn/∂x``: the loss and its gradient from one
    read of the inputs (compiled, one loop shares the exponential and logarithm of both)."""

    def kernel(grad: Tensor, x: Tensor, w: Tensor | None, *args: Any) -> Tensor:
        x = to_compute(x)
        rest = tuple(to_compute(a) if isinstance(a, Tensor) else a for a in args)
        loss, dloss = fn(x, *rest), grad_fn(x, *rest)
        if w is not None:
            loss, dloss = loss * _broadcast(w, loss), dloss * _broadcast(w, dloss)
        grad.copy_(dloss)
        return loss.sum()

    return cached_kernel("sum_grad", fn, kernel)  # one grad_fn per fn: the pair is keyed by fn


def _out_kernel(fn: Callable[..., Tensor], per_row: bool) -> Callable[..., None]:
    """``(out, x, w, *tensors, *consts)``: ``out ← w·fn``, or ``w·Σ_c fn`` per row."""

    def kernel(out: Tensor, x: Tensor, w: Tensor | None, *args: Any) -> None:
        loss = fn(to_compute(x), *(to_compute(a) if isinstance(a, Tensor) else a for a in args))
        if per_row:
            loss = loss.sum(dim=-1)
        out.copy_(loss if w is None else loss * w)

    return cached_kernel("rows" if per_row else "out", fn, kernel)


def _grad_kernel(grad_fn: Callable[..., Tensor]) -> Callable[..., None]:
    """``(out, x, w, coef, *tensors, *consts)``: ``out ← ∂fn/∂x · w · coef`` (per-row factors broadcast)."""

    def kernel(out: Tensor, x: Tensor, w: Tensor | None, coef: Tensor, *args: Any) -> None:
        grad = grad_fn(to_compute(x), *(to_compute(a) if isinstance(a, Tensor) else a for a in args))
        if w is not None:  # (∂ℓ·w)·coef: the association of the forward-written gradient, so both agree bitwise
            grad = grad * _broadcast(w, grad)
        out.copy_(grad * _broadcast(coef, grad))

    return cached_kernel("grad", grad_fn, kernel)


def _take(rows: slice, tensors: tuple[Tensor | None, ...]) -> list[Tensor | None]:
    return [None if t is None else t[rows] for t in tensors]


class _ElementwiseLoss(torch.autograd.Function):
    """``Σ w·fn(pred, *tensors) / divisor`` (or ``w·fn`` unreduced) with ``grad_fn`` as the closed-form backward,
    as described by an :class:`ElementwiseSpec`. ``weight`` and ``tensors`` (labels, targets) are sliced by rows
    along with ``pred``; only ``pred`` gets a gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, spec: ElementwiseSpec, pred: Tensor, weight: Tensor | None, *tensors: Tensor | None
    ) -> Tensor:
        numel = pred.numel()
        tensors_of = functools.partial(_take, tensors=(pred, weight, *tensors))
        with_grad = bool(ctx.needs_input_grad[1])
        if spec.divisor is None:
            out = torch.empty(pred.shape[:1] if spec.per_row else pred.shape, dtype=pred.dtype, device=pred.device)
            kernel = _out_kernel(spec.fn, spec.per_row)

            def fill(compiled: bool) -> Tensor:
                # Compiled on the CPU, inductor stores reused exp/log terms whose loop it cannot fuse with a
                # row-wise reduction (QFL's): chunks bound those buffers.
                whole = compiled and not spec.per_row
                for rows in row_chunks(pred, whole=whole):
                    run_kernel(kernel, numel, out[rows], *tensors_of(rows), *spec.consts, whole=whole)
                return out

            result = run_chunked(fill, numel)
        else:
            # With a gradient to come, the forward writes it too (unscaled by the divisor and the incoming
            # gradient, which backward applies): one pass over the inputs instead of one per direction.
            grad = torch.empty(pred.shape, dtype=compute_dtype(pred.dtype), device=pred.device) if with_grad else None
            kernel = _sum_grad_kernel(spec.fn, spec.grad_fn) if with_grad else _sum_kernel(spec.fn)

            def total(compiled: bool) -> Tensor:
                whole = compiled and not spec.per_row
                parts = [pred.new_zeros((), dtype=compute_dtype(pred.dtype))]
                for rows in row_chunks(pred, whole=whole):
                    head = () if grad is None else (grad[rows],)
                    parts.append(run_kernel(kernel, numel, *head, *tensors_of(rows), *spec.consts, whole=whole))
                return parts[-1] if len(parts) == 2 else torch.stack(parts).sum()

            result = run_chunked(total, numel) / spec.divisor
        ctx.spec = spec
        # The forward-written gradient is an intermediate, kept on ctx (not saved): the first backward scales it
        # in place, returns it and drops it, so it is the returned gradient and outlives nothing. A retained graph
        # run again recomputes from the saved inputs.
        ctx.kept = grad if spec.divisor is not None else None
        ctx.save_for_backward(pred, weight, *tensors)
        return result

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        spec: ElementwiseSpec = ctx.spec
        pred, weight, *tensors = ctx.saved_tensors
        if ctx.kept is not None:
            kept, ctx.kept = ctx.kept, None
            grad = kept.mul_(grad_out.to(kept.dtype) / spec.divisor).to(pred.dtype)
            return (None, grad, None, *(None for _ in tensors))
        coef = grad_out.to(compute_dtype(pred.dtype))
        if spec.divisor is not None:
            coef = coef / spec.divisor
        grad = torch.empty_like(pred)
        numel = pred.numel()
        kernel = _grad_kernel(spec.grad_fn)

        def fill(whole: bool) -> Tensor:
            for rows in row_chunks(pred, whole=whole):
                x, w, *chunk = _take(rows, (pred, weight, *tensors))
                c = coef if coef.ndim == 0 else coef[rows]
                run_kernel(kernel, numel, grad[rows], x, w, c, *chunk, *spec.consts, whole=whole)
            return grad

        run_chunked(fill, numel)
        return (None, grad, None, *(None for _ in tensors))


def _divisor(divisor: float | Tensor | None) -> float | Tensor | None:
    return divisor if divisor is None or isinstance(divisor, Tensor) else float(divisor)


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

    Example:
        >>> pred = torch.zeros(1, 2, requires_grad=True)
        >>> fused_sigmoid_focal_loss(pred, None, torch.tensor([0]), None, 1.0, 2.0, 0.25)
        tensor(0.1733, grad_fn=<_ElementwiseLossBackward>)
    """
    if weight is not None:
        weight = weight.expand(pred.shape)
    consts = (float(gamma), None if alpha is None else float(alpha))
    if labels is not None:
        spec = ElementwiseSpec(focal_labels, focal_labels_grad, consts, _divisor(divisor))
        return _ElementwiseLoss.apply(spec, pred, weight, labels)
    spec = ElementwiseSpec(focal_dense, focal_dense_grad, consts, _divisor(divisor))
    return _ElementwiseLoss.apply(spec, pred, weight, target)


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

    Example:
        >>> fused_quality_focal_loss(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([0.5]), None, None, None, 2.0)
        tensor([0.1733])
    """
    if weight is not None:
        weight = weight.expand(pred.shape[:1])
    spec = ElementwiseSpec(qfl, qfl_grad, (float(beta),), _divisor(divisor), per_row=True)
    return _ElementwiseLoss.apply(spec, pred, weight, labels, scores, target)

"""Pre-compiling the fused kernels before training, so the first steps do not pay for ``torch.compile``.

A kernel compiles on its first large call (:mod:`~lightning_losses.functional.kernels.runtime`), which stalls
that step for seconds per kernel. :func:`warmup` makes those calls up front on small inputs: the row dimension
is compiled dynamic, so the compilations serve every batch size later, as long as the dtypes, the class and
bin counts and the constants (``gamma``, ``alpha``, ``beta``) match the training run's. With
``TORCHINDUCTOR_CACHE_DIR`` on a persistent disk, later processes load the compiled code instead of
generating it again (``benchmarks/compile_cost.py`` measures both).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from lightning_losses.functional.kernels import runtime

__all__ = ["WARMUP_BOX_LOSSES", "warmup"]

WARMUP_BOX_LOSSES = ("iou_loss", "giou_loss", "diou_loss", "ciou_loss")


def warmup(
    dtypes: Iterable[torch.dtype] = (torch.float32,),
    device: str | torch.device = "cpu",
    *,
    num_classes: int = 80,
    bins: int = 17,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    beta: float = 2.0,
    box_losses: Iterable[str] = WARMUP_BOX_LOSSES,
    inference: bool = True,
    rows: int = 256,
) -> list[str]:
    """Compile the fused kernels (focal, QFL, DFL, the IoU family) for each dtype of head outputs, forward and
    backward, and with ``inference`` their forward under ``torch.inference_mode`` (validation).

    Args:
        dtypes: dtypes of the logits and boxes the losses will see (``float32``; ``bfloat16`` / ``float16``
            under ``bf16-true`` / ``16-true``).
        device: where the losses run.
        num_classes: the class count of the focal and QFL logits.
        bins: DFL's bin count (``reg_max + 1``).
        gamma: focal loss's focusing parameter; ``alpha`` its balance.
        beta: QFL's exponent.
        box_losses: names of :mod:`lightning_losses.functional` box losses to compile.
        inference: also compile the forward kernels under inference mode.
        rows: rows of the warm-up inputs (2 or more: the compiled row count is dynamic).

    Returns:
        The compiled kernel copies this call added (one per call signature), by name.

    Example:
        >>> from lightning_losses.functional.kernels import set_compile
        >>> previous = set_compile(False)  # the doctest does not pay for compilation
        >>> warmup(num_classes=3, bins=5, box_losses=("giou_loss",), rows=8)
        []
        >>> _ = set_compile(previous)
    """
    from lightning_losses import functional as F  # the losses import this package: import them on use

    if rows < 2:
        raise ValueError(f"`rows` must be at least 2 (a compiled row count of 1 is a constant), got {rows}")
    before = set(runtime._compiler.compiled)
    previous = runtime.set_compile(runtime._compiler.enabled is not False)  # set_compile(False) still wins
    try:
        modes = (False, True) if inference else (False,)
        for dtype in dtypes:
            g = torch.Generator().manual_seed(0)
            logits = torch.randn(rows, num_classes, generator=g).to(device=device, dtype=dtype)
            labels = torch.randint(0, num_classes + 1, (rows,), generator=g).to(device)
            scores = torch.rand(rows, generator=g).to(device)
            weight = torch.rand(rows, generator=g).to(device)
            dist = torch.randn(rows, bins, generator=g).to(device=device, dtype=dtype)
            target = (torch.rand(rows, generator=g) * (bins - 1.1)).to(device)
            xy = torch.rand(rows, 2, generator=g) * 8
            boxes = torch.cat([xy, xy + 4 + torch.rand(rows, 2, generator=g) * 8], 1).to(device=device, dtype=dtype)
            avg = torch.tensor(float(rows), device=device)
            for in_inference in modes:
                calls = [
                    (F.sigmoid_focal_loss, logits, (labels, weight), {"gamma": gamma, "alpha": alpha}),
                    (F.quality_focal_loss, logits, ((labels, scores), weight), {"beta": beta}),
                    (F.distribution_focal_loss, dist, (target, weight), {}),
                    *((getattr(F, name), boxes, (boxes.flip(0).float(), weight), {}) for name in box_losses),
                ]
                for loss, pred, (tgt, w), kwargs in calls:
                    if in_inference:
                        with torch.inference_mode():  # a validation step's outputs are inference tensors
                            loss(*_fresh((pred, tgt, w)), avg_factor=_fresh(avg), **kwargs)
                        continue
                    leaf = pred.detach().requires_grad_()
                    loss(leaf, tgt, w, avg_factor=avg, **kwargs).backward()
    finally:
        runtime.set_compile(previous)
    return sorted(
        f"{getattr(key[0], '__name__', 'kernel')}_sig{i}"
        for i, key in enumerate(runtime._compiler.compiled)
        if key not in before
    )


def _fresh(obj: Any) -> Any:
    """``obj``'s tensors copied (under inference mode: as inference tensors), in the same structure."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, tuple):
        return tuple(_fresh(o) for o in obj)
    return obj

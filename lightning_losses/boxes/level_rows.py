"""Per-level head maps as per-prior rows in one copy, with a backward that writes each map's gradient in one pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["split_level_rows"]


def split_level_rows(levels: Sequence[Sequence[Tensor]], split: int) -> tuple[Tensor, Tensor]:
    """Per-level maps to two row tensors: channels ``[0, split)`` and ``[split, ch)`` of every cell.

    Each level is ``(map,)``, one ``(B, ch, H_l, W_l)`` map, or ``(first, second)``, maps of ``split`` and
    ``ch - split`` channels. Rows run level by level, ``y``-major within a level (``permute(0, 2, 3, 1)``).
    The result is the concatenation and channel split of the permuted maps, written in one copy; its backward
    writes each map's gradient straight from the two row gradients (where autograd would fill and add a
    zero tensor per slice and copy again per level).

    Args:
        levels: per level, one map or a pair of maps, all of one dtype and device.
        split: channels of the first output.

    Returns:
        ``(B, P, split)`` and ``(B, P, ch - split)``, contiguous, ``P = Σ_l H_l·W_l``.

    Example:
        >>> first, second = split_level_rows([(torch.arange(8.0).reshape(1, 2, 2, 2),)], split=1)
        >>> first[0, :, 0].tolist(), second[0, :, 0].tolist()
        ([0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0])
    """
    layout = tuple(len(level) for level in levels)
    return _LevelRows.apply(int(split), layout, *(m for level in levels for m in level))


class _LevelRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, split: int, layout: tuple[int, ...], *maps: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        batch = maps[0].shape[0]
        levels, start = [], 0
        for count in layout:
            levels.append(maps[start : start + count])
            start += count
        channels = sum(m.shape[1] for m in levels[0])
        cells = [int(level[0].shape[2] * level[0].shape[3]) for level in levels]
        first = maps[0].new_empty(batch, sum(cells), split)
        second = maps[0].new_empty(batch, sum(cells), channels - split)
        row = 0
        for level, n in zip(levels, cells, strict=True):
            parts = [m.reshape(batch, m.shape[1], n).transpose(1, 2) for m in level]  # (B, n, ch) views
            if len(parts) == 1:
                parts = [parts[0][..., :split], parts[0][..., split:]]
            first[:, row : row + n].copy_(parts[0])
            second[:, row : row + n].copy_(parts[1])
            row += n
        ctx.split, ctx.cells, ctx.dtype, ctx.device = split, cells, maps[0].dtype, maps[0].device
        ctx.shapes = [[m.shape for m in level] for level in levels]
        return first, second

    @staticmethod
    def backward(ctx: Any, grad_first: Tensor | None, grad_second: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grads: list[Tensor] = []
        row = 0
        for shapes, n in zip(ctx.shapes, ctx.cells, strict=True):
            batch = shapes[0][0]
            outs = [torch.empty(shape, dtype=ctx.dtype, device=ctx.device) for shape in shapes]
            views = [o.view(batch, o.shape[1], n).transpose(1, 2) for o in outs]
            if len(views) == 1:
                views = [views[0][..., : ctx.split], views[0][..., ctx.split :]]
            for view, grad in zip(views, (grad_first, grad_second), strict=True):
                if grad is None:
                    view.zero_()
                else:
                    view.copy_(grad[:, row : row + n])
            grads.extend(outs)
            row += n
        return (None, None, *grads)

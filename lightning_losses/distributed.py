"""Cross-rank averaging of loss normalisers (``num_pos`` and friends)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["reduce_mean", "world_size"]


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of processes in ``group`` (the default group when ``None``; 1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def reduce_mean(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Average ``tensor`` over the ranks of ``group``: one all-reduce of ``tensor / world_size``.

    Criteria stack every normaliser of a step into one tensor and call this once, so a step makes a
    single collective whatever the number of normalisers. The sum runs in float32. Identity in one process
    and whenever gradients are off (validation, testing, ``torch.no_grad``): there ranks may run different
    numbers of batches (no padding sampler, ``drop_last=False``), and a collective that one rank never
    joins would hang the others; a loss that is not backpropagated needs no common normaliser.

    Example:
        >>> reduce_mean(torch.tensor([3.0, 5.0]))  # one process: unchanged
        tensor([3., 5.])
    """
    n = world_size(group)
    if n == 1 or not torch.is_grad_enabled():
        return tensor
    out = tensor.detach().float() / n
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out.to(tensor.dtype)

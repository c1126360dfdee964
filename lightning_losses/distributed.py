"""Cross-rank averaging of loss normalisers (``num_pos`` and friends)."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["reduce_mean", "world_size"]


def world_size() -> int:
    """Number of processes in the default group (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def reduce_mean(tensor: Tensor) -> Tensor:
    """Average ``tensor`` over all ranks: one all-reduce of ``tensor / world_size``; identity in one process.

    Criteria stack every normaliser of a step into one tensor and call this once, so a step makes a
    single collective whatever the number of normalisers.

    Example:
        >>> reduce_mean(torch.tensor([3.0, 5.0]))  # one process: unchanged
        tensor([3., 5.])
    """
    n = world_size()
    if n == 1:
        return tensor
    out = tensor.detach().clone().float() / n
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.dtype)

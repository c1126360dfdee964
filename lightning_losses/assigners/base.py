"""What every assigner returns, and the chunking that bounds its memory."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["AssignResult", "chunk_size"]


class AssignResult(NamedTuple):
    """Batched assignment of priors to ground-truth boxes.

    Attributes:
        gt_inds: ``(B, P)`` int64: ``-1`` ignored, ``0`` negative, ``i + 1`` positive for box ``i``.
        max_overlaps: ``(B, P)`` the IoU that decided each prior (its matched box's IoU for positives).
        labels: ``(B, P)`` int64 class of the matched box, ``-1`` where not positive.
    """

    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor

    @property
    def positive(self) -> Tensor:
        """``(B, P)`` bool mask of positive priors."""
        return self.gt_inds > 0

    @property
    def matched(self) -> Tensor:
        """``(B, P)`` index of the matched box (0 where not positive, so safe to gather with)."""
        return (self.gt_inds - 1).clamp(min=0)


def chunk_size(batch: int, num_gts: int, num_priors: int, budget: int, per_pair: int = 1) -> int:
    """Priors per chunk so that ``batch × num_gts × chunk × per_pair`` elements stay within ``budget``."""
    per_prior = max(batch * max(num_gts, 1) * per_pair, 1)
    return max(1, min(num_priors, budget // per_prior))

"""The rows a criterion scores after assignment: each image's positives first, in a bounded number of rows."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lightning_losses.assigners.base import AssignResult

__all__ = ["PositiveRows", "positive_rows"]


class PositiveRows(NamedTuple):
    """``R`` rows per image, the positives first (in prior order), then filler rows that weigh nothing.

    Attributes:
        index: ``(B, R)`` prior index of each row.
        valid: ``(B, R)`` bool, the row is a positive.
        boxes: ``(B, R, 4)`` the matched box (box 0 of the image on filler rows).
        labels: ``(B, R)`` class of the matched box, ``-1`` on filler rows.
        overlaps: ``(B, R)`` IoU with the matched box, 0 on filler rows.
    """

    index: Tensor
    valid: Tensor
    boxes: Tensor
    labels: Tensor
    overlaps: Tensor


def positive_rows(assign: AssignResult, gt_boxes: Tensor, bound: int) -> PositiveRows:
    """Gather each image's positives into ``min(P, bound)`` rows without reading their count back.

    An assigner that gives each box at most ``k`` priors leaves at most ``k·G`` positives per image, so
    ``bound = k·G`` rows hold them all: box, class and regression terms then score a fixed, small number
    of rows instead of every prior, with no host sync.

    Args:
        assign: ``(B, P)`` assignment.
        gt_boxes: ``(B, G, 4)`` padded boxes.
        bound: rows per image, at least the largest number of positives an image can have.

    Example:
        >>> assign = AssignResult(torch.tensor([[0, 2, 0, 1]]), torch.tensor([[0, 0.5, 0, 0.7]]),
        ...                       torch.tensor([[-1, 3, -1, 1]]))
        >>> rows = positive_rows(assign, torch.zeros(1, 2, 4), bound=3)
        >>> rows.index.tolist(), rows.valid.tolist(), rows.labels.tolist()
        ([[1, 3, 0]], [[True, True, False]], [[3, 1, -1]])
    """
    positive = assign.positive
    bound = max(1, min(positive.shape[1], int(bound)))
    index = torch.sort((~positive).to(torch.uint8), dim=1, stable=True).indices[:, :bound]
    valid = positive.gather(1, index)
    matched = assign.matched.gather(1, index)
    boxes = gt_boxes.gather(1, matched.unsqueeze(-1).expand(-1, -1, gt_boxes.shape[-1]))
    return PositiveRows(
        index,
        valid,
        boxes,
        torch.where(valid, assign.labels.gather(1, index), -1),
        torch.where(valid, assign.max_overlaps.gather(1, index), 0.0),
    )

"""Batched assigners: priors of a whole batch matched to padded ground truth in tensor ops."""

from lightning_losses.assigners.atss import ATSSAssigner, ATSSTargets, atss_targets
from lightning_losses.assigners.base import AssignResult
from lightning_losses.assigners.hungarian import HungarianMatcher
from lightning_losses.assigners.max_iou import MaxIoUAssigner
from lightning_losses.assigners.points import FCOS_REGRESS_RANGES, PointAssigner
from lightning_losses.assigners.task_aligned import TaskAlignedAssigner, TaskAlignedResult

__all__ = [
    "FCOS_REGRESS_RANGES",
    "ATSSAssigner",
    "ATSSTargets",
    "AssignResult",
    "HungarianMatcher",
    "MaxIoUAssigner",
    "PointAssigner",
    "TaskAlignedAssigner",
    "TaskAlignedResult",
    "atss_targets",
]

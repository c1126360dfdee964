"""Loss modules: ``LossMetric`` subclasses, each a thin stateful shell over a functional loss."""

from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import (
    CrossEntropyLoss,
    DistributionFocalLoss,
    FocalLoss,
    QualityFocalLoss,
    SigmoidFocalLoss,
)
from lightning_losses.losses.iou import CIoULoss, DIoULoss, GIoULoss, IoULoss
from lightning_losses.losses.regression import BalancedL1Loss, L1Loss, MSELoss, SmoothL1Loss
from lightning_losses.losses.segmentation import BoundaryLoss, OhemCrossEntropyLoss

__all__ = [
    "BalancedL1Loss",
    "BoundaryLoss",
    "CIoULoss",
    "CrossEntropyLoss",
    "DIoULoss",
    "DistributionFocalLoss",
    "FocalLoss",
    "GIoULoss",
    "IoULoss",
    "L1Loss",
    "LossMetric",
    "MSELoss",
    "OhemCrossEntropyLoss",
    "QualityFocalLoss",
    "SigmoidFocalLoss",
    "SmoothL1Loss",
]

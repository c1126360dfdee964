"""Detection and segmentation losses as torchmetrics modules, detector presets and a Lightning mixin.

Every loss is a :class:`LossMetric`: calling it returns the differentiable loss, and it keeps a
running mean of what it returned that :meth:`~LossMetric.compute` gives exactly across DDP ranks.
Pure functions live in :mod:`lightning_losses.functional`.
"""

from lightning_losses import functional
from lightning_losses.lightning import DetectionLossModule
from lightning_losses.losses import (
    BalancedL1Loss,
    BoundaryLoss,
    CIoULoss,
    CrossEntropyLoss,
    DIoULoss,
    DistributionFocalLoss,
    FocalLoss,
    GIoULoss,
    IoULoss,
    L1Loss,
    LossMetric,
    MSELoss,
    OhemCrossEntropyLoss,
    QualityFocalLoss,
    SigmoidFocalLoss,
    SmoothL1Loss,
)
from lightning_losses.presets import (
    ATSSCriterion,
    FCOSCriterion,
    GFLCriterion,
    PIDNetCriterion,
    RetinaNetCriterion,
    YOLOXCriterion,
)
from lightning_losses.registry import LOSSES, build_loss, list_losses

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "ATSSCriterion",
    "BalancedL1Loss",
    "BoundaryLoss",
    "CIoULoss",
    "CrossEntropyLoss",
    "DIoULoss",
    "DetectionLossModule",
    "DistributionFocalLoss",
    "FCOSCriterion",
    "FocalLoss",
    "GFLCriterion",
    "GIoULoss",
    "IoULoss",
    "L1Loss",
    "LossMetric",
    "MSELoss",
    "OhemCrossEntropyLoss",
    "PIDNetCriterion",
    "QualityFocalLoss",
    "RetinaNetCriterion",
    "SigmoidFocalLoss",
    "SmoothL1Loss",
    "YOLOXCriterion",
    "build_loss",
    "functional",
    "list_losses",
]

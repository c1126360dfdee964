"""Detection and segmentation losses as torchmetrics modules, detector presets and a Lightning mixin.

Every loss is a :class:`LossMetric`: calling it returns the differentiable loss, and it keeps a
running mean of what it returned that :meth:`~LossMetric.compute` gives exactly across DDP ranks.
Pure functions live in :mod:`lightning_losses.functional`. The loss classes exported here are those
declared with :func:`~lightning_losses.registry.register_loss` (see :data:`LOSSES`).
"""

from lightning_losses import compat, functional, losses  # compat registers NetsPresso's `criterion` dialect
from lightning_losses.lightning import DetectionLossModule
from lightning_losses.losses import LossMetric
from lightning_losses.presets import (
    ATSSCriterion,
    DETRCriterion,
    FCOSCriterion,
    GFLCriterion,
    PIDNetCriterion,
    RetinaNetCriterion,
    YOLOFastestCriterion,
    YOLOv8Criterion,
    YOLOXCriterion,
)
from lightning_losses.registry import LOSSES, build_loss, list_losses

__version__ = "0.1.0"

globals().update({name: getattr(losses, name) for name in losses.__all__})

__all__ = [
    "LOSSES",
    "ATSSCriterion",
    "DETRCriterion",
    "DetectionLossModule",
    "FCOSCriterion",
    "GFLCriterion",
    "LossMetric",
    "PIDNetCriterion",
    "RetinaNetCriterion",
    "YOLOFastestCriterion",
    "YOLOXCriterion",
    "YOLOv8Criterion",
    "build_loss",
    "compat",
    "functional",
    "list_losses",
    *(name for name in losses.__all__ if name != "LossMetric"),
]

"""Box operations: overlaps, coders, prior generators and padded targets."""

from lightning_losses.boxes.coders import DeltaXYWHCoder, bbox2distance, distance2bbox, integral
from lightning_losses.boxes.iou import bbox_overlaps
from lightning_losses.boxes.priors import AnchorGenerator, PointGenerator, level_indices, valid_flags
from lightning_losses.boxes.targets import PaddedTargets, pad_targets

__all__ = [
    "AnchorGenerator",
    "DeltaXYWHCoder",
    "PaddedTargets",
    "PointGenerator",
    "bbox2distance",
    "bbox_overlaps",
    "distance2bbox",
    "integral",
    "level_indices",
    "pad_targets",
    "valid_flags",
]

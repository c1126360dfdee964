"""Box operations: overlaps, coders, prior generators, padded targets and the targets derived from them."""

from lightning_losses.boxes.cache import DeviceCache, device_constant
from lightning_losses.boxes.coders import DeltaXYWHCoder, bbox2distance, distance2bbox, integral
from lightning_losses.boxes.iou import bbox_overlaps
from lightning_losses.boxes.priors import (
    AnchorGenerator,
    PointGenerator,
    flatten_levels,
    image_valid_flags,
    level_indices,
    point_priors,
    prior_strides,
    valid_flags,
)
from lightning_losses.boxes.targets import PaddedTargets, centerness_target, gather_boxes, pad_targets

__all__ = [
    "AnchorGenerator",
    "DeltaXYWHCoder",
    "DeviceCache",
    "PaddedTargets",
    "PointGenerator",
    "bbox2distance",
    "bbox_overlaps",
    "centerness_target",
    "device_constant",
    "distance2bbox",
    "flatten_levels",
    "gather_boxes",
    "image_valid_flags",
    "integral",
    "level_indices",
    "pad_targets",
    "point_priors",
    "prior_strides",
    "valid_flags",
]

"""Box overlaps for assigners and losses: the one routine lives in :mod:`lightning_losses.functional.iou`."""

from lightning_losses.functional.iou import OVERLAP_MODES, bbox_overlaps

__all__ = ["OVERLAP_MODES", "bbox_overlaps"]

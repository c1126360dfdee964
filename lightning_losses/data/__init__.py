"""A user's own detection data: COCO-format data module, transforms, and a COCO results writer.

Needs ``torchvision`` (``pip install lightning_losses[demo]``); ``lightning_losses`` itself never imports this
subpackage.
"""

from lightning_losses.data.coco import CocoAnnotations, CocoDetection, read_coco
from lightning_losses.data.collate import collate_detection
from lightning_losses.data.module import CocoDetectionDataModule
from lightning_losses.data.predictions import CocoPredictionWriter, coco_results
from lightning_losses.data.transforms import ResizePad

__all__ = [
    "CocoAnnotations",
    "CocoDetection",
    "CocoDetectionDataModule",
    "CocoPredictionWriter",
    "ResizePad",
    "coco_results",
    "collate_detection",
    "read_coco",
]

"""The embedded demo: synthetic shapes data and tiny detectors / a segmenter trained by the presets.

Needs ``torchvision`` and a COCO backend (``pip install lightning_losses[demo]``); nothing else in the
package imports this module.
"""

from lightning_losses.demo.callbacks import FitSummary
from lightning_losses.demo.data import SyntheticShapesDataModule
from lightning_losses.demo.detectors import (
    ATSSDetector,
    FCOSDetector,
    GFLDetector,
    RetinaNetDetector,
    YOLOXDetector,
)
from lightning_losses.demo.query import QueryDetector
from lightning_losses.demo.segmenter import PIDNetSegmenter
from lightning_losses.demo.yolov8 import YOLOv8Detector

__all__ = [
    "ATSSDetector",
    "FCOSDetector",
    "FitSummary",
    "GFLDetector",
    "PIDNetSegmenter",
    "QueryDetector",
    "RetinaNetDetector",
    "SyntheticShapesDataModule",
    "YOLOXDetector",
    "YOLOv8Detector",
]

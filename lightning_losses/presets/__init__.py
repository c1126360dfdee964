"""Detector criteria: every loss term of a detector, target assignment included."""

from lightning_losses.presets.atss import ATSSCriterion
from lightning_losses.presets.base import Criterion, DenseCriterion
from lightning_losses.presets.detr import DETRCriterion
from lightning_losses.presets.fcos import FCOSCriterion
from lightning_losses.presets.gfl import GFLCriterion
from lightning_losses.presets.pidnet import PIDNetCriterion
from lightning_losses.presets.retinanet import RetinaNetCriterion
from lightning_losses.presets.yolofastest import YOLOFastestCriterion
from lightning_losses.presets.yolov8 import YOLOv8Criterion
from lightning_losses.presets.yolox import YOLOXCriterion

__all__ = [
    "ATSSCriterion",
    "Criterion",
    "DETRCriterion",
    "DenseCriterion",
    "FCOSCriterion",
    "GFLCriterion",
    "PIDNetCriterion",
    "RetinaNetCriterion",
    "YOLOFastestCriterion",
    "YOLOXCriterion",
    "YOLOv8Criterion",
]

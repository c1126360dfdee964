"""Detector criteria: every loss term of a detector, target assignment included."""

from lightning_losses.presets.atss import ATSSCriterion
from lightning_losses.presets.base import DenseCriterion
from lightning_losses.presets.fcos import FCOSCriterion
from lightning_losses.presets.gfl import GFLCriterion
from lightning_losses.presets.retinanet import RetinaNetCriterion

__all__ = ["ATSSCriterion", "DenseCriterion", "FCOSCriterion", "GFLCriterion", "RetinaNetCriterion"]

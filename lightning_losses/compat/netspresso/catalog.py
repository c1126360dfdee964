"""Every NetsPresso Trainer 1.4.1 ``criterion`` this package builds: :data:`ADAPTERS` and :data:`CRITERIA`."""

from __future__ import annotations

from lightning_losses.compat.netspresso.adapter import Adapter
from lightning_losses.compat.netspresso.detection import RETINANET, YOLOFASTEST, YOLOV9, YOLOX
from lightning_losses.compat.netspresso.detr import DETR
from lightning_losses.compat.netspresso.names import NETSPRESSO_LOSSES
from lightning_losses.compat.netspresso.pose import RTMCC
from lightning_losses.compat.netspresso.segmentation import PIDNET, SEG_CROSS_ENTROPY

__all__ = ["ADAPTERS", "CRITERIA"]

ADAPTERS: dict[str, Adapter] = {
    "yolox_loss": YOLOX,
    "retinanet_loss": RETINANET,
    "pidnet_loss": PIDNET,
    "seg_cross_entropy": SEG_CROSS_ENTROPY,
    "yolofastest_loss": YOLOFASTEST,
    "rtmcc_loss": RTMCC,
    "yolov9_loss": YOLOV9,
    "detr_loss": DETR,
}
"""NetsPresso's detector and segmentation criteria: one :class:`Adapter` each."""

CRITERIA = (*NETSPRESSO_LOSSES, *ADAPTERS)
"""Every NetsPresso ``criterion`` name this package builds."""

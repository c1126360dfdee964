"""Adapters that let other libraries' detectors train with this package's criteria.

``lightning_losses.adapters.torchvision``: torchvision's RetinaNet and FCOS (torchvision is imported when an
adapter is built, never at import; ``lightning_losses`` itself never imports this subpackage).
"""

from lightning_losses.adapters.torchvision import DenseHeadOutputs, TorchvisionDenseDetector, torchvision_fcos_ranges

__all__ = ["DenseHeadOutputs", "TorchvisionDenseDetector", "torchvision_fcos_ranges"]

"""Lightning integration: the ``DetectionLossModule`` mixin."""

from lightning_losses.lightning.mixin import STAGES, DetectionLossModule, RunningMean

__all__ = ["STAGES", "DetectionLossModule", "RunningMean"]

"""NetsPresso Trainer 1.4.1's ``criterion`` names of element losses and their builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import CrossEntropyLoss, SigmoidFocalLoss

__all__ = ["NETSPRESSO_LOSSES"]


def _cross_entropy(**kwargs: Any) -> LossMetric:
    # NetsPresso's `cross_entropy` is torch.nn.CrossEntropyLoss: mean over non-ignored targets, ignore -100.
    kwargs.setdefault("ignore_index", -100)
    kwargs.setdefault("avg_non_ignore", True)
    return CrossEntropyLoss(**kwargs)


NETSPRESSO_LOSSES: dict[str, Callable[..., LossMetric]] = {
    "cross_entropy": _cross_entropy,
    "focal_loss": SigmoidFocalLoss,
}
"""NetsPresso Trainer's ``criterion`` names of element losses (they read ``out["pred"]``, ``target["target"]``)."""

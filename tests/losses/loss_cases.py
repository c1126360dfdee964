"""The contract table: for every registered loss class (by name), its constructor arguments and an input factory.

Every test that runs *all* losses through the same checks reads this table: the contract test
(``tests/losses/test_contract.py``), the hypothesis properties (``tests/losses/test_properties.py``) and the
2-rank DDP script (``tests/scripts/ddp_loss_metric.py``). A factory takes a :class:`Draw`, the source of
values, and returns ``(pred, target, weight)`` (``weight`` ``None`` for losses that take none). With
:class:`TorchDraw` the values are moderate and seeded; the property tests pass a hypothesis-backed draw
that reaches logits of ±1e4 and zero-area or point boxes. A registered loss without an entry here fails
``test_contract.py::test_the_table_covers_every_registered_loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from lightning_losses import LossMetric
from lightning_losses.registry import LOSSES

__all__ = ["CASES", "Draw", "Inputs", "LossCase", "TorchDraw", "loss_class", "registered_names"]

Inputs = tuple[Any, Any, Tensor | None]
"""``(pred, target, weight)``; ``pred`` is a tensor or a tuple of tensors (one per axis)."""


class Draw(Protocol):
    """Where a factory's values come from; every method returns float32 (labels int64) CPU tensors."""

    def logits(self, *shape: int) -> Tensor: ...
    def values(self, *shape: int) -> Tensor: ...
    def unit(self, *shape: int) -> Tensor: ...
    def labels(self, high: int, *shape: int) -> Tensor: ...
    def weights(self, *shape: int) -> Tensor: ...
    def boxes(self, n: int) -> Tensor: ...


class TorchDraw:
    """Seeded moderate values: logits N(0, 2²), weights in [0.1, 1], well-formed boxes of sides 4–12 px."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def logits(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.generator) * 2

    def values(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.generator) * 2

    def unit(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator)

    def labels(self, high: int, *shape: int) -> Tensor:
        return torch.randint(0, high, shape, generator=self.generator)

    def weights(self, *shape: int) -> Tensor:
        return 0.1 + 0.9 * torch.rand(shape, generator=self.generator)

    def boxes(self, n: int) -> Tensor:
        xy = torch.rand(n, 2, generator=self.generator) * 8  # two such boxes mostly overlap, IoU anywhere in (0, 1)
        wh = 4 + torch.rand(n, 2, generator=self.generator) * 8
        return torch.cat([xy, xy + wh], dim=1)


@dataclass(frozen=True)
class LossCase:
    """``init``: constructor arguments (besides ``loss_weight``); ``inputs``: the factory."""

    inputs: Callable[[Draw], Inputs]
    init: dict[str, Any] = field(default_factory=dict)


def _box_pair(d: Draw) -> Inputs:
    return d.boxes(6), d.boxes(6), d.weights(6)


def _regression(d: Draw) -> Inputs:
    return d.values(6, 4), d.values(6, 4), d.weights(6, 4)


N, C = 6, 3  # rows and classes of the classification cases
CASES: dict[str, LossCase] = {
    # labels in [0, C]: C is the background
    "FocalLoss": LossCase(lambda d: (d.logits(N, C), d.labels(C + 1, N), d.weights(N))),
    "SigmoidFocalLoss": LossCase(lambda d: (d.logits(N, C), d.labels(2, N, C).float(), d.weights(N, C))),
    "QualityFocalLoss": LossCase(lambda d: (d.logits(N, C), (d.labels(C + 1, N), d.unit(N)), d.weights(N))),
    "VarifocalLoss": LossCase(lambda d: (d.logits(N, C), d.unit(N, C) * d.labels(2, N, C), d.weights(N, C))),
    "CrossEntropyLoss": LossCase(lambda d: (d.logits(N, C), d.labels(C, N), d.weights(N))),
    # 5 bins: targets in [0, 4], GFL keeps them below 4 - 0.1
    "DistributionFocalLoss": LossCase(lambda d: (d.logits(N, 5), 3.9 * d.unit(N), d.weights(N))),
    "IoULoss": LossCase(_box_pair),
    "GIoULoss": LossCase(_box_pair),
    "DIoULoss": LossCase(_box_pair),
    "CIoULoss": LossCase(_box_pair),
    "YOLOCIoULoss": LossCase(_box_pair),
    "L1Loss": LossCase(_regression),
    "SmoothL1Loss": LossCase(_regression),
    "MSELoss": LossCase(_regression),
    "BalancedL1Loss": LossCase(_regression),
    # 2 images of 4 x 4 pixels, 3 classes; min_kept below the pixel count so the OHEM selection matters
    "OhemCrossEntropyLoss": LossCase(
        lambda d: (d.logits(2, C, 4, 4), d.labels(C, 2, 4, 4), None), {"thres": 0.7, "min_kept": 8}
    ),
    "BoundaryLoss": LossCase(lambda d: (d.logits(2, 1, 4, 4), d.labels(2, 2, 4, 4), None)),
    # SimCC: 2 instances x 3 keypoints, 8 x-bins and 6 y-bins; RTMPose's settings
    "KLDiscretLoss": LossCase(
        lambda d: ((d.logits(2, 3, 8), d.logits(2, 3, 6)), (d.unit(2, 3, 8), d.unit(2, 3, 6)), d.weights(2, 3)),
        {"beta": 10.0, "label_softmax": True},
    ),
}


def loss_class(name: str) -> type[LossMetric]:
    """The class a registered name builds (a factory such as NetsPresso's ``cross_entropy`` is called once)."""
    builder = LOSSES[name]
    return builder if isinstance(builder, type) else type(builder())


def registered_names() -> list[str]:
    """Every name the package registers (names a test registered for itself are left out)."""
    return sorted(name for name, builder in LOSSES.items() if builder.__module__.startswith("lightning_losses."))

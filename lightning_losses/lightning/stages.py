"""What :class:`~lightning_losses.DetectionLossModule` keeps per stage, and the stage a trainer runs."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_losses.losses.base import LossMetric

__all__ = ["STAGES", "STAGE_SLOTS", "RunningMean", "StageLosses", "remap_old_layout", "trainer_stage"]

STAGES = ("train", "val", "test")
# Each stage's container sits under these keys: ``train`` is an nn.Module method, so no ModuleDict key.
STAGE_SLOTS = {"train": "fit", "val": "val", "test": "test"}


class RunningMean(LossMetric):
    """A running mean of tracked values with the ``LossMetric`` states (for totals and plain-tensor terms).

    Example:
        >>> mean = RunningMean()
        >>> _ = mean(torch.tensor(1.0)), mean(torch.tensor(4.0))
        >>> mean.compute()
        tensor(2.5000)
    """

    def __init__(self) -> None:
        super().__init__()

    def forward(self, value: Tensor) -> Tensor:  # type: ignore[override]
        self.track(value)
        return value


class StageLosses(nn.Module):
    """One stage's copy of the criteria, the running mean of their weighted total, and a running mean for
    each term that no ``LossMetric`` of its criterion tracks.

    Those running means are made on first use and sit under indices (``"0"``, ``"1"``, …) recorded in
    :attr:`term_slots`, so a term may have any name (``loss_mse``, ``reg/l2``, ``a.b``). They hold no
    persistent state: ``state_dict`` keys come from the criteria alone.

    Args:
        criteria: the criteria by name; one unnamed criterion sits under ``"criterion"``.
        single: one unnamed criterion (its terms log as ``{stage}/{term}``, not ``{stage}/{name}/{term}``).
    """

    def __init__(self, criteria: Mapping[str, nn.Module], single: bool) -> None:
        super().__init__()
        self.criteria = nn.ModuleDict(criteria)
        self.single = single
        self.total = RunningMean()
        self.term_means = nn.ModuleDict()
        self.term_slots: dict[str, str] = {}

    def term_mean(self, key: str, device: torch.device) -> RunningMean:
        """The running mean of the term logged as ``key``, made on ``device`` the first time."""
        slot = self.term_slots.get(key)
        if slot is None:
            slot = str(len(self.term_slots))
            self.term_means[slot] = RunningMean().to(device)
            self.term_slots[key] = slot
        return self.term_means[slot]  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"single={self.single}, term_slots={self.term_slots}"


def trainer_stage(trainer: Any) -> str | None:
    """``train``, ``val``, ``test`` or ``predict`` from a trainer's public state; ``None`` when it runs none.

    A sanity check is validation. Flags a trainer lacks (Fabric's stand-in) count as not set.
    """
    if getattr(trainer, "sanity_checking", False) or getattr(trainer, "validating", False):
        return "val"
    if getattr(trainer, "training", False):
        return "train"
    if getattr(trainer, "testing", False):
        return "test"
    if getattr(trainer, "predicting", False):
        return "predict"
    return None


def remap_old_layout(state_dict: MutableMapping[str, Any], prefix: str) -> None:
    """Rename, in place, keys of the layout before :class:`StageLosses`: ``criteria.{slot}.{name}.…`` (one
    ``ModuleDict`` of criteria per stage) becomes ``loss_stages.{slot}.criteria.{name}.…``."""
    old = f"{prefix}criteria."
    for key in [k for k in state_dict if k.startswith(old)]:
        slot, _, rest = key[len(old) :].partition(".")
        if slot in STAGE_SLOTS.values() and rest:
            state_dict[f"{prefix}loss_stages.{slot}.criteria.{rest}"] = state_dict.pop(key)

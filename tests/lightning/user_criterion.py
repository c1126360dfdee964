"""A user's own criteria (plain nn.Modules, no RecordsInit), importable by class_path for checkpoint tests."""

from __future__ import annotations

import torch
from torch import nn


class WithRegulariser(nn.Module):
    """Wraps a preset and adds an L2 term on the head outputs: arguments kept as same-named attributes."""

    def __init__(self, inner: nn.Module, reg: float = 0.0) -> None:
        super().__init__()
        self.inner = inner
        self.reg = reg

    def forward(self, maps, targets, **kwargs):
        terms = dict(self.inner(maps, targets, **kwargs))
        terms["loss_reg"] = self.reg * sum(m.float().pow(2).mean() for m in maps)
        return terms


class Opaque(WithRegulariser):
    """Keeps `reg` under another name: its arguments cannot be read back."""

    def __init__(self, inner: nn.Module, strength: float = 0.0) -> None:
        super().__init__(inner, reg=strength)
        self.extra = torch.nn.Parameter(torch.zeros(1))
        self.strength_squared = strength**2

"""The demo models' optimiser: AdamW with a linear warm-up and a cosine decay over the whole fit."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["adamw_cosine", "warmup_cosine"]


def warmup_cosine(step: int, total: int, warmup: int, final: float = 0.05) -> float:
    r"""Learning-rate factor at ``step``: linear to 1 over ``warmup`` steps, then cosine down to ``final`` at ``total``.

    .. math::
        f(t) = \frac{t + 1}{T_w} \ (t < T_w), \qquad
        f(t) = f_{end} + \frac{1 - f_{end}}{2}\Bigl(1 + \cos\frac{\pi (t - T_w)}{T - T_w}\Bigr) \ (t \ge T_w)

    Example:
        >>> [round(warmup_cosine(t, total=10, warmup=2), 3) for t in (0, 1, 2, 10)]
        [0.5, 1.0, 1.0, 0.05]
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_cosine(module: nn.Module, lr: float, weight_decay: float, max_warmup: int = 50) -> Any:
    """``AdamW(lr, weight_decay)`` on ``module``'s parameters, with a per-step :func:`warmup_cosine` schedule.

    The schedule spans the attached trainer's ``estimated_stepping_batches`` (which follows ``max_epochs``,
    ``max_steps`` and ``limit_train_batches``); the warm-up is a tenth of that, at most ``max_warmup`` steps.
    Without a trainer, or with an unbounded fit, the learning rate stays constant.

    Args:
        module: the model (a ``LightningModule`` for the trainer lookup).
        lr: peak learning rate.
        weight_decay: AdamW's decoupled weight decay.
        max_warmup: longest warm-up in steps.

    Returns:
        What ``configure_optimizers`` returns: the optimiser, or a dict with it and a step-interval scheduler.
    """
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    trainer = getattr(module, "_trainer", None)
    total = trainer.estimated_stepping_batches if trainer is not None else math.inf
    if not math.isfinite(total):
        return optimizer
    total = max(1, int(total))
    warmup = max(1, min(max_warmup, total // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

"""``FitSummary``: one line (and a JSON file) with the validation metrics at the end of a fit."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from torch import Tensor

__all__ = ["FitSummary"]


class FitSummary(L.Callback):
    """Print ``summary: epoch=E val/loss=… val/map_50=…`` at the end of ``fit`` and save it as ``summary.json``.

    Every ``val/…`` key of ``trainer.callback_metrics`` appears, sorted, with 4 decimals; ``epoch`` is the
    number of epochs run. The values go to ``<trainer.log_dir>/summary.json`` when the trainer has a logger
    with a log directory. Only global rank 0 prints and writes.

    Args:
        prefix: the metric key prefix to report.
    """

    def __init__(self, prefix: str = "val/") -> None:
        super().__init__()
        self.prefix = prefix

    def summary(self, trainer: L.Trainer) -> dict[str, float]:
        """``{"epoch": E, key: value}`` for every ``prefix`` key of the trainer's callback metrics."""
        metrics = trainer.callback_metrics
        values: dict[str, float] = {"epoch": int(trainer.current_epoch)}
        for key in sorted(k for k in metrics if k.startswith(self.prefix)):
            value = metrics[key]
            values[key] = float(value.item() if isinstance(value, Tensor) else value)
        return values

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        values = self.summary(trainer)
        fields = " ".join(f"{key}={value:.4f}" for key, value in values.items() if key != "epoch")
        print(f"summary: epoch={values['epoch']} {fields}".rstrip())
        log_dir = trainer.log_dir if trainer.loggers else None
        if log_dir:
            path = Path(log_dir) / "summary.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values, indent=2) + "\n")

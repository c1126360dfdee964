"""``lightning-losses``: LightningCLI over any LightningModule / LightningDataModule, W&B-aware.

    lightning-losses fit --config configs/retinanet.yaml
    lightning-losses fit --config configs/retinanet.yaml --model.criterion.init_args.loss_cls.init_args.gamma=1.5
    python -m lightning_losses fit --config configs/fcos.yaml --print_config

Model and data are given by ``class_path`` (subclass mode), so a user's own model works the same way.
The resolved configuration is saved beside the run (overwritten on a re-run) and stored as the W&B
run config; W&B loss summaries are set to their minimum.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from lightning_losses.lightning.mixin import STAGES, DetectionLossModule

__all__ = ["LossesCLI", "SaveAndLogConfig", "main"]


class SaveAndLogConfig(SaveConfigCallback):
    """Save ``config.yaml`` to the log directory and hand the resolved config to W&B."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                run.config.update(self.config.as_dict(), allow_val_change=True)
                _minimum_summaries(run, pl_module)


def _minimum_summaries(run: Any, pl_module: L.LightningModule) -> None:
    """Loss summaries at their minimum. WandbLogger already defines ``*`` (with its step metric), and of two
    matching globs W&B applies one at random, so the loss keys are defined by exact name where the model
    can list them (:meth:`DetectionLossModule.loss_log_keys`); a glob per stage otherwise."""
    keys = pl_module.loss_log_keys() if isinstance(pl_module, DetectionLossModule) else None
    for key in keys or [f"{stage}/*loss*" for stage in STAGES]:
        run.define_metric(key, step_metric="trainer/global_step", step_sync=True, summary="min")


class LossesCLI(LightningCLI):
    """LightningCLI with subclass mode for model and data, and a config saved on every run."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", SaveAndLogConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            **kwargs,
        )


def main(args: Any = None) -> None:
    """Entry point of ``lightning-losses`` and ``python -m lightning_losses``."""
    os.environ.setdefault("WANDB_SILENT", "true")
    LossesCLI(args=args)


if __name__ == "__main__":
    main()

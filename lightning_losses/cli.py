"""``lightning-losses``: LightningCLI over any LightningModule / LightningDataModule, W&B-aware.

    lightning-losses fit --config configs/retinanet.yaml
    lightning-losses fit --config configs/retinanet.yaml --model.criterion.init_args.loss_cls.init_args.gamma=1.5
    python -m lightning_losses fit --config configs/fcos.yaml --print_config

Model and data are given by ``class_path`` (subclass mode), so a user's own model works the same way.
The class count is set once, by the data: a data module's ``num_classes`` attribute is linked into
``model.init_args.num_classes`` and ``model.init_args.criterion.init_args.num_classes`` (where the model and
its criterion take one), and a config that gives either a different value is refused.
The resolved configuration is saved beside the run (overwritten on a re-run) and stored as the W&B
run config; W&B loss summaries keep their minimum and their last value.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from lightning_losses.lightning.mixin import STAGES, DetectionLossModule

__all__ = ["NUM_CLASSES_TARGETS", "LossesCLI", "SaveAndLogConfig", "main"]

# Where the data module's `num_classes` goes; a link whose target a model lacks is skipped.
NUM_CLASSES_TARGETS = ("model.init_args.num_classes", "model.init_args.criterion.init_args.num_classes")


class SaveAndLogConfig(SaveConfigCallback):
    """Save ``config.yaml`` to the log directory and hand the resolved config to W&B."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                run.config.update(self.config.as_dict(), allow_val_change=True)
                _minimum_summaries(run, pl_module)


def _minimum_summaries(run: Any, pl_module: L.LightningModule) -> None:
    """Loss summaries hold their minimum and their last value.

    WandbLogger already defines ``*`` (with its step metric), and of two matching globs W&B applies one at
    random, so the loss keys are defined by exact name where the model can list them
    (:meth:`DetectionLossModule.loss_log_keys`); a glob per stage otherwise."""
    keys = pl_module.loss_log_keys() if isinstance(pl_module, DetectionLossModule) else None
    for key in keys or [f"{stage}/*loss*" for stage in STAGES]:
        run.define_metric(key, step_metric="trainer/global_step", step_sync=True, summary="min,last")


class LossesCLI(LightningCLI):
    """LightningCLI with subclass mode for model and data, one class count, and a config saved on every run.

    ``data.num_classes`` (an attribute of the built data module; a module without one links nothing) is
    linked on instantiation into :data:`NUM_CLASSES_TARGETS`, so configs leave the count out of the model
    and the criterion. A count given there anyway must equal the data's, or a ``ValueError`` names both.
    A subclass overriding :meth:`add_arguments_to_parser` calls ``super().add_arguments_to_parser(parser)``
    to keep the links.
    """

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

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for target in NUM_CLASSES_TARGETS:
            parser.link_arguments("data.num_classes", target, apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # The links overwrite the targets; what the user wrote there is read from a parse without defaults.
        if isinstance(args, (dict, Namespace)):
            given = parser.parse_object(args, defaults=False)
        else:
            given = parser.parse_args(args, defaults=False)
        prefix = f"{given.get('subcommand')}." if given.get("subcommand") else ""
        self._given_num_classes = {key: given.get(prefix + key) for key in NUM_CLASSES_TARGETS}

    def instantiate_classes(self) -> None:
        # A target the config lacks (a model without `num_classes`, a criterion that is None or takes no count)
        # is unlinked: jsonargparse skips it, but Lightning would still write it into the model's hparams.
        config = self.config.get(str(self.subcommand), self.config)
        links = getattr(self._parser(self.subcommand), "_links_group", None)
        if links is not None:
            absent = {key for key in NUM_CLASSES_TARGETS if key not in config}
            links._group_actions[:] = [a for a in links._group_actions if getattr(a, "target", ("",))[0] not in absent]
        super().instantiate_classes()
        count = getattr(self.datamodule, "num_classes", None)
        if count is None:
            return
        for key, value in getattr(self, "_given_num_classes", {}).items():
            if value is not None and value != count:
                raise ValueError(
                    f"`{key}` is {value} in the config, but the data module {type(self.datamodule).__name__} has "
                    f"num_classes={count}; the class count comes from the data: leave `{key}` out"
                )
        # The run config (W&B) shows the linked values, not the defaults parsed before the links.
        for key in NUM_CLASSES_TARGETS:
            if key in config:
                config[key] = count


def main(args: Any = None) -> None:
    """Entry point of ``lightning-losses`` and ``python -m lightning_losses``."""
    os.environ.setdefault("WANDB_SILENT", "true")
    LossesCLI(args=args)


if __name__ == "__main__":
    main()

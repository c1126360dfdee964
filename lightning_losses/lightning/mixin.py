"""``DetectionLossModule``: a LightningModule mixin that computes and logs every loss term of a criterion."""

from __future__ import annotations

import copy
import inspect
import re
import types
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torchmetrics import Metric

from lightning_losses.lightning.stages import (
    STAGE_SLOTS,
    STAGES,
    RunningMean,
    StageLosses,
    remap_old_layout,
    trainer_stage,
)
from lightning_losses.losses.base import LossMetric
from lightning_losses.serialization import from_config, init_config, to_config

__all__ = ["STAGES", "DetectionLossModule", "RunningMean"]


class DetectionLossModule:
    """Mixin for a ``LightningModule``: one call computes, sums and logs every loss term of a criterion.

    Use it before ``LightningModule`` in the bases::

        class MyDetector(DetectionLossModule, L.LightningModule):
            def __init__(self, criterion: nn.Module):
                super().__init__(criterion=criterion)
                ...

            def training_step(self, batch, batch_idx):
                images, targets = batch
                return self.compute_losses(self(images), targets)

    ``criterion`` is one criterion (a preset such as :class:`~lightning_losses.RetinaNetCriterion`, or any
    ``nn.Module`` whose ``forward`` returns a non-empty dict of scalar tensors) or a mapping of named
    criteria for a multi-task model, with optional ``criterion_weights``.

    :meth:`compute_losses` calls the stage's copy of the criterion on ``outputs`` (a tuple of its
    positional inputs or a mapping of keyword inputs) and ``targets``; for a criterion whose ``forward`` takes
    the head's outputs as one list of levels (``takes_level_list = True``: YOLOX, YOLO-Fastest, YOLOv8) a list
    of level maps is that one input (see :meth:`compute_losses`), logs each term as
    ``{stage}/{term}`` (``{stage}/{name}/{term}`` with several criteria) and the total as
    ``{stage}/loss``, and returns the total to backpropagate. A term is logged as the ``LossMetric``
    that produced it when the criterion names one (:meth:`~lightning_losses.presets.Criterion.term_metrics`),
    otherwise as a running mean the mixin keeps for it; either way the step value is that step's and the
    epoch value the exact mean over every step of every rank, synchronised once per epoch (no collective
    per step). Train logs on step and epoch, val / test on epoch. ``{stage}/loss`` goes to the progress bar
    only with ``log_prog_bar=True`` (a class attribute, or the constructor argument): Lightning reads every
    progress-bar value back to the host on every step, two device syncs a step on a GPU, so it is opt-in.
    A term should come from the same place
    for a whole epoch: criteria switch terms on or off between epochs (YOLOX's ``l1_activate_epoch``).

    The stage comes from the trainer's public state: ``training`` is ``train``; ``validating`` and
    ``sanity_checking`` are ``val``; ``testing`` is ``test``. While the trainer predicts,
    :meth:`compute_losses` returns the total from the test copy and logs nothing (Lightning allows no
    logging in ``predict_step``); the copy's running means are reset afterwards, so a later test epoch
    starts clean. Without a trainer (or one running no stage) the stage is ``train``.

    What it uses of Lightning: ``self.trainer`` (stage and epoch, when attached), ``self.log``, module
    attributes, and one hook, ``on_save_checkpoint``, which stores criteria found in
    ``hyper_parameters`` as ``class_path`` dicts so ``load_from_checkpoint`` works with
    ``weights_only=True`` (call ``super().on_save_checkpoint(checkpoint)`` if you override it). A model
    keeps its own ``training_step``, ``configure_optimizers`` and other hooks. Criteria with
    ``set_epoch`` (YOLOX's ``l1_activate_epoch``) receive ``current_epoch + 1`` (1-based) on every call.
    Each stage has its own copy of the criterion (``loss_stages``, one
    :class:`~lightning_losses.lightning.stages.StageLosses` per stage), so epoch means never mix stages;
    loss states are not saved in checkpoints, and ``state_dict`` keys of the earlier layout
    (``criteria.{fit,val,test}.{name}.…``) still load.
    """

    loss_stages: nn.ModuleDict
    criterion_weights: dict[str, float]
    log_prog_bar: bool = False
    """Show ``{stage}/loss`` in the progress bar (Lightning then reads it back to the host every step)."""

    def __init__(
        self,
        *args: Any,
        criterion: nn.Module | Mapping[str, nn.Module] | None = None,
        criterion_weights: Mapping[str, float] | None = None,
        log_prog_bar: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if log_prog_bar is not None:
            self.log_prog_bar = bool(log_prog_bar)
        if criterion is not None:
            self.set_criterion(criterion, criterion_weights)

    def set_criterion(
        self, criterion: nn.Module | Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        """Install ``criterion`` (or named criteria with ``weights``), one copy per stage.

        A ``class_path`` / ``init_args`` dict (how checkpoints store criteria) is built first.
        """
        criterion = from_config(criterion)
        single = isinstance(criterion, nn.Module) and not isinstance(criterion, nn.ModuleDict)
        if single:
            named: dict[str, nn.Module] = {"": criterion}
        elif isinstance(criterion, Mapping):
            if not criterion:
                raise ValueError("`criterion` is an empty mapping")
            named = dict(criterion)
            for name, module in named.items():
                if not isinstance(module, nn.Module):
                    raise TypeError(f"`criterion[{name!r}]` must be an nn.Module, got {type(module).__name__}")
        else:
            raise TypeError(f"`criterion` must be an nn.Module or a mapping of them, got {type(criterion).__name__}")
        dotted = [name for name in named if "." in name]
        if dotted:
            raise ValueError(f"criterion names cannot contain '.', got {dotted}")
        weights = dict(weights or {})
        unknown = set(weights) - set(named)
        if unknown:
            raise ValueError(f"`criterion_weights` names unknown criteria {sorted(unknown)}; known: {sorted(named)}")
        self.criterion_weights = {name: float(weights.get(name, 1.0)) for name in named}
        self.loss_stages = nn.ModuleDict(
            {
                STAGE_SLOTS[stage]: StageLosses(
                    {
                        name or "criterion": module if stage == "train" else copy.deepcopy(module)
                        for name, module in named.items()
                    },
                    single,
                )
                for stage in STAGES
            }
        )

    def stage_criteria(self, stage: str) -> nn.ModuleDict:
        """The criteria of ``stage`` (``train``, ``val`` or ``test``), keyed by name (``criterion`` for one)."""
        return self._stage_losses(stage).criteria

    def loss_log_keys(self) -> list[str] | None:
        """Every key :meth:`compute_losses` logs (train keys with Lightning's ``_step`` / ``_epoch`` suffixes),
        from the criteria's declared ``terms``; ``None`` when a criterion does not declare them."""
        if not hasattr(self, "loss_stages"):
            return None
        keys = []
        for stage in STAGES:
            losses = self._stage_losses(stage)
            names = [f"{stage}/loss"]
            for name, criterion in losses.criteria.items():
                terms = getattr(criterion, "terms", None)
                if not terms:
                    return None
                names += [_prefix(stage, name, losses.single) + term for term in terms]
            keys += [f"{n}{suffix}" for n in names for suffix in (("_step", "_epoch") if stage == "train" else ("",))]
        return keys

    @property
    def criterion(self) -> nn.Module:
        """The training copy of the (single) criterion."""
        modules = self.stage_criteria("train")
        if len(modules) != 1:
            raise AttributeError("several criteria are installed: use `stage_criteria('train')[name]`")
        return next(iter(modules.values()))

    def current_stage(self) -> str:
        """``train``, ``val`` or ``test`` from the attached trainer (``test`` while it predicts, ``train``
        without one or while it runs no stage)."""
        stage = trainer_stage(self._attached_trainer())
        return "test" if stage == "predict" else stage or "train"

    def compute_losses(
        self,
        outputs: Sequence[Any] | Mapping[str, Any],
        targets: Any,
        stage: str | None = None,
        **criterion_kwargs: Any,
    ) -> Tensor:
        """Compute every term of the stage's criteria, log them and return the weighted total.

        Args:
            outputs: the criterion's inputs before ``targets``: a tuple (passed as ``*outputs``) or a
                mapping (``**outputs``). With several criteria, a mapping from criterion name to that. For a
                criterion with ``takes_level_list = True`` the model's list of levels may be given as it is
                (``[map_0, map_1, …]``, or per-level tuples ``[(cls, box, obj), …]``): it is passed as the one
                ``outputs`` argument. A one-element sequence holding a list (``([map_0, …],)``) is the positional
                form and is passed as it is, so a one-level model of per-level tuples gives ``([(cls, box, obj)],)``.
            targets: the criterion's targets; with several criteria, a mapping from name to targets, or
                one value shared by all.
            stage: ``train``, ``val`` or ``test``; inferred from the trainer when ``None``. While the
                trainer predicts nothing is logged and the stage's running means are reset after the call.
            criterion_kwargs: extra keyword arguments for every criterion (``image_size=…``).
        """
        if not hasattr(self, "loss_stages"):
            raise RuntimeError("no criterion installed: pass `criterion=` to __init__ or call set_criterion()")
        trainer = self._attached_trainer()
        predicting = trainer_stage(trainer) == "predict"
        stage = stage or self.current_stage()
        losses = self._stage_losses(stage)
        epoch = getattr(trainer, "current_epoch", None)
        total: Tensor | None = None
        for name, criterion in losses.criteria.items():
            if epoch is not None and hasattr(criterion, "set_epoch"):
                criterion.set_epoch(int(epoch) + 1)
            inputs = outputs if losses.single else _pick(outputs, name, "outputs")
            target = targets if losses.single or not _is_named(targets, losses.criteria) else targets[name]
            args, kwargs = ([], dict(inputs)) if isinstance(inputs, Mapping) else (_positional(criterion, inputs), {})
            terms = criterion(*args, target, **kwargs, **criterion_kwargs)
            if not isinstance(terms, Mapping) or not terms:
                raise TypeError(f"criterion {type(criterion).__name__} must return a non-empty dict of loss terms")
            for term, value in terms.items():
                if not isinstance(value, Tensor):
                    raise TypeError(
                        f"criterion {type(criterion).__name__} returned {type(value).__name__} for term {term!r}; "
                        "expected a scalar tensor"
                    )
            if not predicting:
                self._log_terms(losses, stage, name, criterion, terms)
            weighted = sum(terms.values()) * self.criterion_weights["" if losses.single else name]
            total = weighted if total is None else total + weighted
        assert total is not None
        if predicting:
            for module in losses.criteria.modules():
                if isinstance(module, Metric):
                    module.reset()
        else:
            losses.total(total.detach())
            self._log_metric(f"{stage}/loss", losses.total, stage, prog_bar=self.log_prog_bar)
        return total

    def save_hyperparameters(self, *args: Any, frame: types.FrameType | None = None, **kwargs: Any) -> None:
        """Lightning's ``save_hyperparameters``, without its advice to ignore criteria and losses.

        Lightning warns that an ``nn.Module`` hyperparameter "is already saved during checkpointing" and should
        be ignored. For a criterion that is only half true: its weights are in the ``state_dict``, but
        ``load_from_checkpoint`` needs the constructor arguments to build it first. :meth:`on_save_checkpoint`
        stores every module that :func:`~lightning_losses.serialization.init_config` can describe as a
        ``class_path`` config (loadable with ``weights_only=True``), so the warning is dropped for those; for a
        module it cannot describe, it is replaced by one that says how to make it describable.
        """
        frame = frame or _caller_frame()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            super().save_hyperparameters(*args, frame=frame, **kwargs)  # type: ignore[misc]
        hparams = getattr(self, "hparams", {})
        for warning in caught:
            match = re.match(r"Attribute '(.+)' is an instance of `nn.Module`", str(warning.message))
            if match and match.group(1) in hparams:
                name = match.group(1)
                if init_config(hparams[name]) is not None:
                    continue
                warnings.warn(
                    f"hyperparameter {name!r} ({type(hparams[name]).__name__}) cannot be stored as a class_path "
                    "config, so load_from_checkpoint cannot rebuild it: define its class at module level, keep each "
                    "__init__ argument as an attribute of the same name, or subclass "
                    "lightning_losses.serialization.RecordsInit",
                    UserWarning,
                    stacklevel=2,
                )
                continue
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store criteria in ``hyper_parameters`` as ``class_path`` dicts, loadable with ``weights_only=True``."""
        super_hook = getattr(super(), "on_save_checkpoint", None)
        if super_hook is not None:
            super_hook(checkpoint)
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = to_config(checkpoint["hyper_parameters"])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A model of its own with a `criteria` child keeps its keys; otherwise they are the earlier layout's.
        if "criteria" not in dict(self.named_children()):  # type: ignore[attr-defined]
            remap_old_layout(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]

    def _stage_losses(self, stage: str) -> StageLosses:
        if stage not in STAGES:
            raise ValueError(f"`stage` must be one of {STAGES}, got {stage!r}")
        return self.loss_stages[STAGE_SLOTS[stage]]  # type: ignore[return-value]

    def _attached_trainer(self) -> Any:
        try:
            return self.trainer  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):  # not attached (RuntimeError), or no LightningModule
            return None

    def _log_terms(
        self, losses: StageLosses, stage: str, name: str, criterion: nn.Module, terms: Mapping[str, Tensor]
    ) -> None:
        """Log each term as the criterion's metric of it, or as the running mean the stage keeps for it."""
        term_metrics = getattr(criterion, "term_metrics", None)
        provided = term_metrics() if callable(term_metrics) else {}
        prefix = _prefix(stage, name, losses.single)
        for term, value in terms.items():
            key = prefix + term
            metric = provided.get(term)
            if not isinstance(metric, LossMetric):
                metric = losses.term_mean(key, value.device)
                metric(value.detach())
            self._log_metric(key, metric, stage)

    def _log_metric(self, key: str, metric: LossMetric, stage: str, prog_bar: bool = False) -> None:
        train = stage == "train"
        # `metric_attribute` is the key itself. Lightning only compares it between calls, so a key may be logged
        # through the criterion's metric in one epoch and the stage's running mean in another; it also spares
        # Lightning's lookup of metric attributes, made once per run, which misses running means made later.
        self.log(key, metric, on_step=train, on_epoch=True, prog_bar=prog_bar, metric_attribute=key)  # type: ignore[attr-defined]


def _caller_frame() -> types.FrameType | None:
    # The frame of the __init__ that called save_hyperparameters: Lightning reads its arguments there.
    frame = inspect.currentframe()
    return frame.f_back.f_back if frame is not None and frame.f_back is not None else None


def _prefix(stage: str, name: str, single: bool) -> str:
    """Logged keys: ``{stage}/{term}``, or ``{stage}/{name}/{term}`` with several criteria."""
    return f"{stage}/" if single else f"{stage}/{name}/"


def _positional(criterion: nn.Module, inputs: Sequence[Any]) -> list[Any]:
    """The positional inputs: ``inputs`` itself as one argument when it is a criterion's list of levels."""
    if getattr(criterion, "takes_level_list", False) and (len(inputs) != 1 or isinstance(inputs[0], Tensor)):
        return [inputs]
    return list(inputs)


def _is_named(value: Any, criteria: nn.ModuleDict) -> bool:
    return isinstance(value, Mapping) and set(value) == set(criteria.keys())


def _pick(outputs: Any, name: str, what: str) -> Any:
    if not isinstance(outputs, Mapping) or name not in outputs:
        raise ValueError(
            f"with several criteria, `{what}` must map each criterion name to its inputs; missing {name!r}"
        )
    return outputs[name]

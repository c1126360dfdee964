"""``DetectionLossModule``: a LightningModule mixin that computes and logs every loss term of a criterion."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_losses.losses.base import LossMetric
from lightning_losses.serialization import from_config, to_config

__all__ = ["STAGES", "DetectionLossModule", "RunningMean"]

STAGES = ("train", "val", "test")
# ModuleDict keys cannot shadow nn.Module attributes such as `train`.
_SLOT = {"train": "fit", "val": "val", "test": "test"}
_STAGE_OF = {"train": "train", "validate": "val", "sanity_check": "val", "test": "test", "predict": "test"}


class RunningMean(LossMetric):
    """A running mean of tracked values with the ``LossMetric`` states (for totals and plain-tensor terms)."""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, value: Tensor) -> Tensor:  # type: ignore[override]
        self.track(value)
        return value


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

    ``criterion`` is one criterion (a preset such as :class:`~lightning_losses.RetinaNetCriterion`) or a
    mapping of named criteria for a multi-task model, with optional ``criterion_weights``.

    :meth:`compute_losses` calls the stage's copy of the criterion on ``outputs`` (a tuple of its
    positional inputs or a mapping of keyword inputs) and ``targets``, logs each term as
    ``{stage}/{term}`` (``{stage}/{name}/{term}`` with several criteria) and the total as
    ``{stage}/loss``, and returns the total to backpropagate. Terms are logged as the criterion's own
    ``LossMetric`` objects: the step value is that step's, the epoch value the exact mean over every step
    of every rank, synchronised once per epoch (no collective per step). Train logs on step and epoch,
    val / test on epoch.

    What it uses of Lightning: ``self.trainer`` (stage and epoch, when attached), ``self.log``, module
    attributes, and one hook, ``on_save_checkpoint``, which stores criteria found in
    ``hyper_parameters`` as ``class_path`` dicts so ``load_from_checkpoint`` works with
    ``weights_only=True`` (call ``super().on_save_checkpoint(checkpoint)`` if you override it). A model
    keeps its own ``training_step``, ``configure_optimizers`` and other hooks. Criteria with
    ``set_epoch`` (YOLOX's ``l1_activate_epoch``) receive ``current_epoch + 1`` (1-based) on every call.
    Each stage has its own copy of the criterion, so epoch means never mix stages; loss states are not
    saved in checkpoints.
    """

    criteria: nn.ModuleDict
    criterion_weights: dict[str, float]

    def __init__(
        self,
        *args: Any,
        criterion: nn.Module | Mapping[str, nn.Module] | None = None,
        criterion_weights: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if criterion is not None:
            self.set_criterion(criterion, criterion_weights)

    def set_criterion(
        self, criterion: nn.Module | Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        """Install ``criterion`` (or named criteria with ``weights``), one copy per stage.

        A ``class_path`` / ``init_args`` dict (how checkpoints store criteria) is built first.
        """
        criterion = from_config(criterion)
        if isinstance(criterion, nn.Module) and not isinstance(criterion, nn.ModuleDict):
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
        copies = {
            stage: {_key(name): module if stage == "train" else copy.deepcopy(module) for name, module in named.items()}
            for stage in STAGES
        }
        self.criteria = nn.ModuleDict({_SLOT[stage]: nn.ModuleDict(copies[stage]) for stage in STAGES})
        self.loss_totals = nn.ModuleDict({_SLOT[stage]: RunningMean() for stage in STAGES})
        self.plain_terms = nn.ModuleDict({_SLOT[stage]: nn.ModuleDict() for stage in STAGES})

    def stage_criteria(self, stage: str) -> nn.ModuleDict:
        """The criteria of ``stage`` (``train``, ``val`` or ``test``), keyed by name (``criterion`` for one)."""
        if stage not in STAGES:
            raise ValueError(f"`stage` must be one of {STAGES}, got {stage!r}")
        return self.criteria[_SLOT[stage]]

    def loss_log_keys(self) -> list[str] | None:
        """Every key :meth:`compute_losses` logs (train keys with Lightning's ``_step`` / ``_epoch`` suffixes),
        from the criteria's declared ``terms``; ``None`` when a criterion does not declare them."""
        if not hasattr(self, "criteria"):
            return None
        keys = []
        for stage in STAGES:
            criteria = self.stage_criteria(stage)
            single = list(criteria.keys()) == [_key("")]
            names = [f"{stage}/loss"]
            for key, criterion in criteria.items():
                terms = getattr(criterion, "terms", None)
                if not terms:
                    return None
                names += [_prefix(stage, key, single) + term for term in terms]
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
        """``train``, ``val`` or ``test`` from the attached trainer (``train`` without one)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.state.stage is None:
            return "train"
        return _STAGE_OF.get(trainer.state.stage.value, "train")

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
                mapping (``**outputs``). With several criteria, a mapping from criterion name to that.
            targets: the criterion's targets; with several criteria, a mapping from name to targets, or
                one value shared by all.
            stage: ``train``, ``val`` or ``test``; inferred from the trainer when ``None``.
            criterion_kwargs: extra keyword arguments for every criterion (``image_size=…``).
        """
        if not hasattr(self, "criteria"):
            raise RuntimeError("no criterion installed: pass `criterion=` to __init__ or call set_criterion()")
        stage = stage or self.current_stage()
        criteria = self.stage_criteria(stage)
        epoch = self._epoch()
        single = list(criteria.keys()) == [_key("")]
        total: Tensor | None = None
        for key, criterion in criteria.items():
            name = _name(key)
            if epoch is not None and hasattr(criterion, "set_epoch"):
                criterion.set_epoch(epoch)
            inputs = outputs if single else _pick(outputs, name, "outputs")
            target = targets if single or not _is_named(targets, criteria) else targets[name]
            args, kwargs = ([], dict(inputs)) if isinstance(inputs, Mapping) else (list(inputs), {})
            terms = criterion(*args, target, **kwargs, **criterion_kwargs)
            if not isinstance(terms, Mapping) or not terms:
                raise TypeError(f"criterion {type(criterion).__name__} must return a non-empty dict of loss terms")
            prefix = _prefix(stage, key, single)
            for term, value in terms.items():
                self._log_term(prefix + term, self._metric_of(criterion, term, stage, prefix + term, value), stage)
            subtotal = sum(terms.values())
            weighted = subtotal * self.criterion_weights[name]
            total = weighted if total is None else total + weighted
        assert total is not None
        running_total = self.loss_totals[_SLOT[stage]]
        running_total(total.detach())
        self._log_term(f"{stage}/loss", running_total, stage, prog_bar=True)
        return total

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store criteria in ``hyper_parameters`` as ``class_path`` dicts, loadable with ``weights_only=True``."""
        super_hook = getattr(super(), "on_save_checkpoint", None)
        if super_hook is not None:
            super_hook(checkpoint)
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = to_config(checkpoint["hyper_parameters"])

    def _epoch(self) -> int | None:
        trainer = getattr(self, "_trainer", None)
        return None if trainer is None else int(trainer.current_epoch) + 1

    def _metric_of(self, criterion: nn.Module, term: str, stage: str, key: str, value: Tensor) -> LossMetric:
        module = getattr(criterion, term, None)
        if isinstance(module, LossMetric) and module._forward_cache is not None:
            return module
        # A term that is not a LossMetric child: keep its running mean in a metric of our own.
        plain = self.plain_terms[_SLOT[stage]]
        slot = key.replace("/", ".")
        if slot not in plain:
            plain[slot] = RunningMean().to(value.device)
        plain[slot](value.detach())
        return plain[slot]

    def _log_term(self, key: str, metric: LossMetric, stage: str, prog_bar: bool = False) -> None:
        train = stage == "train"
        self.log(key, metric, on_step=train, on_epoch=True, prog_bar=prog_bar)  # type: ignore[attr-defined]


def _key(name: str) -> str:
    # ModuleDict keys cannot be empty (names with dots are refused in set_criterion).
    return "criterion" if name == "" else name


def _prefix(stage: str, key: str, single: bool) -> str:
    """Logged keys: ``{stage}/{term}``, or ``{stage}/{name}/{term}`` with several criteria."""
    return f"{stage}/" if single else f"{stage}/{_name(key)}/"


def _name(key: str) -> str:
    return "" if key == "criterion" else key


def _is_named(value: Any, criteria: nn.ModuleDict) -> bool:
    return isinstance(value, Mapping) and set(value) == {_name(k) for k in criteria}


def _pick(outputs: Any, name: str, what: str) -> Any:
    if not isinstance(outputs, Mapping) or name not in outputs:
        raise ValueError(
            f"with several criteria, `{what}` must map each criterion name to its inputs; missing {name!r}"
        )
    return outputs[name]

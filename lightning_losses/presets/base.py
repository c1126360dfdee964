"""The criterion base, and what the dense-detector criteria share: input checks, level flattening, normalisers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# flatten_levels, gather_boxes and onehot_targets moved out; their names here are deprecated aliases.
from lightning_losses.boxes.priors import flatten_levels
from lightning_losses.boxes.targets import gather_boxes
from lightning_losses.distributed import reduce_mean
from lightning_losses.losses.base import LossMetric
from lightning_losses.presets.class_targets import onehot_targets
from lightning_losses.registry import build_loss
from lightning_losses.serialization import RecordsInit

__all__ = ["Criterion", "DenseCriterion", "flatten_levels", "gather_boxes", "onehot_targets"]

LossSpec = LossMetric | Mapping[str, Any] | None
_ABSENT = object()  # marks "this criterion takes no centerness maps" in flatten_outputs


class Criterion(RecordsInit, nn.Module):
    """Base of the criteria: ``forward`` returns a dict of scalar loss terms, and each call reports which
    ``LossMetric`` produced which term.

    ``terms`` declares the term names, so the keys a trainer logs are known before the first step.
    After a call, :meth:`term_metrics` maps a returned term to the ``LossMetric`` inside the criterion
    whose output it is, when that metric ran exactly once in the call: the term is then exactly the
    value the metric tracked, and the metric's running mean is the term's. A term computed any other way
    (a constant while a schedule keeps it off, a sum of two calls, a scaled output) is left out; a
    trainer keeps its running mean itself, as :class:`~lightning_losses.DetectionLossModule` does.
    Outputs are matched by object identity, on the host: no device work, no sync.

    Example:
        >>> from lightning_losses import L1Loss
        >>> class Halved(Criterion):
        ...     terms = ("loss_l1", "loss_half")
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.loss_l1 = L1Loss()
        ...     def forward(self, pred, target):
        ...         loss = self.loss_l1(pred, target)
        ...         return {"loss_l1": loss, "loss_half": loss / 2}
        >>> criterion = Halved()
        >>> _ = criterion(torch.ones(3), torch.zeros(3))
        >>> criterion.term_metrics()
        {'loss_l1': L1Loss(reduction='mean', loss_weight=1.0)}
    """

    terms: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._term_paths: dict[str, str] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        metrics = [(name, m) for name, m in self.named_modules() if isinstance(m, LossMetric)]
        outputs: dict[int, list[Any]] = {id(m): [] for _, m in metrics}

        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            outputs[id(module)].append(output)

        # Hooks live for this call only: copies and pickles of the criterion carry none.
        handles = [m.register_forward_hook(record) for _, m in metrics]
        try:
            result = super().__call__(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        produced = {id(outputs[id(m)][0]): name for name, m in metrics if len(outputs[id(m)]) == 1}
        terms = result.items() if isinstance(result, Mapping) else ()
        self._term_paths = {term: produced[id(value)] for term, value in terms if id(value) in produced}
        return result

    def term_metrics(self) -> dict[str, LossMetric]:
        """The ``LossMetric`` behind each term of the last call (terms computed otherwise are left out)."""
        return {term: self.get_submodule(path) for term, path in self._term_paths.items()}

    def _apply(self, fn: Any, recurse: bool = True) -> Criterion:
        # A criterion's buffers are constants of the loss (anchor sizes, bin centres): `.to(device)` moves them,
        # but a dtype cast of the model (Lightning's bf16-true / 16-true convert the whole module) must not round
        # them, so they keep the dtype they were built with.
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers.get(name)
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        return self


class DenseCriterion(Criterion):
    """Base of the dense-detector criteria.

    Subclasses declare their loss terms as ``LossMetric`` children named after the terms, take per-level
    head outputs and ``targets`` (one ``{"boxes", "labels"}`` dict per image) and return one tensor per
    term. Batch-dependent normalisers go through :meth:`average_over_ranks` once per step.
    """

    def __init__(self, num_classes: int, strides: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}")
        if not strides or any(int(s) <= 0 for s in strides):
            raise ValueError(f"`strides` must be positive, got {strides!r}")
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)

    @staticmethod
    def build_term(spec: LossSpec, default: LossMetric) -> LossMetric:
        """The loss module of a term: ``spec`` built in any config dialect, or ``default`` when ``None``."""
        return default if spec is None else build_loss(spec)

    @staticmethod
    def average_over_ranks(*values: Tensor) -> list[Tensor]:
        """Average scalar normalisers over DDP ranks with a single all-reduce (identity in one process)."""
        stacked = reduce_mean(torch.stack([v.float() for v in values]))
        return list(stacked.unbind())

    def check_levels(self, **maps: Sequence[Tensor]) -> None:
        for name, value in maps.items():
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"`{name}` must be a list with one map per level, got {type(value).__name__}")
            if len(value) != len(self.strides):
                raise ValueError(f"`{name}` has {len(value)} levels for {len(self.strides)} strides {self.strides}")

    def flatten_outputs(
        self,
        targets: Sequence[Any],
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        box_channels: int = 4,
        centerness: Any = _ABSENT,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Check and flatten per-level head outputs: ``(B, P, C)``, ``(B, P, box_channels)`` and ``(B, P)``.

        Raises ``ValueError`` naming the argument when the levels, channels, prior counts or the number of
        images in ``targets`` disagree.
        """
        maps = {"cls_scores": cls_scores, "bbox_preds": bbox_preds}
        if centerness is not _ABSENT:
            maps["centerness"] = centerness
        self.check_levels(**maps)
        cls = flatten_levels(cls_scores, self.num_classes, "cls_scores")
        box = flatten_levels(bbox_preds, box_channels, "bbox_preds")
        ctr = None if centerness is _ABSENT else flatten_levels(centerness, 1, "centerness").squeeze(-1)
        batch, num_priors = cls.shape[:2]
        for name, value in (("bbox_preds", box), ("centerness", ctr)):
            if value is not None and value.shape[:2] != (batch, num_priors):
                raise ValueError(
                    f"`{name}` cover {value.shape[1]} priors per image and {value.shape[0]} images, "
                    f"`cls_scores` {num_priors} and {batch}"
                )
        if len(targets) != batch:
            raise ValueError(f"`targets` has {len(targets)} images, the outputs have {batch}")
        return cls, box, ctr

    @staticmethod
    def featmap_sizes(maps: Sequence[Tensor]) -> list[tuple[int, int]]:
        return [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, strides={self.strides}"

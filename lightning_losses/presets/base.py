"""The criterion base, and what the dense-detector criteria share: input checks, level flattening, normalisers."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

# flatten_levels, gather_boxes and onehot_targets moved out; their names here are deprecated aliases.
from lightning_losses.boxes.priors import flatten_levels
from lightning_losses.boxes.targets import gather_boxes
from lightning_losses.distributed import reduce_mean
from lightning_losses.losses.base import LossMetric
from lightning_losses.presets import checks
from lightning_losses.presets.class_targets import onehot_targets
from lightning_losses.registry import build_loss
from lightning_losses.serialization import RecordsInit

__all__ = ["Criterion", "DenseCriterion", "flatten_levels", "gather_boxes", "onehot_targets"]

LossSpec = LossMetric | Mapping[str, Any] | None


class _SharedReference:
    """Holds an object by reference: a deep copy of its owner shares the object, a pickle drops it."""

    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedReference:
        return _SharedReference(self.value)

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return _SharedReference, ()


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
    #: ``forward`` takes the head's outputs as ONE list of levels (YOLOX, YOLOv8): the Lightning mixin then passes
    #: a list of level maps given as ``outputs`` as that one argument, not one argument per level.
    takes_level_list: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._term_paths: dict[str, str] = {}

    @property
    def process_group(self) -> dist.ProcessGroup | None:
        """The ranks :meth:`average_over_ranks` averages over: ``None`` (the default) is the default group, WORLD.

        Set it after construction (``criterion.process_group = group``) to average the normalisers over a
        subgroup, e.g. the ranks of one model replica. It is not a constructor argument, so configs and
        checkpoints do not record it, and it is not in the ``state_dict``; copies (``copy.deepcopy``, the
        mixin's per-stage copies made after it is set) share the group, and a pickled criterion drops it (a
        process group belongs to its process).
        """
        holder = self.__dict__.get("_process_group")
        return None if holder is None else holder.value

    @process_group.setter
    def process_group(self, group: dist.ProcessGroup | None) -> None:
        self.__dict__["_process_group"] = _SharedReference(group)

    def average_over_ranks(self, *values: Tensor) -> list[Tensor]:
        """Average scalar normalisers over the ranks of :attr:`process_group` with a single float32 all-reduce
        (identity in one process and without gradients, see :func:`~lightning_losses.distributed.reduce_mean`)."""
        stacked = reduce_mean(torch.stack([v.float() for v in values]), group=self.process_group)
        return list(stacked.unbind())

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
    term. Batch-dependent normalisers go through :meth:`average_over_ranks` once per step (over the ranks of
    :attr:`process_group`).

    Targets: ``boxes`` ``(M, 4)`` absolute-pixel ``xyxy`` in the image the maps were computed on, ``labels``
    ``(M,)`` 0-based class indices in ``[0, num_classes)``; the background is implicit (no label for it).

    Before ``forward`` every call (shapes only, no device work): an ``int`` ``image_size`` becomes a square
    ``(s, s)``; flattened ``(B, N_l, K)`` level maps (torchvision's heads) become ``(B, A·K, H_l, W_l)`` views, the
    level's size taken from ``image_size`` and its stride (:func:`~lightning_losses.presets.checks.unflatten_levels`);
    the class maps must have ``A · C`` channels. On the first call of each criterion copy, and on every call when
    :attr:`validate_args` is set, :func:`~lightning_losses.presets.checks.check_inputs` reads the targets back once
    (one host sync) and raises ``ValueError`` for labels outside ``[0, num_classes)``, boxes with ``x2 < x1`` or
    ``y2 < y1`` and level maps whose sizes disagree with ``image_size`` and the strides, and warns when boxes
    look normalised or lie outside the image. A Lightning fit so pays it on the first batch of each stage
    (:class:`~lightning_losses.DetectionLossModule` keeps one copy per stage).
    """

    #: Check the targets and level sizes on every call, not only the first (one host sync per call).
    validate_args: bool = False
    #: The arguments of ``forward`` that hold per-level ``cls_scores``-like maps (flattened maps are accepted).
    level_map_args: ClassVar[tuple[str, ...]] = ("cls_scores", "bbox_preds", "centerness")
    _signatures: ClassVar[dict[type, inspect.Signature]] = {}

    def __init__(self, num_classes: int, strides: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}")
        if not strides or any(int(s) <= 0 for s in strides):
            raise ValueError(f"`strides` must be positive, got {strides!r}")
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self._inputs_checked = False

    @property
    def priors_per_cell(self) -> int:
        """``A``: priors the criterion generates per feature-map cell."""
        generator = getattr(self, "anchor_generator", None)
        return int(generator.num_base_priors) if generator is not None else 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        signature = self._signatures.get(type(self))
        if signature is None:
            signature = self._signatures[type(self)] = inspect.signature(self.forward)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:  # let forward raise its own error
            return super().__call__(*args, **kwargs)
        arguments = bound.arguments
        image_size = arguments.get("image_size")
        if isinstance(image_size, int) and not isinstance(image_size, bool):
            arguments["image_size"] = image_size = (image_size, image_size)
        has_priors = arguments.get("priors") is not None
        # Flattened maps without an image size keep their counts only (as columns): no sizes to check them by.
        columns = image_size is None and any(
            isinstance(m, Tensor) and m.ndim == 3
            for name in self.level_map_args
            if isinstance(arguments.get(name), (list, tuple))
            for m in arguments[name]
        )
        if "cls_scores" in arguments:
            checks.check_channels(
                arguments["cls_scores"], self.num_classes, None if has_priors else self.priors_per_cell
            )
        for name in self.level_map_args:
            if name in arguments:
                arguments[name] = checks.unflatten_levels(
                    arguments[name], name, self.strides, image_size, self.priors_per_cell, has_priors
                )
        check = self.validate_args or not self._inputs_checked
        try:
            result = super().__call__(*bound.args, **bound.kwargs)
        except (ValueError, TypeError):  # forward's own argument checks come first
            raise
        except Exception:  # e.g. an index error on a bad label: say what was wrong with the inputs
            if check:
                self.check_inputs(arguments, level_sizes=not columns)
            raise
        if check:
            self.check_inputs(arguments, level_sizes=not columns)
            self._inputs_checked = True
        return result

    def check_inputs(self, arguments: Mapping[str, Any], level_sizes: bool = True) -> None:
        """Check a call's bound arguments (see the class notes): targets, and level sizes against the strides
        (``level_sizes=False``: the maps' sizes are unknown, so neither they nor the image extent are checked)."""
        name = next((n for n in (*self.level_map_args, "outputs") if n in arguments), None)
        maps = arguments.get(name) if name is not None else None
        sizes = None
        if level_sizes and isinstance(maps, (list, tuple)) and maps:
            firsts = [
                m if isinstance(m, Tensor) else m[0] if isinstance(m, (list, tuple)) and m else None for m in maps
            ]
            if all(isinstance(m, Tensor) and m.ndim == 4 for m in firsts):
                sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in firsts]
        strides = None if getattr(self, "derive_strides", False) else self.strides
        checks.check_inputs(
            arguments.get("targets"), self.num_classes, sizes, strides, arguments.get("image_size"), name or "outputs"
        )

    @staticmethod
    def build_term(spec: LossSpec, default: LossMetric) -> LossMetric:
        """The loss module of a term: ``spec`` built in any config dialect, or ``default`` when ``None``."""
        return default if spec is None else build_loss(spec)

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

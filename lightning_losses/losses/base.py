"""``LossMetric``: a loss that is also a ``torchmetrics.Metric`` holding its own running mean."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_losses.functional.reduction import check_reduction, zero_weight_shortcut
from lightning_losses.functional.validation import check_finite
from lightning_losses.serialization import RecordsInit

__all__ = ["LossMetric", "zero_weight_shortcut"]


class LossMetric(RecordsInit, Metric):
    """Base class of every loss module: a differentiable loss and a DDP-exact running mean of it.

    ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)`` returns
    ``loss_weight`` times the reduced loss with its graph. As a side effect the detached value joins
    a running mean kept in two ``sum``-reduced float32 states, so :meth:`compute` is the exact mean of
    every value returned since the last :meth:`reset`, over every call on every DDP rank. A
    non-scalar return (``reduction="none"``) joins as its mean, as one call.

    The states stay float32 when the module is cast (``.to(torch.bfloat16)``, ``precision="bf16-true"``)
    and are not saved in ``state_dict``. Pass the object itself to ``LightningModule.log``: the step
    value is the last call's, the epoch value is :meth:`compute`.

    Subclasses implement :meth:`_loss`, which returns the weighted, reduced loss without ``loss_weight``;
    :meth:`scaled_loss` applies ``loss_weight`` and, for the classes that declare
    :attr:`zero_weight_rule`, MMDetection's zero-weight rule. Per-call keywords beyond the common API are
    declared in :attr:`call_options`. Declare a loss once with :func:`~lightning_losses.registry.register_loss`
    to give it a config name.

    Args:
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: also check tensor values (label ranges, finiteness); this reads values back to
            the host, so it is off by default. Shape checks always run.
    """

    full_state_update = False
    is_differentiable = True
    higher_is_better = False

    zero_weight_rule: ClassVar[str | None] = None
    """MMDetection's box-loss rule: ``"always"``, ``"reduced"`` (not with ``reduction="none"``) or ``None``."""
    call_options: ClassVar[tuple[str, ...]] = ()
    """Keyword arguments :meth:`forward` passes on to :meth:`_loss` for one call."""

    loss_sum: Tensor
    num_calls: Tensor

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0, validate_args: bool = False) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)):
            raise TypeError(f"`loss_weight` must be a number, got {type(loss_weight).__name__}")
        if not math.isfinite(loss_weight):
            raise ValueError(f"`loss_weight` must be finite, got {loss_weight}")
        self.loss_weight = float(loss_weight)
        self.validate_args = bool(validate_args)
        self.add_state("loss_sum", torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum", persistent=False)
        self.add_state("num_calls", torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum", persistent=False)

    def resolve_reduction(self, reduction_override: str | None) -> str:
        """The reduction of one call: ``reduction_override`` when given, else ``self.reduction``."""
        if not reduction_override:
            return self.reduction
        return check_reduction(reduction_override, "reduction_override")

    def forward(
        self,
        pred: Tensor,
        target: Any,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
        **options: Any,
    ) -> Tensor:
        """Return the differentiable loss and add its detached value to the running mean.

        ``options`` are the per-call keywords a loss declares in :attr:`call_options` (``ignore_index`` for
        :class:`~lightning_losses.CrossEntropyLoss`); anything else is a ``TypeError``.
        """
        unknown = sorted(set(options) - set(self.call_options))
        if unknown:
            accepted = ", ".join(self.call_options) or "none"
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword arguments {unknown}; per-call options: {accepted}"
            )
        if self.validate_args and isinstance(avg_factor, Tensor) and avg_factor.numel() == 1:
            value = float(avg_factor)  # host sync, only when asked for
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"`avg_factor` must be finite and >= 0, got {value}")
        reduction = self.resolve_reduction(reduction_override)
        loss = self.scaled_loss(pred, target, weight, avg_factor, reduction, **options)
        self.track(loss)
        return loss

    def scaled_loss(
        self,
        pred: Tensor,
        target: Any,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
        **options: Any,
    ) -> Tensor:
        """``loss_weight`` × :meth:`_loss`, then MMDetection's zero-weight rule where the class declares it.

        The one place ``loss_weight`` is applied. A loss whose fused kernel takes ``loss_weight`` and the rule
        inside (to keep a single gradient path to ``pred``) overrides this hook for those calls only.
        """
        loss = self.loss_weight * self._loss(pred, target, weight, avg_factor, reduction, **options)
        return self.apply_zero_weight_rule(loss, pred, weight, reduction)

    def apply_zero_weight_rule(self, loss: Tensor, pred: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
        """Apply :func:`~lightning_losses.functional.reduction.zero_weight_shortcut` when :attr:`zero_weight_rule`
        asks for it: ``"always"``, or ``"reduced"`` (scalar reductions only); ``None`` never."""
        if self.zero_weight_rule == "always" or (self.zero_weight_rule == "reduced" and reduction != "none"):
            return zero_weight_shortcut(loss, pred, weight)
        return loss

    class_weight: Tensor | None

    def set_class_weight(self, class_weight: Sequence[float] | Tensor | None) -> None:
        """Keep per-class weights as a float32, non-persistent ``class_weight`` buffer (``None``: no weights)."""
        if class_weight is None:
            self.class_weight = None
        else:
            self.register_buffer("class_weight", torch.as_tensor(class_weight, dtype=torch.float32), persistent=False)

    def check_finite_inputs(self, pred: Tensor, target: Tensor) -> None:
        """With ``validate_args``, raise ``ValueError`` unless ``pred`` and ``target`` are finite (host sync)."""
        if self.validate_args:
            check_finite(pred, "pred")
            check_finite(target, "target")

    def _loss(
        self,
        pred: Tensor,
        target: Any,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        """The weighted, reduced loss without ``loss_weight`` (which :meth:`scaled_loss` applies)."""
        raise NotImplementedError

    def track(self, loss: Tensor) -> None:
        """Add ``loss`` (detached; its mean when not a scalar) to the running mean as one call."""
        value = loss.detach().float()
        if value.ndim:
            value = value.mean() if value.numel() else value.sum()
        self.update(value)
        self._forward_cache = value

    def update(self, value: Tensor) -> None:
        """Add one detached scalar loss value to the running sums."""
        self.loss_sum += value.to(self.loss_sum.device)
        self.num_calls += 1

    def compute(self) -> Tensor:
        """Mean of the values returned since the last reset (0 before any call)."""
        return self.loss_sum / self.num_calls.clamp(min=1)

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> nn.Module:
        # Metric._apply casts states with `.to(dtype)`; bf16 sums saturate (256 + 1 == 256), so the
        # running sums go back to float32 whatever dtype the module is moved to.
        this = super()._apply(fn, *args, **kwargs)
        for name, default in this._defaults.items():
            if isinstance(default, Tensor) and default.dtype != torch.float32:
                this._defaults[name] = default.float()
            value = getattr(this, name)
            if isinstance(value, Tensor) and value.dtype != torch.float32:
                setattr(this, name, value.float())
        if isinstance(this._forward_cache, Tensor):
            this._forward_cache = this._forward_cache.float()
        return this

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch.multiprocessing (ddp_spawn on CPU) pickles tensors into shared memory, and Lightning un-shares
        # only parameters and buffers: without private copies every rank would add into the same sums.
        super().__setstate__(state)
        for name, default in self._defaults.items():
            if isinstance(default, Tensor):
                self._defaults[name] = default.clone()
            value = getattr(self, name)
            if isinstance(value, Tensor):
                setattr(self, name, value.clone())

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"

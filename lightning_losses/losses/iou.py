"""IoU-family box loss modules: IoU, GIoU, DIoU and CIoU on aligned ``xyxy`` boxes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from lightning_losses.functional.iou import (
    IOU_LOSS_MODES,
    ciou_kernel,
    diou_kernel,
    giou_kernel,
    iou_kernel,
    reduce_box_loss,
)
from lightning_losses.losses.base import LossMetric
from lightning_losses.registry import register_loss

__all__ = ["CIoULoss", "DIoULoss", "GIoULoss", "IoULoss"]


def _box_weight(weight: Tensor | None, pred: Tensor) -> Tensor | None:
    """A per-coordinate ``(N, 4)`` weight becomes per box by averaging its last axis."""
    if weight is not None and weight.dim() > 1:
        if weight.shape != pred.shape:
            raise ValueError(f"a 2-D `weight` must have `pred`'s shape {tuple(pred.shape)}, got {tuple(weight.shape)}")
        return weight.mean(-1)
    return weight


class _BoxLoss(LossMetric):
    """Shared forward of the IoU-family losses: checks, (N, 4) weights, and the low-memory row kernel."""

    _kernel: Callable[..., Tensor]
    zero_weight_rule = "always"

    def __init__(
        self,
        eps: float = 1e-6,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)
        if not eps > 0:
            raise ValueError(f"`eps` must be > 0, got {eps}")
        self.eps = float(eps)

    def scaled_loss(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        # A scalar reduction with a per-box weight hands `loss_weight` and MMDetection's zero-weight rule to
        # the row kernel, so backward has one gradient path to `pred`; every other call takes the base's way.
        if reduction != "none" and weight is not None and weight.dim() < pred.dim():
            return self._box_loss(pred, target, weight, avg_factor, reduction, self.loss_weight, fold=True)
        return super().scaled_loss(pred, target, weight, avg_factor, reduction)

    def _loss(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        return self._box_loss(pred, target, weight, avg_factor, reduction, 1.0, fold=False)

    def _box_loss(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
        loss_weight: float,
        fold: bool,
    ) -> Tensor:
        self.check_finite_inputs(pred, target)
        return reduce_box_loss(
            type(self)._kernel,
            pred,
            target,
            _box_weight(weight, pred),
            reduction,
            avg_factor,
            *self._kernel_args(),
            loss_weight=loss_weight,
            zero_weight_shortcut=fold,
        )

    def _kernel_args(self) -> tuple[Any, ...]:
        return (self.eps,)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, {super().extra_repr()}"


@register_loss
class IoULoss(_BoxLoss):
    r"""IoU loss (UnitBox) of aligned boxes.

    .. math::
        u = \max(\mathrm{IoU}, \epsilon), \qquad
        \ell = \begin{cases} 1 - u & \text{linear} \\ 1 - u^2 & \text{square} \\ -\log u & \text{log} \end{cases}

    With a ``weight`` that has no positive entry and a reduction other than ``none`` the result is
    ``(pred * weight).sum()`` without ``loss_weight`` (MMDetection's shortcut). An ``(N, 4)`` weight is
    averaged over its last axis.

    Args:
        mode: ``"linear"``, ``"square"`` or ``"log"``.
        eps: lower clamp of the IoU.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: check finiteness (host sync).

    Shape:
        ``pred``, ``target``: ``(N, 4)`` xyxy; ``weight``: ``(N,)`` or ``(N, 4)``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> IoULoss(mode="linear")(pred, torch.tensor([[0.0, 0.0, 2.0, 1.0]]))
        tensor(0.5000)

    Reference: Yu et al., *UnitBox*, ACM MM 2016.
    """

    _kernel = staticmethod(iou_kernel)
    zero_weight_rule = "reduced"

    def __init__(
        self,
        mode: str = "log",
        eps: float = 1e-6,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        validate_args: bool = False,
    ) -> None:
        super().__init__(eps=eps, reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)
        if mode not in IOU_LOSS_MODES:
            raise ValueError(f"`mode` must be one of {IOU_LOSS_MODES}, got {mode!r}")
        self.mode = mode

    def _kernel_args(self) -> tuple[Any, ...]:
        return (self.mode, self.eps)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, {super().extra_repr()}"


@register_loss
class GIoULoss(_BoxLoss):
    r"""Generalized IoU loss :math:`\ell = 1 - \mathrm{GIoU}` of aligned boxes.

    With a ``weight`` that has no positive entry the result is ``(pred * weight).sum()`` without
    ``loss_weight``, whatever the reduction (MMDetection's shortcut). An ``(N, 4)`` weight is averaged
    over its last axis.

    Args:
        eps: lower bound of the union and enclosing area.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: check finiteness (host sync).

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> GIoULoss()(pred, torch.tensor([[2.0, 0.0, 3.0, 1.0]]))
        tensor(1.3333)

    Reference: Rezatofighi et al., *Generalized Intersection over Union*, CVPR 2019.
    """

    _kernel = staticmethod(giou_kernel)


@register_loss
class DIoULoss(_BoxLoss):
    r"""Distance-IoU loss :math:`\ell = 1 - \mathrm{IoU} + \rho^2 / c^2` of aligned boxes.

    MMDetection's conventions: ``eps`` added to the union and :math:`c^2`; zero-weight shortcut as
    :class:`GIoULoss`. torchvision's ``distance_box_iou_loss`` adds 1e-7 instead.

    Args:
        eps: numerical guard added to the union and the squared enclosing diagonal.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: check finiteness (host sync).

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> DIoULoss()(pred, torch.tensor([[2.0, 0.0, 4.0, 2.0]]))
        tensor(1.2000)

    Reference: Zheng et al., *Distance-IoU Loss*, AAAI 2020.
    """

    _kernel = staticmethod(diou_kernel)


@register_loss
class CIoULoss(_BoxLoss):
    r"""Complete-IoU loss :math:`\ell = 1 - \mathrm{clamp}(\mathrm{IoU} - \rho^2/c^2 - \alpha v, -1, 1)`.

    MMDetection's conventions: :math:`\alpha = [\mathrm{IoU} > 0.5]\,v / (1 - \mathrm{IoU} + v)` without
    gradient, ``eps`` added to the heights in :math:`v`; torchvision's ``complete_box_iou_loss`` does not
    gate :math:`\alpha` and does not clamp. Zero-weight shortcut as :class:`GIoULoss`.

    Args:
        eps: numerical guard.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: check finiteness (host sync).

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> CIoULoss()(pred, torch.tensor([[2.0, 0.0, 4.0, 2.0]]))
        tensor(1.2000)

    Reference: Zheng et al., *Distance-IoU Loss*, AAAI 2020.
    """

    _kernel = staticmethod(ciou_kernel)

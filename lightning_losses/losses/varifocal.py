"""Varifocal loss module (VarifocalNet, RT-DETR's classification term)."""

from __future__ import annotations

from torch import Tensor

from lightning_losses.functional.varifocal import varifocal_loss
from lightning_losses.losses.base import LossMetric
from lightning_losses.registry import register_loss

__all__ = ["VarifocalLoss"]


@register_loss
class VarifocalLoss(LossMetric):
    r"""Varifocal loss with MMDetection 3.x's ``VarifocalLoss`` interface.

    .. math::
        \ell = \mathrm{BCE}(x, q)\cdot\big([q > 0]\, q + [q \le 0]\, \alpha\, |\sigma(x) - q|^{\gamma}\big)

    See :func:`~lightning_losses.functional.varifocal.varifocal_loss`: IoU-aware soft targets :math:`q`,
    positives weighted by their score (by 1 without ``iou_weighted``), negatives by :math:`\alpha\,\sigma(x)^\gamma`,
    computed from logits in float32.

    Args:
        use_sigmoid: must be ``True`` (the only form MMDetection has).
        alpha: weight of the negatives, ``>= 0``.
        gamma: focusing exponent of the negatives, ``>= 0``.
        iou_weighted: weight positives by their target score.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        detach_focal_weight: no gradient through the focal factor (RT-DETR's criterion); MMDetection keeps it.
        validate_args: check finiteness of ``pred`` and ``target`` (host sync).

    Shape:
        ``pred`` logits and ``target`` scores of one shape, typically ``(N, C)``; ``weight`` broadcastable to it.

    Example:
        >>> loss = VarifocalLoss(reduction="sum")
        >>> loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, 0.0]]))
        tensor(0.4765)

    Reference: Zhang et al., *VarifocalNet: An IoU-aware Dense Object Detector*, CVPR 2021, arXiv:2008.13367.
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        detach_focal_weight: bool = False,
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)
        if use_sigmoid is not True:
            raise ValueError(f"VarifocalLoss supports only use_sigmoid=True, got {use_sigmoid!r}")
        for name, value in (("alpha", alpha), ("gamma", gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"`{name}` must be a number >= 0, got {value!r}")
        self.use_sigmoid = True
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.iou_weighted = bool(iou_weighted)
        self.detach_focal_weight = bool(detach_focal_weight)

    def _loss(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        self.check_finite_inputs(pred, target)
        return varifocal_loss(
            pred,
            target,
            weight,
            self.alpha,
            self.gamma,
            self.iou_weighted,
            reduction,
            avg_factor,
            self.detach_focal_weight,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}, "
            f"detach_focal_weight={self.detach_focal_weight}, {super().extra_repr()}"
        )

"""Regression loss modules: L1, smooth L1, MSE and balanced L1."""

from __future__ import annotations

from torch import Tensor

from lightning_losses.functional.regression import balanced_l1_loss, l1_loss, mse_loss, smooth_l1_loss
from lightning_losses.losses.base import LossMetric
from lightning_losses.registry import register_loss

__all__ = ["BalancedL1Loss", "L1Loss", "MSELoss", "SmoothL1Loss"]


def _row_weight(pred: Tensor, weight: Tensor | None) -> Tensor | None:
    """A per-row weight ``(N,)`` for ``pred`` ``(N, 4)`` broadcasts over the last axis."""
    if weight is not None and weight.dim() + 1 == pred.dim():
        return weight.unsqueeze(-1)
    return weight


@register_loss
class L1Loss(LossMetric):
    r"""L1 loss :math:`\ell = |x - y|`.

    With a ``weight`` that has no positive entry the result is ``(pred * weight).sum()``, a zero that
    keeps ``pred`` in the graph, without ``loss_weight`` (MMDetection's shortcut). A per-row ``(N,)``
    weight for ``(N, k)`` predictions broadcasts over the last axis.

    Args:
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: check finiteness (host sync).

    Shape:
        ``pred``, ``target``: any shape, equal; ``weight`` broadcastable to it (or one dim fewer).

    Example:
        >>> L1Loss()(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
        tensor(1.5000)
    """

    zero_weight_rule = "always"

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0, validate_args: bool = False) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)

    def _loss(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        self.check_finite_inputs(pred, target)
        return l1_loss(pred, target, _row_weight(pred, weight), reduction, avg_factor)


@register_loss
class SmoothL1Loss(LossMetric):
    r"""Smooth L1 (Huber) loss.

    .. math::
        \ell = \begin{cases} 0.5\, d^2 / \beta & d < \beta \\ d - 0.5\, \beta & \text{otherwise} \end{cases}

    Same zero-weight shortcut as :class:`L1Loss`.

    Args:
        beta: transition point between the quadratic and linear parts (> 0).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: check finiteness (host sync).

    Example:
        >>> SmoothL1Loss(reduction="sum")(torch.tensor([0.5, 3.0]), torch.zeros(2))
        tensor(2.6250)

    Reference: Girshick, *Fast R-CNN*, ICCV 2015.
    """

    zero_weight_rule = "always"

    def __init__(
        self,
        beta: float = 1.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)
        if not beta > 0:
            raise ValueError(f"`beta` must be > 0, got {beta}")
        self.beta = float(beta)

    def _loss(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        self.check_finite_inputs(pred, target)
        return smooth_l1_loss(pred, target, _row_weight(pred, weight), self.beta, reduction, avg_factor)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, {super().extra_repr()}"


@register_loss
class MSELoss(LossMetric):
    r"""Squared error :math:`\ell = (x - y)^2`.

    Args:
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: check finiteness (host sync).

    Example:
        >>> MSELoss()(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
        tensor(2.5000)
    """

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0, validate_args: bool = False) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)

    def _loss(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        self.check_finite_inputs(pred, target)
        return mse_loss(pred, target, weight, reduction, avg_factor)


@register_loss
class BalancedL1Loss(LossMetric):
    r"""Balanced L1 loss (Libra R-CNN).

    .. math::
        \ell = \begin{cases}
            \frac{\alpha}{b}(b d + 1)\log(\frac{b d}{\beta} + 1) - \alpha d & d < \beta \\
            \gamma d + \frac{\gamma}{b} - \alpha \beta & \text{otherwise}
        \end{cases}, \quad b = e^{\gamma / \alpha} - 1

    Args:
        alpha: scales the inlier loss.
        gamma: gradient bound of outliers.
        beta: inlier / outlier boundary (> 0).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: check finiteness (host sync).

    Example:
        >>> BalancedL1Loss(reduction="none")(torch.tensor([0.0, 2.0]), torch.zeros(2))
        tensor([0.0000, 2.5786])

    Reference: Pang et al., *Libra R-CNN*, CVPR 2019.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        gamma: float = 1.5,
        beta: float = 1.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)
        if not beta > 0:
            raise ValueError(f"`beta` must be > 0, got {beta}")
        if not alpha > 0:
            raise ValueError(f"`alpha` must be > 0, got {alpha}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.beta = float(beta)

    def _loss(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        self.check_finite_inputs(pred, target)
        return balanced_l1_loss(pred, target, weight, self.alpha, self.gamma, self.beta, reduction, avg_factor)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, beta={self.beta}, {super().extra_repr()}"

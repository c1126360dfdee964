"""Classification loss modules: cross-entropy (softmax / sigmoid / mask), focal, quality and distribution focal."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_losses.functional.classification import (
    binary_cross_entropy,
    cross_entropy,
    distribution_focal_loss,
    mask_cross_entropy,
    quality_focal_loss,
    sigmoid_focal_loss,
)
from lightning_losses.functional.validation import check_finite, check_labels_in_range
from lightning_losses.losses.base import LossMetric
from lightning_losses.registry import register_loss

__all__ = [
    "CrossEntropyLoss",
    "DistributionFocalLoss",
    "FocalLoss",
    "QualityFocalLoss",
    "SigmoidFocalLoss",
]


@register_loss
class CrossEntropyLoss(LossMetric):
    r"""Cross-entropy in three flavours: softmax, sigmoid (``use_sigmoid``) and per-RoI mask (``use_mask``).

    Softmax: :math:`\ell = -w_y \log \mathrm{softmax}(x)_y`, see
    :func:`~lightning_losses.functional.cross_entropy`. Sigmoid: binary cross-entropy against one-hot
    class labels (``C`` = background) or a same-shape target, ``class_weight`` acting as ``pos_weight``,
    see :func:`~lightning_losses.functional.binary_cross_entropy`. Mask: the RoI's own class channel of
    ``(R, C, H, W)`` mask logits against ``(R, H, W)`` targets, the class labels passed as ``weight``
    (MMDetection's convention), see :func:`~lightning_losses.functional.mask_cross_entropy`.

    Args:
        use_sigmoid: binary cross-entropy per class instead of a softmax over classes.
        use_mask: mask cross-entropy for instance segmentation.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        class_weight: per-class weights ``(C,)``.
        ignore_index: label to ignore; ``None`` means ``-100``.
        loss_weight: multiplier of the loss.
        avg_non_ignore: ``mean`` over non-ignored elements instead of all elements.
        label_smoothing: softmax label smoothing in ``[0, 1]``, as in ``torch.nn.CrossEntropyLoss``.
        validate_args: check label ranges and finiteness (host sync).

    Shape:
        - softmax: ``pred`` ``(N, C)`` or ``(N, C, d1, ...)``, ``target`` ``(N,)`` or ``(N, d1, ...)`` int64.
        - sigmoid: ``pred`` ``(N, C)``, ``target`` ``(N,)`` labels in ``[0, C]`` or ``pred``-shaped 0/1.
        - mask: ``pred`` ``(R, C, H, W)``, ``target`` ``(R, H, W)``, ``weight`` the ``(R,)`` labels.

    Example:
        >>> loss = CrossEntropyLoss()
        >>> loss(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))
        tensor(1.1269)
    """

    def __init__(
        self,
        use_sigmoid: bool = False,
        use_mask: bool = False,
        reduction: str = "mean",
        class_weight: list[float] | None = None,
        ignore_index: int | None = None,
        loss_weight: float = 1.0,
        avg_non_ignore: bool = False,
        label_smoothing: float = 0.0,
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)
        if use_sigmoid and use_mask:
            raise ValueError("`use_sigmoid` and `use_mask` cannot both be True")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"`label_smoothing` must lie in [0, 1], got {label_smoothing}")
        if label_smoothing and (use_sigmoid or use_mask):
            raise ValueError("`label_smoothing` applies to the softmax cross-entropy only (use_sigmoid=use_mask=False)")
        self.use_sigmoid = use_sigmoid
        self.use_mask = use_mask
        self.ignore_index = ignore_index
        self.avg_non_ignore = avg_non_ignore
        self.label_smoothing = float(label_smoothing)
        self.set_class_weight(class_weight)

    call_options = ("ignore_index",)

    def _loss(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
        ignore_index: int | None = None,
    ) -> Tensor:
        # `forward(..., ignore_index=k)` overrides the module's ignore index for one call.
        ignore_index = self.ignore_index if ignore_index is None else ignore_index
        return self._cross_entropy(pred, target, weight, avg_factor, reduction, ignore_index)

    def _cross_entropy(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
        ignore_index: int | None,
    ) -> Tensor:
        if self.validate_args:
            check_finite(pred, "pred")
        if self.use_mask:
            if weight is None:
                raise ValueError("mask cross-entropy needs the RoIs' class labels, passed as `weight` of shape (R,)")
            if self.validate_args:
                check_labels_in_range(weight, 0, pred.shape[1] - 1, "weight (RoI labels)")
            return mask_cross_entropy(pred, target, weight, reduction, avg_factor, self.class_weight)
        if self.use_sigmoid:
            if self.validate_args and not target.is_floating_point():
                check_labels_in_range(
                    target, 0, pred.shape[-1], "target", -100 if ignore_index is None else ignore_index
                )
            return binary_cross_entropy(
                pred,
                target,
                weight,
                reduction,
                avg_factor,
                self.class_weight,
                ignore_index,
                self.avg_non_ignore,
            )
        if self.validate_args and not target.is_floating_point():
            check_labels_in_range(
                target, 0, pred.shape[1] - 1, "target", -100 if ignore_index is None else ignore_index
            )
        return cross_entropy(
            pred,
            target,
            weight,
            reduction,
            avg_factor,
            self.class_weight,
            ignore_index,
            self.avg_non_ignore,
            self.label_smoothing,
        )

    def extra_repr(self) -> str:
        mode = "mask" if self.use_mask else "sigmoid" if self.use_sigmoid else "softmax"
        return f"{mode}, {super().extra_repr()}, avg_non_ignore={self.avg_non_ignore}"


def _check_focal_target(pred: Tensor, target: Any) -> None:
    if isinstance(target, Tensor) and not target.is_floating_point():
        check_labels_in_range(target, 0, pred.shape[-1], "target")
    check_finite(pred, "pred")


@register_loss
class FocalLoss(LossMetric):
    r"""Sigmoid focal loss with MMDetection's ``FocalLoss`` interface.

    .. math::
        \ell = -\alpha_t (1 - p_t)^\gamma \log p_t

    See :func:`~lightning_losses.functional.sigmoid_focal_loss`. Targets are class indices in
    ``[0, C]`` (``C`` = background) or a one-hot / soft ``(N, C)`` tensor; ``weight`` is ``(N,)`` or ``(N, C)``.

    Args:
        use_sigmoid: must be ``True``; only the sigmoid form exists (use :class:`CrossEntropyLoss` for softmax).
        gamma: focusing parameter.
        alpha: balance of positives.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        activated: ``pred`` holds probabilities rather than logits.
        validate_args: check label ranges and finiteness (host sync).

    Example:
        >>> FocalLoss(reduction="sum")(torch.zeros(1, 2), torch.tensor([0]))
        tensor(0.1733)

    Reference: Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017.
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        gamma: float = 2.0,
        alpha: float = 0.25,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        activated: bool = False,
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)
        if not use_sigmoid:
            raise ValueError("FocalLoss supports only use_sigmoid=True; use CrossEntropyLoss for a softmax loss")
        if gamma < 0:
            raise ValueError(f"`gamma` must be >= 0, got {gamma}")
        self.use_sigmoid = True
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.activated = activated

    def _loss(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        if self.validate_args:
            _check_focal_target(pred, target)
        return sigmoid_focal_loss(pred, target, weight, self.gamma, self.alpha, reduction, avg_factor, self.activated)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, {super().extra_repr()}"


@register_loss
class SigmoidFocalLoss(LossMetric):
    r"""NetsPresso Trainer 1.4.1's ``focal_loss``: torchvision's ``sigmoid_focal_loss`` as a module.

    .. math::
        \ell = -\alpha_t (1 - p_t)^\gamma \log p_t, \qquad \alpha < 0 \Rightarrow \alpha_t = 1

    The target is a float tensor of ``pred``'s shape (class indices ``(N,)`` in ``[0, C]`` are also
    accepted and one-hot encoded); ``mean`` averages over all elements.

    Args:
        alpha: balance of positives; a negative value disables the balance.
        gamma: focusing parameter.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss (the NetsPresso config's ``weight``).
        validate_args: check label ranges and finiteness (host sync).

    Example:
        >>> SigmoidFocalLoss(alpha=-1.0, reduction="sum")(torch.zeros(1, 1), torch.ones(1, 1))
        tensor(0.1733)

    Reference: Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017.
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)
        if gamma < 0:
            raise ValueError(f"`gamma` must be >= 0, got {gamma}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def _loss(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        if self.validate_args:
            _check_focal_target(pred, target)
        alpha = self.alpha if self.alpha >= 0 else None
        return sigmoid_focal_loss(pred, target, weight, self.gamma, alpha, reduction, avg_factor)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, {super().extra_repr()}"


@register_loss
class QualityFocalLoss(LossMetric):
    r"""Quality focal loss (GFL): classification towards an IoU-quality soft target.

    .. math::
        \ell_i = \sum_c \begin{cases}
            \mathrm{BCE}(x_{i,c}, s_i)\,|s_i - \sigma(x_{i,c})|^\beta & c = y_i \\
            \mathrm{BCE}(x_{i,c}, 0)\,\sigma(x_{i,c})^\beta & \text{otherwise}
        \end{cases}

    See :func:`~lightning_losses.functional.quality_focal_loss`. ``target`` is the pair
    ``(labels (N,) in [0, C], scores (N,))`` or an ``(N, C)`` soft target; ``weight`` is ``(N,)``.

    Args:
        use_sigmoid: must be ``True`` (only the sigmoid form exists).
        beta: modulating exponent.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        activated: ``pred`` holds probabilities rather than logits.
        validate_args: check label ranges and finiteness (host sync).

    Example:
        >>> QualityFocalLoss()(torch.zeros(1, 2), (torch.tensor([0]), torch.tensor([0.5])))
        tensor(0.1733)

    Reference: Li et al., *Generalized Focal Loss*, NeurIPS 2020.
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        beta: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        activated: bool = False,
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)
        if not use_sigmoid:
            raise ValueError("QualityFocalLoss supports only use_sigmoid=True")
        if beta < 0:
            raise ValueError(f"`beta` must be >= 0, got {beta}")
        self.use_sigmoid = True
        self.beta = float(beta)
        self.activated = activated

    def _loss(
        self,
        pred: Tensor,
        target: tuple[Tensor, Tensor] | Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor | None,
        reduction: str,
    ) -> Tensor:
        if self.validate_args:
            check_finite(pred, "pred")
            if isinstance(target, (tuple, list)):
                check_labels_in_range(target[0], 0, pred.shape[-1], "target[0] (labels)")
                check_finite(target[1], "target[1] (scores)")
        return quality_focal_loss(pred, target, weight, self.beta, reduction, avg_factor, self.activated)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, {super().extra_repr()}"


@register_loss
class DistributionFocalLoss(LossMetric):
    r"""Distribution focal loss (GFL): cross-entropy on the two bins that bracket a continuous target.

    .. math::
        \ell = (y_r - y)\,\mathrm{CE}(x, y_l) + (y - y_l)\,\mathrm{CE}(x, y_r)

    See :func:`~lightning_losses.functional.distribution_focal_loss`. ``pred`` is ``(N, n+1)`` logits,
    ``target`` ``(N,)`` floats in ``[0, n]``; a target exactly at ``n`` is valid.

    Args:
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: check the target range and finiteness (host sync).

    Example:
        >>> DistributionFocalLoss()(torch.zeros(1, 5), torch.tensor([4.0]))
        tensor(1.6094)

    Reference: Li et al., *Generalized Focal Loss*, NeurIPS 2020.
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
        if (
            self.validate_args
            and target.numel()
            and (float(target.min()) < 0 or float(target.max()) > pred.shape[-1] - 1)
        ):
            raise ValueError(
                f"`target` must lie in [0, {pred.shape[-1] - 1}], found values in "
                f"[{float(target.min())}, {float(target.max())}]"
            )
        return distribution_focal_loss(pred, target, weight, reduction, avg_factor)

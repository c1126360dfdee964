"""Segmentation loss modules: OHEM cross-entropy and PIDNet's class-balanced boundary loss."""

from __future__ import annotations

from torch import Tensor

from lightning_losses.functional.segmentation import balanced_boundary_bce, ohem_cross_entropy
from lightning_losses.functional.validation import check_finite, check_labels_in_range
from lightning_losses.losses.base import LossMetric
from lightning_losses.registry import register_loss

__all__ = ["BoundaryLoss", "OhemCrossEntropyLoss"]


def _mean_only(name: str, weight: Tensor | None, avg_factor: object, reduction: str) -> None:
    if weight is not None or avg_factor is not None or reduction != "mean":
        raise ValueError(
            f"{name} is a mean over selected pixels: `weight`, `avg_factor` and reductions other than 'mean' "
            "do not apply"
        )


@register_loss
class OhemCrossEntropyLoss(LossMetric):
    r"""Cross-entropy over the hard pixels only (online hard example mining), PIDNet's semantic loss.

    Keeps every pixel whose true-class probability is below ``thres``, or the ``min_kept`` hardest when
    fewer are, and averages their cross-entropy; see
    :func:`~lightning_losses.functional.segmentation.ohem_cross_entropy`.

    Args:
        thres: probability below which a pixel is always kept.
        min_kept: pixels kept at least.
        ignore_index: label excluded from the loss.
        class_weight: optional per-class weights.
        loss_weight: multiplier of the loss.
        validate_args: check label ranges and finiteness (host sync).

    Shape:
        ``pred`` ``(B, K, H, W)`` logits, ``target`` ``(B, H, W)`` int64.

    Example:
        >>> pred = torch.tensor([[[[4.0, 0.0]], [[0.0, 0.0]]]])
        >>> OhemCrossEntropyLoss(min_kept=1)(pred, torch.tensor([[[0, 0]]]))
        tensor(0.6931)
    """

    def __init__(
        self,
        thres: float = 0.9,
        min_kept: int = 131072,
        ignore_index: int = 255,
        class_weight: list[float] | None = None,
        loss_weight: float = 1.0,
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction="mean", loss_weight=loss_weight, validate_args=validate_args)
        if not 0.0 <= thres <= 1.0:
            raise ValueError(f"`thres` must lie in [0, 1], got {thres}")
        self.thres = float(thres)
        self.min_kept = int(min_kept)
        self.ignore_index = int(ignore_index)
        self.set_class_weight(class_weight)

    def _loss(
        self, pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: float | Tensor | None, reduction: str
    ) -> Tensor:
        _mean_only(type(self).__name__, weight, avg_factor, reduction)
        if self.validate_args:
            check_finite(pred, "pred")
            check_labels_in_range(target, 0, pred.shape[1] - 1, "target", self.ignore_index)
        loss = ohem_cross_entropy(pred, target, self.thres, self.min_kept, self.ignore_index, self.class_weight)
        return loss

    def extra_repr(self) -> str:
        return (
            f"thres={self.thres}, min_kept={self.min_kept}, ignore_index={self.ignore_index}, "
            f"loss_weight={self.loss_weight}"
        )


@register_loss
class BoundaryLoss(LossMetric):
    r"""Class-balanced binary cross-entropy of boundary logits (PIDNet's D branch), mean over all pixels.

    See :func:`~lightning_losses.functional.segmentation.balanced_boundary_bce`. PIDNet weighs it 20.

    Args:
        loss_weight: multiplier of the loss.
        validate_args: check finiteness (host sync).

    Shape:
        ``pred`` ``(B, 1, H, W)`` logits, ``target`` ``(B, H, W)`` in ``{0, 1}``.

    Example:
        >>> BoundaryLoss()(torch.zeros(1, 1, 1, 4), torch.tensor([[[1, 0, 0, 0]]]))
        tensor(0.2599)
    """

    def __init__(self, loss_weight: float = 1.0, validate_args: bool = False) -> None:
        super().__init__(reduction="mean", loss_weight=loss_weight, validate_args=validate_args)

    def _loss(
        self, pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: float | Tensor | None, reduction: str
    ) -> Tensor:
        _mean_only(type(self).__name__, weight, avg_factor, reduction)
        if self.validate_args:
            check_finite(pred, "pred")
        return balanced_boundary_bce(pred, target)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}"

"""YOLO's box loss module: one minus the complete IoU, as ultralytics and NetsPresso Trainer compute it."""

from __future__ import annotations

from lightning_losses.functional.yolo_iou import yolo_ciou_kernel
from lightning_losses.losses.iou import _BoxLoss
from lightning_losses.registry import register_loss

__all__ = ["YOLOCIoULoss"]


@register_loss
class YOLOCIoULoss(_BoxLoss):
    r"""YOLO's CIoU loss :math:`\ell = 1 - \mathrm{CIoU}` of aligned boxes: :math:`\alpha` ungated, no clamp.

    See :func:`~lightning_losses.functional.yolo_iou.yolo_ciou_loss`; :class:`CIoULoss` is MMDetection's
    variant (:math:`\alpha` gated on IoU > 0.5, CIoU clamped to ``[-1, 1]``). With a ``weight`` that has no
    positive entry the result is a graph-connected 0. An ``(N, 4)`` weight is averaged over its last axis.

    Args:
        eps: numerical guard of the union, the squared enclosing diagonal and the heights in :math:`v`.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        loss_weight: multiplier of the loss.
        validate_args: check finiteness (host sync).

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> YOLOCIoULoss()(pred, torch.tensor([[1.0, 0.0, 3.0, 2.0]]))
        tensor(0.7436)

    Reference: Zheng et al., *Distance-IoU Loss*, AAAI 2020, arXiv:1911.08287.
    """

    _kernel = staticmethod(yolo_ciou_kernel)

    def __init__(
        self,
        eps: float = 1e-7,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        validate_args: bool = False,
    ) -> None:
        super().__init__(eps=eps, reduction=reduction, loss_weight=loss_weight, validate_args=validate_args)

"""The YOLO box loss: one minus the complete IoU as :func:`bbox_overlaps` defines it (no gate, no clamp)."""

from __future__ import annotations

from torch import Tensor

from lightning_losses.functional.iou import _overlaps, _upcast, reduce_box_loss

__all__ = ["yolo_ciou_kernel", "yolo_ciou_loss"]


def yolo_ciou_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    eps: float = 1e-7,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""YOLO's CIoU loss :math:`\ell = 1 - \mathrm{CIoU}` of aligned ``xyxy`` boxes, with the CIoU of the paper.

    .. math::
        \mathrm{CIoU} = \mathrm{IoU} - \frac{\rho^2}{c^2 + \epsilon} - \alpha v, \quad
        v = \tfrac{4}{\pi^2}\Big(\arctan\tfrac{w_t}{h_t + \epsilon} - \arctan\tfrac{w_p}{h_p + \epsilon}\Big)^2,
        \quad \alpha = \frac{v}{1 - \mathrm{IoU} + v}

    with :math:`\alpha` taken without gradient and never gated, and the CIoU not clamped: the loss of
    ultralytics' ``v8DetectionLoss`` and NetsPresso Trainer 1.4.1's ``yolov9_loss``. Both add ``eps`` to the
    union (ultralytics also to each height in the areas; here the union is clamped to ``eps``): the values
    agree to float32 round-off for boxes wider than ``eps``. MMDetection's
    :func:`~lightning_losses.functional.ciou_loss` instead gates :math:`\alpha` on IoU > 0.5 and clamps.

    Args:
        pred: predicted boxes ``(N, 4)``.
        target: target boxes ``(N, 4)``.
        weight: ``(N,)`` per-box weight.
        eps: the numerical guard above.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of ``N``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> yolo_ciou_loss(pred, torch.tensor([[1.0, 0.0, 3.0, 2.0]]))  # 1 - 1/3 + ρ²/c² (1/13), v = 0
        tensor(0.7436)

    Reference: Zheng et al., *Distance-IoU Loss*, AAAI 2020, arXiv:1911.08287.
    """
    return reduce_box_loss(yolo_ciou_kernel, pred, target, weight, reduction, avg_factor, eps)


def yolo_ciou_kernel(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """Per-box core of :func:`yolo_ciou_loss` (aligned boxes, no checks or reduction)."""
    return 1 - _overlaps(_upcast(pred), _upcast(target), "ciou", eps)

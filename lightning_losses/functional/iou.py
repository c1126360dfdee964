"""Box overlaps (IoU, IoF, GIoU, DIoU, CIoU) and the IoU-family box losses.

Boxes are ``(x1, y1, x2, y2)`` in absolute coordinates, with no ``+1`` in widths. ``bbox_overlaps``
is the one IoU routine of the package: the losses here and the assigners both call it. Half-precision
boxes are computed in float32 (area products overflow fp16 past ~256 px).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_losses.functional.kernels.rows import fused_rowwise_loss
from lightning_losses.functional.reduction import reduction_divisor
from lightning_losses.functional.validation import check_boxes, check_same_shape, check_weight

__all__ = [
    "IOU_LOSS_MODES",
    "OVERLAP_MODES",
    "aspect_arctan",
    "bbox_overlaps",
    "broadcast_overlaps",
    "ciou_kernel",
    "ciou_loss",
    "diou_kernel",
    "diou_loss",
    "giou_kernel",
    "giou_loss",
    "iou_kernel",
    "iou_loss",
    "reduce_box_loss",
]

OVERLAP_MODES = ("iou", "iof", "giou", "diou", "ciou")
# Coordinates (8,192 boxes) from which the box losses go through torch.compile: B 2 x 640² scored on every prior
# (ATSS, FCOS: 17k boxes) does, 5x faster than eager; the 128² demo (5.5k boxes at B 16) and unit tests stay eager.
_BOX_MIN = 1 << 15
IOU_LOSS_MODES = ("linear", "square", "log")


def _upcast(boxes: Tensor) -> Tensor:
    if boxes.dtype in (torch.float16, torch.bfloat16):
        return boxes.float()
    if not boxes.is_floating_point():
        return boxes.float()
    return boxes


def _center_distance2(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Squared distance of box centers (aligned or broadcast boxes)."""
    dx = (boxes2[..., 0] + boxes2[..., 2]) - (boxes1[..., 0] + boxes1[..., 2])
    dy = (boxes2[..., 1] + boxes2[..., 3]) - (boxes1[..., 1] + boxes1[..., 3])
    return (dx * dx + dy * dy) / 4


def aspect_arctan(boxes: Tensor, eps: float) -> Tensor:
    r""":math:`\arctan\frac{w}{h + \epsilon}` of ``(..., 4)`` xyxy boxes: each box's share of CIoU's aspect term.

    Example:
        >>> aspect_arctan(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), 0.0)
        tensor([0.7854])
    """
    return torch.atan((boxes[..., 2] - boxes[..., 0]) / (boxes[..., 3] - boxes[..., 1] + eps))


def _aspect_term(boxes1: Tensor, boxes2: Tensor, eps: float, aspects: tuple[Tensor, Tensor] | None = None) -> Tensor:
    r"""CIoU's :math:`v = \frac{4}{\pi^2}(\arctan\frac{w_2}{h_2} - \arctan\frac{w_1}{h_1})^2` (eps on heights);
    ``aspects`` gives both arctangents precomputed (:func:`aspect_arctan`, broadcastable), once per box."""
    atan1, atan2 = aspects if aspects is not None else (aspect_arctan(boxes1, eps), aspect_arctan(boxes2, eps))
    return (4 / math.pi**2) * (atan2 - atan1).pow(2)


def _geometry(boxes1: Tensor, boxes2: Tensor, enclose: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Overlap, both areas and the enclosing box's (w, h) of broadcast-aligned boxes (``overlap`` when not
    ``enclose``: plain IoU needs no enclosing box)."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    if not enclose:
        return overlap, area1, area2, overlap
    enclose_wh = (
        torch.maximum(boxes1[..., 2:], boxes2[..., 2:]) - torch.minimum(boxes1[..., :2], boxes2[..., :2])
    ).clamp(min=0)
    return overlap, area1, area2, enclose_wh


def bbox_overlaps(
    boxes1: Tensor,
    boxes2: Tensor,
    mode: str = "iou",
    is_aligned: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    r"""IoU-family overlaps of two sets of ``xyxy`` boxes, pairwise or aligned.

    .. math::
        \mathrm{IoU} = \frac{|A \cap B|}{\max(|A \cup B|, \epsilon)}, \quad
        \mathrm{GIoU} = \mathrm{IoU} - \frac{|C| - |A \cup B|}{\max(|C|, \epsilon)}, \quad
        \mathrm{DIoU} = \mathrm{IoU} - \frac{\rho^2}{c^2 + \epsilon}, \quad
        \mathrm{CIoU} = \mathrm{DIoU} - \alpha v

    with :math:`C` the smallest enclosing box, :math:`\rho` the distance of the centers, :math:`c` the
    diagonal of :math:`C`, :math:`v` the aspect-ratio term and :math:`\alpha = v / (1 - \mathrm{IoU} + v)`
    (no gradient). ``iof`` divides by the area of ``boxes1`` instead of the union.

    Args:
        boxes1: ``(..., N, 4)``.
        boxes2: ``(..., M, 4)`` (``(..., N, 4)`` when aligned); leading dimensions broadcast.
        mode: one of ``iou``, ``iof``, ``giou``, ``diou``, ``ciou``.
        is_aligned: compare ``boxes1[i]`` with ``boxes2[i]`` instead of every pair.
        eps: lower bound of the union and enclosing area.

    Returns:
        ``(..., N, M)`` pairwise or ``(..., N)`` aligned overlaps; float32 for half-precision boxes.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
        >>> bbox_overlaps(a, b)
        tensor([[0.1429, 0.0000]])
        >>> bbox_overlaps(a, b, mode="giou")
        tensor([[-0.0794, -0.3333]])
    """
    if mode not in OVERLAP_MODES:
        raise ValueError(f"`mode` must be one of {OVERLAP_MODES}, got {mode!r}")
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    if is_aligned:
        if boxes1.shape[-2:-1] != boxes2.shape[-2:-1]:
            raise ValueError(
                f"aligned boxes need the same count, got `boxes1` {tuple(boxes1.shape)} "
                f"and `boxes2` {tuple(boxes2.shape)}"
            )
    else:
        if boxes1.ndim < 2 or boxes2.ndim < 2:
            raise ValueError(
                f"pairwise overlaps need box sets of shape (..., N, 4), got `boxes1` {tuple(boxes1.shape)} "
                f"and `boxes2` {tuple(boxes2.shape)}"
            )
        boxes1, boxes2 = boxes1.unsqueeze(-2), boxes2.unsqueeze(-3)
    return _overlaps(boxes1, boxes2, mode, eps)


def broadcast_overlaps(
    boxes1: Tensor, boxes2: Tensor, mode: str, eps: float, aspects: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """:func:`bbox_overlaps` of broadcast-aligned float boxes, without the boundary checks: the one overlap formula.

    ``aspects`` (``"ciou"`` only): each box's :func:`aspect_arctan`, precomputed and broadcastable, so a pairwise
    caller (an assigner's boxes × priors) takes each arctangent once per box instead of once per pair.

    Example:
        >>> a, b = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]])
        >>> broadcast_overlaps(a, b, "iou", 1e-6)
        tensor([0.3333])
    """
    return _overlaps(boxes1, boxes2, mode, eps, aspects)


def _overlaps(
    boxes1: Tensor, boxes2: Tensor, mode: str, eps: float, aspects: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """:func:`bbox_overlaps` of broadcast-aligned float boxes, without the boundary checks."""
    overlap, area1, area2, enclose_wh = _geometry(boxes1, boxes2, enclose=mode not in ("iou", "iof"))
    union = area1 if mode == "iof" else area1 + area2 - overlap
    union = union.clamp(min=eps)
    ious = overlap / union
    if mode in ("iou", "iof"):
        return ious
    if mode == "giou":
        enclose_area = (enclose_wh[..., 0] * enclose_wh[..., 1]).clamp(min=eps)
        return ious - (enclose_area - union) / enclose_area
    diag2 = enclose_wh[..., 0].pow(2) + enclose_wh[..., 1].pow(2) + eps
    dious = ious - _center_distance2(boxes1, boxes2) / diag2
    if mode == "diou":
        return dious
    v = _aspect_term(boxes1, boxes2, eps, aspects)
    with torch.no_grad():
        alpha = v / (1 - ious + v).clamp(min=eps)
    return dious - alpha * v


def _check_pair(pred: Tensor, target: Tensor) -> None:
    check_boxes(pred, "pred")
    check_boxes(target, "target")
    check_same_shape(pred, target)


def reduce_box_loss(
    kernel: Callable[..., Tensor],
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: str,
    avg_factor: float | Tensor | None,
    *args: Any,
    loss_weight: float = 1.0,
    zero_weight_shortcut: bool = False,
) -> Tensor:
    """``loss_weight`` times a per-box kernel (``iou_kernel`` …), weighted and reduced by the package's rule
    inside the low-memory row kernel (:func:`~lightning_losses.functional.kernels.rows.fused_rowwise_loss`).

    ``zero_weight_shortcut`` applies MMDetection's box-loss rule
    (:func:`~lightning_losses.functional.reduction.zero_weight_shortcut`) to scalar reductions: where ``weight``
    has no positive entry the result is ``(pred * weight).sum()`` without ``loss_weight``, decided on the device.
    """
    _check_pair(pred, target)
    shape = pred.shape[:-1]
    check_weight(weight, shape)
    if weight is not None:
        weight = weight.expand(shape).reshape(-1)
    divisor = reduction_divisor(shape.numel(), reduction, avg_factor)
    loss = fused_rowwise_loss(
        kernel,
        pred.reshape(-1, 4),
        target.reshape(-1, 4),
        *args,
        weight=weight,
        divisor=divisor,
        scale=loss_weight,
        zero_weight_shortcut=zero_weight_shortcut,
        min_elements=_BOX_MIN,
    )
    return loss if divisor is not None else loss.reshape(shape)


def iou_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    mode: str = "log",
    eps: float = 1e-6,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""IoU loss of aligned boxes (UnitBox).

    .. math::
        u = \max(\mathrm{IoU}, \epsilon), \qquad
        \ell = \begin{cases} 1 - u & \text{linear} \\ 1 - u^2 & \text{square} \\ -\log u & \text{log} \end{cases}

    Args:
        pred: predicted boxes ``(N, 4)`` xyxy.
        target: target boxes ``(N, 4)`` xyxy.
        weight: ``(N,)`` per-box weight.
        mode: ``linear``, ``square`` or ``log``.
        eps: lower clamp of the IoU (the union is clamped to 1e-6 as in :func:`bbox_overlaps`).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of ``N``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> iou_loss(pred, torch.tensor([[0.0, 0.0, 2.0, 1.0]]), mode="linear")
        tensor(0.5000)

    Reference: Yu et al., *UnitBox: An Advanced Object Detection Network*, ACM MM 2016.
    """
    if mode not in IOU_LOSS_MODES:
        raise ValueError(f"`mode` must be one of {IOU_LOSS_MODES}, got {mode!r}")
    return reduce_box_loss(iou_kernel, pred, target, weight, reduction, avg_factor, mode, eps)


def iou_kernel(pred: Tensor, target: Tensor, mode: str, eps: float) -> Tensor:
    """Per-box core of :func:`iou_loss` on aligned float boxes: no checks, no weighting, no reduction."""
    ious = _overlaps(pred, target, "iou", 1e-6).clamp(min=eps)
    if mode == "linear":
        return 1 - ious
    if mode == "square":
        return 1 - ious.pow(2)
    return -ious.log()


def giou_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    eps: float = 1e-6,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Generalized IoU loss :math:`\ell = 1 - \mathrm{GIoU}` of aligned boxes, in :math:`[0, 2]`.

    Args:
        pred: predicted boxes ``(N, 4)`` xyxy.
        target: target boxes ``(N, 4)`` xyxy.
        weight: ``(N,)`` per-box weight.
        eps: lower bound of the union and enclosing area.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of ``N``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> giou_loss(pred, torch.tensor([[2.0, 0.0, 3.0, 1.0]]))  # IoU 0, enclosure 3, union 2
        tensor(1.3333)

    Reference: Rezatofighi et al., *Generalized Intersection over Union*, CVPR 2019.
    """
    return reduce_box_loss(giou_kernel, pred, target, weight, reduction, avg_factor, eps)


def giou_kernel(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """Per-box core of :func:`giou_loss` (aligned float boxes, no checks or reduction)."""
    return 1 - _overlaps(pred, target, "giou", eps)


def _distance_iou(pred: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """IoU and DIoU penalty with eps added to the union and the squared diagonal (MMDetection's D/CIoU)."""
    pred, target = _upcast(pred), _upcast(target)
    overlap, area1, area2, enclose_wh = _geometry(pred, target)
    ious = overlap / (area1 + area2 - overlap + eps)
    diag2 = enclose_wh[..., 0].pow(2) + enclose_wh[..., 1].pow(2) + eps
    return ious, _center_distance2(pred, target) / diag2


def diou_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    eps: float = 1e-6,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Distance-IoU loss :math:`\ell = 1 - \mathrm{IoU} + \rho^2 / c^2` of aligned boxes.

    ``eps`` is added to the union and to :math:`c^2` (MMDetection; torchvision adds 1e-7).

    Args:
        pred: predicted boxes ``(N, 4)`` xyxy.
        target: target boxes ``(N, 4)`` xyxy.
        weight: ``(N,)`` per-box weight.
        eps: added to the union and the squared enclosing diagonal.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of ``N``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> diou_loss(pred, torch.tensor([[2.0, 0.0, 4.0, 2.0]]))  # 1 - 0 + 4 / 20
        tensor(1.2000)

    Reference: Zheng et al., *Distance-IoU Loss*, AAAI 2020.
    """
    return reduce_box_loss(diou_kernel, pred, target, weight, reduction, avg_factor, eps)


def diou_kernel(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """Per-box core of :func:`diou_loss` (aligned float boxes, no checks or reduction)."""
    ious, penalty = _distance_iou(pred, target, eps)
    return 1 - ious + penalty


def ciou_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    eps: float = 1e-6,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Complete-IoU loss :math:`\ell = 1 - \mathrm{clamp}(\mathrm{IoU} - \rho^2/c^2 - \alpha v, -1, 1)`.

    Follows MMDetection: :math:`\alpha = [\mathrm{IoU} > 0.5]\, v / (1 - \mathrm{IoU} + v)` without
    gradient, ``eps`` added to both heights inside :math:`v`, to the union and to :math:`c^2`, and the
    CIoU clamped to ``[-1, 1]``. torchvision's ``complete_box_iou_loss`` does not gate :math:`\alpha`
    on IoU > 0.5, adds eps to its denominator instead and does not clamp. Unlike MMDetection, the
    denominator of :math:`\alpha` is clamped to ``eps``: for a perfect float32 prediction it is 0/0 there.

    Args:
        pred: predicted boxes ``(N, 4)`` xyxy.
        target: target boxes ``(N, 4)`` xyxy.
        weight: ``(N,)`` per-box weight.
        eps: numerical guard, as above.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of ``N``.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> ciou_loss(pred, torch.tensor([[2.0, 0.0, 4.0, 2.0]]))  # IoU 0: alpha gated off, as DIoU
        tensor(1.2000)

    Reference: Zheng et al., *Distance-IoU Loss*, AAAI 2020.
    """
    return reduce_box_loss(ciou_kernel, pred, target, weight, reduction, avg_factor, eps)


def ciou_kernel(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """Per-box core of :func:`ciou_loss` (aligned float boxes, no checks or reduction)."""
    ious, penalty = _distance_iou(pred, target, eps)
    v = _aspect_term(pred, target, eps)
    with torch.no_grad():
        # MMDetection divides by 1 - IoU + v, which is 0/0 for a perfect float32 prediction (IoU rounds
        # to 1, v = 0): clamping keeps alpha = 0 there instead of NaN.
        alpha = (ious > 0.5).to(v.dtype) * v / (1 - ious + v).clamp(min=eps)
    cious = ious - (penalty + alpha * v)
    return 1 - cious.clamp(min=-1.0, max=1.0)

"""Classification losses: softmax / sigmoid / mask cross-entropy, focal, quality focal, distribution focal.

Every function computes the element-wise loss and hands it to :func:`weight_reduce_loss`, the
single reduction rule (MMDetection's semantics: ``mean`` divides by the element count or by
``avg_factor``, not by the sum of the weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_losses.functional.kernels.dfl import dfl, dfl_grad
from lightning_losses.functional.kernels.elementwise import fused_quality_focal_loss, fused_sigmoid_focal_loss
from lightning_losses.functional.kernels.rows import fused_rowwise_loss
from lightning_losses.functional.reduction import reduction_divisor, weight_reduce_loss
from lightning_losses.functional.validation import (
    check_floating,
    check_ndim,
    check_same_shape,
    check_tensor,
    check_weight,
)

__all__ = [
    "binary_cross_entropy",
    "cross_entropy",
    "distribution_focal_loss",
    "expand_onehot_labels",
    "mask_cross_entropy",
    "quality_focal_loss",
    "sigmoid_focal_loss",
]

_DEFAULT_IGNORE = -100


def _expand_sample_weight(weight: Tensor, loss: Tensor) -> Tensor:
    """Shape a per-sample ``(N,)`` or flattened ``(N·C,)`` weight like an ``(N, C)`` loss."""
    if weight.shape == loss.shape:
        return weight
    if weight.ndim >= 1 and weight.shape[0] == loss.shape[0] and weight.numel() == loss.shape[0]:
        return weight.reshape(-1, *([1] * (loss.ndim - 1)))
    if weight.numel() == loss.numel():
        return weight.reshape(loss.shape)
    raise ValueError(
        f"`weight` of shape {tuple(weight.shape)} matches neither the loss's shape {tuple(loss.shape)} "
        f"nor its first dimension"
    )


def expand_onehot_labels(labels: Tensor, num_classes: int, ignore_index: int | None = None) -> tuple[Tensor, Tensor]:
    """Turn ``(N,)`` class indices into ``(N, C)`` one-hot rows and a per-sample validity mask.

    A label in ``[0, C)`` sets its column; any other non-negative label other than ``ignore_index``
    (typically ``C``, the background) gives an all-zero row; negative labels and ``ignore_index`` are
    invalid (their rows are zero and their mask is ``False``).

    Example:
        >>> onehot, valid = expand_onehot_labels(torch.tensor([0, 2, 3, -100]), 3, ignore_index=-100)
        >>> onehot
        tensor([[1., 0., 0.],
                [0., 0., 1.],
                [0., 0., 0.],
                [0., 0., 0.]])
        >>> valid
        tensor([ True,  True,  True, False])
    """
    valid = labels >= 0
    if ignore_index is not None:
        valid = valid & (labels != ignore_index)
    columns = torch.arange(num_classes, device=labels.device)
    onehot = (labels.unsqueeze(-1) == columns) & valid.unsqueeze(-1)
    return onehot.float(), valid


def cross_entropy(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
    class_weight: Tensor | None = None,
    ignore_index: int | None = -100,
    avg_non_ignore: bool = False,
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""Softmax cross-entropy with MMDetection's weighting and averaging.

    .. math::
        \ell_i = -w_{y_i} \log \frac{e^{x_{i,y_i}}}{\sum_c e^{x_{i,c}}}

    (with ``label_smoothing`` :math:`\varepsilon` the target is :math:`(1-\varepsilon)\,\mathrm{onehot}
    + \varepsilon / C`, as in :func:`torch.nn.functional.cross_entropy`). Ignored elements have loss 0.
    ``mean`` divides by the element count, ignored elements included, unless ``avg_non_ignore`` is set
    (then by the non-ignored count); ``class_weight`` scales each element by its class's weight but does
    not change the divisor (unlike ``torch.nn.CrossEntropyLoss``).

    Args:
        pred: logits, ``(N, C)`` or ``(N, C, d1, ...)``.
        target: class indices ``(N,)`` / ``(N, d1, ...)`` (int64), or class probabilities of ``pred``'s shape.
        weight: element-wise weight, broadcastable to the loss ``(N, d1, ...)``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of the element count.
        class_weight: ``(C,)`` weight per class.
        ignore_index: label excluded from the loss; ``None`` means ``-100``.
        avg_non_ignore: average over non-ignored elements only (``mean`` without ``avg_factor``).
        label_smoothing: amount of smoothing in ``[0, 1]``.

    Returns:
        The loss, reduced as asked; ``(N, d1, ...)`` for ``"none"``.

    Example:
        >>> pred = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
        >>> cross_entropy(pred, torch.tensor([0, 0]))
        tensor(1.1269)

    Reference: Murphy, *Machine Learning: A Probabilistic Perspective* (2012); MMDetection 3.x.
    """
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    check_floating(pred, "pred")
    if pred.ndim < 1:
        raise ValueError(f"`pred` must have a class dimension, got shape {tuple(pred.shape)}")
    soft = target.is_floating_point()
    if soft:
        check_same_shape(pred, target)
    elif target.shape != pred.shape[:1] + pred.shape[2:]:
        raise ValueError(
            f"`target` of class indices must have shape {tuple(pred.shape[:1] + pred.shape[2:])} for `pred` "
            f"of shape {tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"`label_smoothing` must lie in [0, 1], got {label_smoothing}")
    ignore_index = _DEFAULT_IGNORE if ignore_index is None else ignore_index
    if not soft:
        target = target.long()  # F.cross_entropy takes int64 class indices only
    if class_weight is not None:
        class_weight = class_weight.to(device=pred.device, dtype=pred.dtype)
    loss = F.cross_entropy(
        pred,
        target,
        weight=class_weight,
        reduction="none",
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )
    if avg_factor is None and avg_non_ignore and reduction == "mean" and not soft:
        avg_factor = (target != ignore_index).sum()
    if weight is not None:
        weight = weight.to(loss.dtype)
    check_weight(weight, loss.shape)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def binary_cross_entropy(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
    class_weight: Tensor | None = None,
    ignore_index: int | None = -100,
    avg_non_ignore: bool = False,
) -> Tensor:
    r"""Sigmoid (binary) cross-entropy with one-hot expansion of class labels, as MMDetection's.

    .. math::
        \ell = -\big[p_w\, y \log \sigma(x) + (1 - y) \log(1 - \sigma(x))\big]

    with :math:`p_w` the ``class_weight`` acting as ``pos_weight``. When ``target`` has one dimension
    fewer than ``pred`` it holds class indices in ``[0, C]`` (``C`` = background, an all-zero row) and
    ``weight`` is per sample; otherwise it is a same-shape 0/1 or soft target. Elements whose target is
    negative or ``ignore_index`` get weight 0 and, with ``avg_non_ignore``, leave the divisor.

    Args:
        pred: logits ``(N, C)`` (or any shape when ``target`` has the same shape).
        target: ``(N,)`` class indices, or a target of ``pred``'s shape.
        weight: per-sample ``(N,)`` weight with class indices, else element-wise.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of the element count.
        class_weight: ``(C,)`` positive-class weight (``pos_weight``).
        ignore_index: target value excluded from the loss; ``None`` means ``-100``.
        avg_non_ignore: average over non-ignored elements only.

    Example:
        >>> pred = torch.zeros(2, 3)
        >>> binary_cross_entropy(pred, torch.tensor([1, 3]), reduction="sum")  # 6 elements of log 2
        tensor(4.1589)
    """
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    check_floating(pred, "pred")
    ignore_index = _DEFAULT_IGNORE if ignore_index is None else ignore_index
    if target.ndim == pred.ndim - 1:
        if pred.ndim != 2 or target.shape[0] != pred.shape[0]:
            raise ValueError(
                f"class-index `target` of shape {tuple(target.shape)} needs `pred` of shape (N, C) with "
                f"N = {target.shape[0] if target.ndim else '?'}, got {tuple(pred.shape)}"
            )
        if target.is_floating_point():
            raise TypeError(f"class-index `target` must be an integer tensor, got dtype {target.dtype}")
        target, valid = expand_onehot_labels(target, pred.shape[-1], ignore_index)
        valid_mask = valid.unsqueeze(-1).expand_as(pred)
        if weight is not None:
            weight = _expand_sample_weight(weight, pred)
    else:
        check_same_shape(pred, target)
        check_weight(weight, pred.shape)
        valid_mask = (target >= 0) & (target != ignore_index)
    if avg_factor is None and avg_non_ignore and reduction == "mean":
        avg_factor = valid_mask.sum(dtype=torch.float32)  # a half-precision count overflows past 65504
    valid_mask = valid_mask.to(pred.dtype)
    weight = valid_mask if weight is None else weight.to(pred.dtype) * valid_mask
    if class_weight is not None:
        class_weight = class_weight.to(device=pred.device, dtype=pred.dtype)
    loss = F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), pos_weight=class_weight, reduction="none")
    check_weight(weight, loss.shape)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def mask_cross_entropy(
    pred: Tensor,
    target: Tensor,
    labels: Tensor,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
    class_weight: Tensor | None = None,
) -> Tensor:
    r"""Binary cross-entropy of per-RoI masks, each scored on its own class's channel.

    .. math::
        \ell = \frac{1}{R H W} \sum_{r,h,w} w_{c_r}\, \mathrm{BCE}(x_{r, c_r, h, w}, m_{r,h,w})

    Args:
        pred: mask logits ``(R, C, H, W)``.
        target: mask targets ``(R, H, W)`` in ``[0, 1]``.
        labels: ``(R,)`` class of each RoI, selecting its channel.
        reduction: ``"none"`` (``(R, H, W)``), ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of the element count.
        class_weight: ``(C,)`` weight of each class, applied to its RoIs' pixels. (MMDetection passes it as
            BCE's element weight, which broadcasts against the mask width instead; this is the
            per-class meaning the name promises.)

    Example:
        >>> pred = torch.zeros(2, 3, 4, 4)
        >>> mask_cross_entropy(pred, torch.ones(2, 4, 4), torch.tensor([0, 2]))
        tensor(0.6931)
    """
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    check_tensor(labels, "labels")
    check_floating(pred, "pred")
    if labels.is_floating_point():
        raise TypeError(f"`labels` must be an integer tensor of RoI classes, got dtype {labels.dtype}")
    check_ndim(pred, (4,), "pred", "mask logits of shape (R, C, H, W)")
    expected = (pred.shape[0], *pred.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"`target` must have shape {expected} for `pred` of shape {tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    if labels.shape != pred.shape[:1]:
        raise ValueError(f"`labels` must have shape ({pred.shape[0]},), got {tuple(labels.shape)}")
    rois = torch.arange(pred.shape[0], device=pred.device)
    pred_slice = pred[rois, labels.long()]
    loss = F.binary_cross_entropy_with_logits(pred_slice, target.to(pred.dtype), reduction="none")
    weight = None
    if class_weight is not None:
        weight = class_weight.to(device=pred.device, dtype=pred.dtype)[labels.long()].view(-1, 1, 1)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def binary_cross_entropy_of_probabilities(prob: Tensor, target: Tensor) -> Tensor:
    r"""Element-wise :math:`-(t \log p + (1 - t) \log(1 - p))` of probabilities, each log clamped at -100.

    The values of ``F.binary_cross_entropy(prob, target, reduction="none")``, written out so that it runs
    under CUDA autocast (which refuses that op in half precision), in at least float32 whatever the input dtype.

    Example:
        >>> binary_cross_entropy_of_probabilities(torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.0]))
        tensor([  0.6931, 100.0000])
    """
    dtype = torch.promote_types(prob.dtype, torch.float32)
    p, t = prob.to(dtype), target.to(dtype)
    return -(t * torch.log(p).clamp(min=-100) + (1 - t) * torch.log(1 - p).clamp(min=-100))


def _focal_target(pred: Tensor, target: Tensor) -> Tensor:
    """Class-index targets ``(N,)`` in ``[0, C]`` become one-hot ``(N, C)``; same-shape targets pass."""
    if target.ndim == pred.ndim - 1 and not target.is_floating_point():
        if pred.ndim != 2 or target.shape[0] != pred.shape[0]:
            raise ValueError(
                f"class-index `target` of shape {tuple(target.shape)} needs `pred` of shape (N, C), "
                f"got {tuple(pred.shape)}"
            )
        return expand_onehot_labels(target, pred.shape[1])[0].to(pred.dtype)
    check_same_shape(pred, target)
    return target.to(pred.dtype)


def _fused_focal(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None,
    gamma: float,
    alpha: float | None,
    reduction: str,
    avg_factor: float | Tensor | None,
) -> Tensor:
    """The fused kernel's path: class labels stay labels, the reduction happens inside the kernel."""
    labels = dense = None
    if target.ndim == pred.ndim - 1 and not target.is_floating_point():
        if pred.ndim != 2 or target.shape[0] != pred.shape[0]:
            raise ValueError(
                f"class-index `target` of shape {tuple(target.shape)} needs `pred` of shape (N, C), "
                f"got {tuple(pred.shape)}"
            )
        labels = target.long()
    else:
        check_same_shape(pred, target)
        dense = target
    if weight is not None:
        weight = _expand_sample_weight(weight, pred)
        check_weight(weight, pred.shape)
    divisor = reduction_divisor(pred.numel(), reduction, avg_factor)
    return fused_sigmoid_focal_loss(pred, dense, labels, weight, divisor, gamma, alpha)


def sigmoid_focal_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
    activated: bool = False,
) -> Tensor:
    r"""Sigmoid focal loss.

    .. math::
        p_t = \begin{cases} \sigma(x) & y = 1 \\ 1 - \sigma(x) & y = 0 \end{cases}, \qquad
        \ell = -\alpha_t (1 - p_t)^\gamma \log p_t

    with :math:`\alpha_t = \alpha y + (1-\alpha)(1-y)`; for soft targets :math:`1 - p_t` is read as
    :math:`(1-\sigma)y + \sigma(1-y)` and :math:`-\log p_t` as the binary cross-entropy, so the same
    formula covers one-hot and soft labels. ``alpha=None`` drops the balance (torchvision's ``alpha < 0``).

    Logits go through a fused kernel (:mod:`lightning_losses.functional.kernels.elementwise`): closed-form
    backward, only the inputs saved, class labels never expanded to one-hot, the reduction inside the kernel.
    With ``activated=True``, or a ``target`` / ``weight`` that needs gradients, the composite formula runs.

    Args:
        pred: logits ``(N, C)`` (or probabilities with ``activated=True``); any shape with a same-shape target.
        target: ``(N,)`` class indices in ``[0, C]`` (``C`` = background), or a ``pred``-shaped 0/1 or soft target.
        weight: ``(N,)`` per sample, ``(N, C)`` or flattened ``(N·C,)`` per element.
        gamma: focusing parameter :math:`\gamma \ge 0`.
        alpha: balance of positives :math:`\alpha`, or ``None`` for no balance.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of the element count.
        activated: ``pred`` holds probabilities rather than logits.

    Example:
        >>> pred = torch.tensor([[0.0, 0.0]])
        >>> sigmoid_focal_loss(pred, torch.tensor([0]), reduction="sum")  # 0.25·0.25·log2 + 0.75·0.25·log2
        tensor(0.1733)

    Reference: Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017.
    """
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    check_floating(pred, "pred")
    if not activated and not target.requires_grad and not (weight is not None and weight.requires_grad):
        return _fused_focal(pred, target, weight, gamma, alpha, reduction, avg_factor)
    target = _focal_target(pred, target)
    if activated:
        prob = pred
        ce = binary_cross_entropy_of_probabilities(pred, target)
    else:
        prob = pred.sigmoid()
        ce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    one_minus_pt = (1 - prob) * target + prob * (1 - target)
    loss = ce * one_minus_pt.pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    if weight is not None:
        weight = _expand_sample_weight(weight, loss)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def quality_focal_loss(
    pred: Tensor,
    target: tuple[Tensor, Tensor] | Tensor,
    weight: Tensor | None = None,
    beta: float = 2.0,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
    activated: bool = False,
) -> Tensor:
    r"""Quality focal loss (GFL): a focal BCE towards a soft IoU-quality target, summed over classes.

    .. math::
        \ell_{i,c} = \begin{cases}
            \mathrm{BCE}(x_{i,c}, s_i)\, |s_i - \sigma(x_{i,c})|^\beta & c = y_i \\
            \mathrm{BCE}(x_{i,c}, 0)\, \sigma(x_{i,c})^\beta & \text{otherwise}
        \end{cases}, \qquad \ell_i = \sum_c \ell_{i,c}

    Args:
        pred: logits ``(N, C)`` (probabilities with ``activated=True``).
        target: a tuple ``(labels (N,) in [0, C], scores (N,))`` with ``C`` the background, or a
            ``(N, C)`` soft target whose non-zero entries are the positives.
        weight: ``(N,)`` per-sample weight.
        beta: modulating exponent :math:`\beta`.
        reduction: ``"none"`` (``(N,)``), ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of ``N``.
        activated: ``pred`` holds probabilities.

    Logits go through the fused kernel of :mod:`lightning_losses.functional.kernels.elementwise`
    (closed-form backward, no ``N × C`` intermediates kept); ``activated`` or targets / weights that need
    gradients use the composite formula.

    Example:
        >>> pred = torch.zeros(1, 2)
        >>> labels, scores = torch.tensor([0]), torch.tensor([0.5])
        >>> quality_focal_loss(pred, (labels, scores))  # log2·0 + log2·0.25
        tensor(0.1733)

    Reference: Li et al., *Generalized Focal Loss*, NeurIPS 2020.
    """
    check_tensor(pred, "pred")
    check_floating(pred, "pred")
    check_ndim(pred, (2,), "pred", "logits of shape (N, C)")
    if isinstance(target, Tensor):
        check_same_shape(pred, target)
        labels = scores = None
    else:
        if not isinstance(target, (tuple, list)) or len(target) != 2:
            raise TypeError("`target` must be a (labels, scores) pair or an (N, C) tensor")
        labels, scores = target
        check_tensor(labels, "target[0] (labels)")
        check_tensor(scores, "target[1] (scores)")
        if labels.shape != pred.shape[:1] or scores.shape != pred.shape[:1]:
            raise ValueError(
                f"`labels` and `scores` must have shape ({pred.shape[0]},) for `pred` of shape "
                f"{tuple(pred.shape)}, got {tuple(labels.shape)} and {tuple(scores.shape)}"
            )
    quality = target if scores is None else scores
    if not activated and not quality.requires_grad and not (weight is not None and weight.requires_grad):
        if weight is not None:
            check_weight(weight, pred.shape[:1])
        divisor = reduction_divisor(pred.shape[0], reduction, avg_factor)
        dense = target if scores is None else None
        return fused_quality_focal_loss(pred, labels, scores, dense, weight, divisor, beta)
    if scores is None:
        score, positive = target.to(pred.dtype), target != 0
    else:
        positive = expand_onehot_labels(labels, pred.shape[1])[0].bool()
        score = scores.to(pred.dtype).unsqueeze(1).expand_as(pred)
    if activated:
        prob = pred
        bce_neg = binary_cross_entropy_of_probabilities(pred, torch.zeros_like(pred))
        bce_pos = binary_cross_entropy_of_probabilities(pred, score)
    else:
        prob = pred.sigmoid()
        bce_neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
        bce_pos = F.binary_cross_entropy_with_logits(pred, score, reduction="none")
    loss = torch.where(positive, bce_pos * (score - prob).abs().pow(beta), bce_neg * prob.pow(beta))
    loss = loss.sum(dim=1)
    check_weight(weight, loss.shape)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def distribution_focal_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    r"""Distribution focal loss (GFL): cross-entropy on the two bins around a continuous target.

    .. math::
        \ell = (y_r - y)\,\mathrm{CE}(x, y_l) + (y - y_l)\,\mathrm{CE}(x, y_r), \quad
        y_l = \lfloor y \rfloor,\; y_r = y_l + 1

    A target exactly at the last bin ``n`` has weight 0 on ``y_r = n + 1``; that bin is clamped to
    ``n`` so it never indexes out of range (MMDetection's implementation does).

    Args:
        pred: ``(N, n+1)`` logits over the bins ``0..n``.
        target: ``(N,)`` float in ``[0, n]``.
        weight: ``(N,)`` per-sample weight.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        avg_factor: divisor of ``mean`` instead of ``N``.

    Example:
        >>> pred = torch.zeros(1, 5)
        >>> distribution_focal_loss(pred, torch.tensor([4.0]))  # log 5
        tensor(1.6094)

    Reference: Li et al., *Generalized Focal Loss*, NeurIPS 2020.
    """
    check_tensor(pred, "pred")
    check_tensor(target, "target")
    check_floating(pred, "pred")
    check_ndim(pred, (2,), "pred", "bin logits of shape (N, n+1)")
    if target.shape != pred.shape[:1]:
        raise ValueError(
            f"`target` must have shape ({pred.shape[0]},) for `pred` of shape {tuple(pred.shape)}, "
            f"got {tuple(target.shape)}"
        )
    check_weight(weight, pred.shape[:1])
    divisor = reduction_divisor(pred.shape[0], reduction, avg_factor)
    return fused_rowwise_loss(dfl, pred, target, weight=weight, divisor=divisor, grad_fn=dfl_grad, saves=True)

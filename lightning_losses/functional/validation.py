"""Input checks shared by the functional losses and the loss modules (argument names in every message).

Shape and dtype checks are free (no host sync) and always run. Value checks (label ranges,
finiteness) read tensor values back to the host, so the modules run them only when constructed
with ``validate_args=True``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_floating(x: Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")


def check_same_shape(pred: Tensor, target: Tensor, pred_name: str = "pred", target_name: str = "target") -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"`{pred_name}` and `{target_name}` must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )


def check_ndim(x: Tensor, ndims: tuple[int, ...], name: str, what: str) -> None:
    if x.ndim not in ndims:
        raise ValueError(f"`{name}` must be {what}, got a tensor of shape {tuple(x.shape)}")


def check_boxes(boxes: Tensor, name: str) -> None:
    check_tensor(boxes, name)
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"`{name}` must have shape (..., 4) with boxes as (x1, y1, x2, y2), got {tuple(boxes.shape)}")


def check_labels_in_range(
    labels: Tensor, low: int, high: int, name: str = "target", ignore_index: int | None = None
) -> None:
    """Raise unless every label lies in ``[low, high]`` or equals ``ignore_index`` (host sync)."""
    valid = labels if ignore_index is None else labels[labels != ignore_index]
    if valid.numel() == 0:
        return
    lo, hi = int(valid.min()), int(valid.max())
    if lo < low or hi > high:
        extra = "" if ignore_index is None else f" or the ignore index {ignore_index}"
        raise ValueError(f"`{name}` labels must lie in [{low}, {high}]{extra}, found values in [{lo}, {hi}]")


def check_finite(x: Tensor, name: str) -> None:
    """Raise if ``x`` holds NaN or infinity (host sync)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` holds NaN or infinite values")


def check_weight(weight: Tensor | None, loss_shape: torch.Size, name: str = "weight") -> None:
    if weight is None:
        return
    check_tensor(weight, name)
    try:
        shape = torch.broadcast_shapes(weight.shape, loss_shape)
    except RuntimeError:
        shape = None
    if shape != loss_shape:  # a weight may broadcast over the loss, never enlarge it
        raise ValueError(
            f"`{name}` of shape {tuple(weight.shape)} does not broadcast to the loss of shape {tuple(loss_shape)}"
        )

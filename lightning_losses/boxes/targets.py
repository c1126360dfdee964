"""Ground truth as padded tensors, so assigners handle a whole batch with one tensor op, and the targets
derived from it per prior: matched rows, FCOS centerness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["PaddedTargets", "centerness_target", "gather_boxes", "pad_targets"]


class PaddedTargets(NamedTuple):
    """``boxes`` ``(B, G, 4)`` xyxy, ``labels`` ``(B, G)`` int64, ``mask`` ``(B, G)`` bool (real boxes first)."""

    boxes: Tensor
    labels: Tensor
    mask: Tensor


def pad_targets(
    targets: Sequence[Mapping[str, Tensor]],
    device: torch.device | str | None = None,
) -> PaddedTargets:
    """Stack per-image ``{"boxes": (M, 4), "labels": (M,)}`` dicts into tensors padded to the largest ``M``.

    Padding rows are zero boxes with label ``-1`` and ``mask`` False; there is always at least one
    column, so a batch without any box still gathers safely. Shapes and dtypes are checked here;
    label ranges are not (that would read values back to the host). The layout comes from the boxes'
    shapes (host metadata) and is built on ``device``: nothing is read back; targets held on another device
    are copied to ``device`` (keep them on the maps' device to avoid that copy).

    Example:
        >>> t = pad_targets([{"boxes": torch.tensor([[0.0, 0, 4, 4]]), "labels": torch.tensor([2])},
        ...                  {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
        >>> t.boxes.shape, t.mask.tolist()
        (torch.Size([2, 1, 4]), [[True], [False]])
    """
    if not isinstance(targets, Sequence) or isinstance(targets, (str, bytes)):
        raise TypeError(f"`targets` must be a list with one dict per image, got {type(targets).__name__}")
    boxes, labels = [], []
    for i, target in enumerate(targets):
        if not isinstance(target, Mapping) or "boxes" not in target or "labels" not in target:
            raise TypeError(f"`targets[{i}]` must be a dict with 'boxes' and 'labels'")
        b, lab = target["boxes"], target["labels"]
        if not isinstance(b, Tensor) or b.ndim != 2 or b.shape[-1] != 4:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"`targets[{i}]['boxes']` must have shape (M, 4) xyxy, got {shape}")
        if not isinstance(lab, Tensor) or lab.shape != b.shape[:1]:
            shape = tuple(lab.shape) if isinstance(lab, Tensor) else type(lab).__name__
            raise ValueError(f"`targets[{i}]['labels']` must have shape ({b.shape[0]},), got {shape}")
        if lab.is_floating_point():
            raise TypeError(f"`targets[{i}]['labels']` must be an integer tensor, got {lab.dtype}")
        boxes.append(b.float())
        labels.append(lab.long())
    if not boxes:
        raise ValueError("`targets` is empty: give one dict per image")
    device = device if device is not None else boxes[0].device
    # Shapes are host metadata: the padded layout is known without reading a count back from the device.
    counts = [int(b.shape[0]) for b in boxes]
    batch, size = len(boxes), max(*counts, 1)
    # Row j of image b goes to flat slot b·size + j: the first counts[b] slots of each row of one arange.
    slots = torch.arange(batch * size, dtype=torch.long, device=device).view(batch, size)
    index = torch.cat([slots[b, :n] for b, n in enumerate(counts)])
    out_boxes = torch.zeros(batch * size, 4, dtype=torch.float32, device=device)
    out_labels = torch.full((batch * size,), -1, dtype=torch.long, device=device)
    mask = torch.zeros(batch * size, dtype=torch.bool, device=device)
    out_boxes.index_copy_(0, index, torch.cat(boxes).to(device))
    out_labels.index_copy_(0, index, torch.cat(labels).to(device))
    mask.index_fill_(0, index, True)
    out_boxes, out_labels, mask = out_boxes.view(batch, size, 4), out_labels.view(batch, size), mask.view(batch, size)
    return PaddedTargets(out_boxes, out_labels, mask)


def gather_boxes(boxes: Tensor, index: Tensor) -> Tensor:
    """``boxes`` ``(B, G, D)`` gathered at ``index`` ``(B, P)`` → ``(B, P, D)`` (boxes, or any rows).

    Example:
        >>> boxes = torch.tensor([[[0.0, 0, 2, 2], [1, 1, 5, 5]]])
        >>> gather_boxes(boxes, torch.tensor([[1, 1, 0]]))[0, :, 2].tolist()
        [5.0, 5.0, 2.0]
    """
    return boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, boxes.shape[-1]))


def centerness_target(distances: Tensor) -> Tensor:
    r"""FCOS centerness :math:`\sqrt{\frac{\min(l, r)}{\max(l, r)} \cdot \frac{\min(t, b)}{\max(t, b)}}`.

    Args:
        distances: ``(..., 4)`` positive ``(l, t, r, b)``.

    Example:
        >>> centerness_target(torch.tensor([[1.0, 2.0, 4.0, 2.0]]))
        tensor([0.5000])

    Reference: Tian et al., *FCOS: Fully Convolutional One-Stage Object Detection*, ICCV 2019.
    """
    left_right = distances[..., 0::2]  # (l, r): strided views, no index tensor from a Python list
    top_bottom = distances[..., 1::2]
    ratio = (left_right.amin(-1) / left_right.amax(-1)) * (top_bottom.amin(-1) / top_bottom.amax(-1))
    return torch.sqrt(ratio)

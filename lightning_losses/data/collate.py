"""``collate_detection``: the batch format of every detection data module here."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DetectionTarget", "collate_detection"]

DetectionTarget = dict[str, Tensor]


def collate_detection(batch: Sequence[tuple[Tensor, DetectionTarget]]) -> tuple[Tensor, list[DetectionTarget]]:
    """Stack images to ``(B, 3, H, W)`` and keep the targets as a list of per-image dicts.

    Example:
        >>> item = (torch.zeros(3, 4, 4), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})
        >>> images, targets = collate_detection([item, item])
        >>> images.shape, len(targets)
        (torch.Size([2, 3, 4, 4]), 2)
    """
    images = torch.stack([image for image, _ in batch])
    return images, [target for _, target in batch]

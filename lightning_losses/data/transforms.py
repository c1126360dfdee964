"""``ResizePad``: flip, resize and pad an image with its boxes (``torchvision.transforms.v2``) to one batch size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

__all__ = ["ResizePad"]


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"`{name}` must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


class ResizePad:
    r"""Flip (optionally), resize and pad an image and its ``xyxy`` boxes to ``(H, W)``, boxes kept exact.

    With ``keep_ratio`` an ``h × w`` image is scaled by :math:`s = \min(H / h, W / w)` to
    :math:`(\mathrm{round}(s h), \mathrm{round}(s w))` and padded with ``pad_value`` at the bottom and
    right (so boxes only scale); without it the image is stretched to ``(H, W)``. Boxes go through the same
    ``torchvision.transforms.v2`` functionals as ``tv_tensors.BoundingBoxes``: a horizontal flip maps
    :math:`x \mapsto w - x`, a resize multiplies :math:`x` by :math:`w' / w` and :math:`y` by :math:`h' / h`.

    Args:
        size: ``(H, W)`` of the output, or one int for a square.
        keep_ratio: scale both sides by one factor and pad, or stretch.
        flip_prob: probability of a horizontal flip (drawn from ``torch``'s global generator, per sample).
        pad_value: value of the padded pixels, in ``[0, 1]``.

    Example:
        >>> transform = ResizePad(8)
        >>> image = torch.zeros(3, 4, 2, dtype=torch.uint8)
        >>> out, boxes = transform(image, torch.tensor([[0.0, 1.0, 1.0, 3.0]]))
        >>> out.shape, boxes
        (torch.Size([3, 8, 8]), tensor([[0., 2., 2., 6.]]))
    """

    def __init__(
        self, size: int | Sequence[int], keep_ratio: bool = True, flip_prob: float = 0.0, pad_value: float = 0.0
    ) -> None:
        self.size = _pair(size, "size")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"`flip_prob` must lie in [0, 1], got {flip_prob}")
        self.keep_ratio = bool(keep_ratio)
        self.flip_prob = float(flip_prob)
        self.pad_value = float(pad_value)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h', w')`` of an ``height × width`` image after the resize, before the padding."""
        if not self.keep_ratio:
            return self.size
        scale = min(self.size[0] / height, self.size[1] / width)
        return min(round(height * scale), self.size[0]), min(round(width * scale), self.size[1])

    def scale(self, height: int, width: int) -> tuple[float, float]:
        """``(w' / w, h' / h)``: the factors from original pixels to output pixels along x and y."""
        new_height, new_width = self.resized_size(height, width)
        return new_width / width, new_height / height

    def __call__(self, image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """``image`` ``(3, h, w)`` uint8 (or float in ``[0, 1]``) and ``boxes`` ``(M, 4)`` xyxy pixels →
        float32 ``(3, H, W)`` in ``[0, 1]`` and float32 ``(M, 4)`` boxes."""
        height, width = image.shape[-2:]
        picture = tv_tensors.Image(image)
        box = tv_tensors.BoundingBoxes(boxes.float(), format="XYXY", canvas_size=(height, width))
        if self.flip_prob > 0 and float(torch.rand(())) < self.flip_prob:
            picture, box = F.horizontal_flip(picture), F.horizontal_flip(box)
        new_height, new_width = self.resized_size(height, width)
        if (new_height, new_width) != (height, width):
            picture = F.resize(picture, [new_height, new_width], antialias=True)
            box = F.resize(box, [new_height, new_width])
        picture = F.to_dtype(picture, torch.float32, scale=True)
        pad_bottom, pad_right = self.size[0] - new_height, self.size[1] - new_width
        if pad_bottom or pad_right:
            picture = F.pad(picture, [0, 0, pad_right, pad_bottom], fill=self.pad_value)
            box = F.pad(box, [0, 0, pad_right, pad_bottom])
        return picture.as_subclass(Tensor), box.as_subclass(Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, keep_ratio={self.keep_ratio}, flip_prob={self.flip_prob})"

"""Box coders: anchor deltas (``DeltaXYWHCoder``), point distances and the GFL integral."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_losses.boxes.cache import device_constant

__all__ = ["DeltaXYWHCoder", "bbox2distance", "distance2bbox", "integral"]

_MAX_RATIO = abs(math.log(16 / 1000))


class DeltaXYWHCoder:
    r"""Encode boxes as normalised center / log-size deltas from reference boxes, and back.

    .. math::
        d_x = \frac{g_x - p_x}{p_w}, \quad d_y = \frac{g_y - p_y}{p_h}, \quad
        d_w = \log\frac{g_w}{p_w}, \quad d_h = \log\frac{g_h}{p_h}, \qquad
        \hat d = (d - \mu) / \sigma

    Decoding clamps the de-normalised :math:`d_w, d_h` to :math:`\pm|\log(16/1000)|` so ``exp`` cannot
    overflow (``add_ctr_clamp`` also clamps the center shift to ``ctr_clamp`` pixels, upper-only size clamp).

    Args:
        means: :math:`\mu`, four values.
        stds: :math:`\sigma`, four values.
        wh_ratio_clip: decode clamp of the log size ratio, as ``|log(wh_ratio_clip)|``.
        add_ctr_clamp: clamp the decoded center shift.
        ctr_clamp: the center-shift bound in pixels.

    Example:
        >>> coder = DeltaXYWHCoder()
        >>> anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        >>> coder.encode(anchors, torch.tensor([[5.0, 0.0, 15.0, 20.0]]))
        tensor([[0.5000, 0.5000, 0.0000, 0.6931]])
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        wh_ratio_clip: float = 16 / 1000,
        add_ctr_clamp: bool = False,
        ctr_clamp: float = 32.0,
    ) -> None:
        if len(means) != 4 or len(stds) != 4:
            raise ValueError(f"`means` and `stds` need 4 values each, got {list(means)} and {list(stds)}")
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.max_ratio = abs(math.log(wh_ratio_clip))
        self.add_ctr_clamp = add_ctr_clamp
        self.ctr_clamp = ctr_clamp

    def encode(self, boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        """Deltas ``(..., 4)`` that move ``boxes`` onto ``gt_boxes`` (both ``(..., 4)`` xyxy)."""
        boxes, gt_boxes = boxes.float(), gt_boxes.float()
        pw = boxes[..., 2] - boxes[..., 0]
        ph = boxes[..., 3] - boxes[..., 1]
        px = (boxes[..., 0] + boxes[..., 2]) * 0.5
        py = (boxes[..., 1] + boxes[..., 3]) * 0.5
        gw = gt_boxes[..., 2] - gt_boxes[..., 0]
        gh = gt_boxes[..., 3] - gt_boxes[..., 1]
        gx = (gt_boxes[..., 0] + gt_boxes[..., 2]) * 0.5
        gy = (gt_boxes[..., 1] + gt_boxes[..., 3]) * 0.5
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        means = device_constant(self.means, deltas.device, deltas.dtype)
        stds = device_constant(self.stds, deltas.device, deltas.dtype)
        return (deltas - means) / stds

    def decode(self, boxes: Tensor, deltas: Tensor) -> Tensor:
        """Boxes ``(..., 4)`` xyxy obtained by applying ``deltas`` to ``boxes`` (float32 for half-precision deltas)."""
        if deltas.dtype in (torch.float16, torch.bfloat16):
            deltas = deltas.float()
        stds = device_constant(self.stds, deltas.device, deltas.dtype)
        deltas = deltas * stds + device_constant(self.means, deltas.device, deltas.dtype)
        boxes = boxes.to(deltas.dtype)
        pxy = (boxes[..., :2] + boxes[..., 2:]) * 0.5
        pwh = boxes[..., 2:] - boxes[..., :2]
        dxy_wh = pwh * deltas[..., :2]
        dwh = deltas[..., 2:]
        if self.add_ctr_clamp:
            dxy_wh = dxy_wh.clamp(min=-self.ctr_clamp, max=self.ctr_clamp)
            dwh = dwh.clamp(max=self.max_ratio)
        else:
            dwh = dwh.clamp(min=-self.max_ratio, max=self.max_ratio)
        gxy = pxy + dxy_wh
        gwh = pwh * dwh.exp()
        return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)


def distance2bbox(points: Tensor, distance: Tensor, stride: float | Tensor | None = None) -> Tensor:
    """Boxes ``[x - l, y - t, x + r, y + b]`` from points ``(..., 2)`` and distances ``(..., 4)`` (l, t, r, b).

    ``stride`` (a number, or one per point ``(...,)``) scales distances given in stride units to pixels.

    Example:
        >>> distance2bbox(torch.tensor([[5.0, 5.0]]), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        tensor([[4., 3., 8., 9.]])
        >>> distance2bbox(torch.tensor([[5.0, 5.0]]), torch.tensor([[1.0, 2.0, 3.0, 4.0]]), stride=2)
        tensor([[ 3.,  1., 11., 13.]])
    """
    if stride is not None:
        distance = distance * _per_point(stride)
    return torch.cat([points - distance[..., :2], points + distance[..., 2:]], dim=-1)


def bbox2distance(
    points: Tensor, boxes: Tensor, max_dis: float | None = None, eps: float = 0.1, stride: float | Tensor | None = None
) -> Tensor:
    """Distances ``(l, t, r, b)`` from points to box sides, clamped to ``[0, max_dis - eps]`` when ``max_dis`` is given.

    ``stride`` (a number, or one per point ``(...,)``) divides the distances into stride units, before the clamp.

    Example:
        >>> bbox2distance(torch.tensor([[5.0, 5.0]]), torch.tensor([[4.0, 3.0, 30.0, 9.0]]), max_dis=16)
        tensor([[ 1.0000,  2.0000, 15.9000,  4.0000]])
        >>> bbox2distance(torch.tensor([[5.0, 5.0]]), torch.tensor([[4.0, 3.0, 30.0, 9.0]]), stride=2)
        tensor([[ 0.5000,  1.0000, 12.5000,  2.0000]])
    """
    distance = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
    if stride is not None:
        distance = distance / _per_point(stride)
    if max_dis is not None:
        distance = distance.clamp(min=0, max=max_dis - eps)
    return distance


def _per_point(stride: float | Tensor) -> float | Tensor:
    """A per-point stride ``(...,)`` as ``(..., 1)`` so it scales all four sides."""
    return stride[..., None] if isinstance(stride, Tensor) else stride


def integral(logits: Tensor, reg_max: int) -> Tensor:
    r"""GFL's expected distance: softmax over ``reg_max + 1`` bins times the bin index.

    .. math::
        \hat d = \sum_{i=0}^{n} i \cdot \mathrm{softmax}(x)_i

    Args:
        logits: ``(..., 4 · (reg_max + 1))``, side-major (all bins of ``l``, then ``t``, ``r``, ``b``).
        reg_max: the largest bin index ``n``.

    Returns:
        ``(..., 4)`` distances in bin units.

    Example:
        >>> integral(torch.zeros(1, 4 * 17), 16)
        tensor([[8., 8., 8., 8.]])
    """
    bins = torch.arange(reg_max + 1, device=logits.device, dtype=logits.dtype)
    prob = F.softmax(logits.reshape(*logits.shape[:-1], 4, reg_max + 1), dim=-1)
    return prob @ bins

"""Prior generators: multi-level anchors and points with MMDetection's layout.

Rows are ordered level by level, then ``y``-major, ``x``, then anchor ``a`` within a cell, which is
the order of ``feature_map.permute(0, 2, 3, 1).reshape(B, -1, ·)`` with channel ``a · C + c``;
:func:`flatten_levels` puts per-level head maps in that order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_losses.boxes.cache import DeviceCache

__all__ = [
    "AnchorGenerator",
    "PointGenerator",
    "flatten_levels",
    "image_valid_flags",
    "level_indices",
    "point_priors",
    "prior_strides",
    "valid_flags",
]


def _grid(height: int, width: int, stride: float, offset: float, device: torch.device) -> tuple[Tensor, Tensor]:
    xs = (torch.arange(width, device=device, dtype=torch.float32) + offset) * stride
    ys = (torch.arange(height, device=device, dtype=torch.float32) + offset) * stride
    return xs.repeat(height), ys.repeat_interleave(width)


class AnchorGenerator:
    r"""Anchors at every feature-map cell of every level (MMDetection's ``AnchorGenerator``).

    For a level of stride :math:`s`, ``scale`` :math:`k` and ratio :math:`r = h / w` the anchor is
    :math:`w = s k / \sqrt r`, :math:`h = s k \sqrt r`, centered at :math:`((x + o) s, (y + o) s)` with
    ``center_offset`` :math:`o` (0: the cell's corner). Per cell the anchors run ratio-major, then scale.

    Args:
        strides: stride of each level.
        ratios: height / width ratios.
        scales: anchor scales relative to the stride; or give ``octave_base_scale`` and
            ``scales_per_octave`` for :math:`k_i = \text{base} \cdot 2^{i / n}`.
        octave_base_scale: base of the octave scales.
        scales_per_octave: number of octave scales.
        base_sizes: base size per level (default: the strides).
        center_offset: cell offset of anchor centers, in ``[0, 1)``.

    Example:
        >>> gen = AnchorGenerator(strides=[8], ratios=[1.0], octave_base_scale=8, scales_per_octave=1)
        >>> gen.grid_priors([(1, 2)])[0]
        tensor([[-32., -32.,  32.,  32.],
                [-24., -32.,  40.,  32.]])
    """

    def __init__(
        self,
        strides: Sequence[int],
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] | None = None,
        octave_base_scale: float | None = None,
        scales_per_octave: int | None = None,
        base_sizes: Sequence[float] | None = None,
        center_offset: float = 0.0,
    ) -> None:
        if (scales is None) == (octave_base_scale is None):
            raise ValueError("give either `scales` or `octave_base_scale` (with `scales_per_octave`)")
        if scales is None:
            n = int(scales_per_octave or 1)
            scales = [octave_base_scale * 2 ** (i / n) for i in range(n)]
        if not 0 <= center_offset < 1:
            raise ValueError(f"`center_offset` must lie in [0, 1), got {center_offset}")
        self.strides = [int(s) for s in strides]
        self.ratios = torch.tensor(list(ratios), dtype=torch.float32)
        self.scales = torch.tensor(list(scales), dtype=torch.float32)
        self.base_sizes = [float(b) for b in (base_sizes or self.strides)]
        if len(self.base_sizes) != len(self.strides):
            raise ValueError(f"`base_sizes` needs one value per level ({len(self.strides)}), got {base_sizes}")
        self.center_offset = center_offset
        self.base_anchors = [self._base_anchors(size) for size in self.base_sizes]
        self._cache = DeviceCache(size=8)

    @property
    def num_base_priors(self) -> int:
        """Anchors per cell."""
        return len(self.ratios) * len(self.scales)

    def _base_anchors(self, base_size: float) -> Tensor:
        center = self.center_offset * base_size
        h_ratios = torch.sqrt(self.ratios)
        w_ratios = 1 / h_ratios
        ws = (base_size * w_ratios[:, None] * self.scales[None, :]).reshape(-1)
        hs = (base_size * h_ratios[:, None] * self.scales[None, :]).reshape(-1)
        return torch.stack([center - 0.5 * ws, center - 0.5 * hs, center + 0.5 * ws, center + 0.5 * hs], dim=-1)

    def grid_priors(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        """One ``(H·W·A, 4)`` float32 anchor tensor per level."""
        if len(featmap_sizes) != len(self.strides):
            raise ValueError(f"got {len(featmap_sizes)} feature maps for {len(self.strides)} strides {self.strides}")
        device = torch.device(device)
        bases = self._cache.get(("base", device), lambda: [b.to(device) for b in self.base_anchors])
        priors = []
        for (height, width), stride, base in zip(featmap_sizes, self.strides, bases, strict=True):
            xs, ys = _grid(height, width, stride, 0.0, device)
            shifts = torch.stack([xs, ys, xs, ys], dim=-1)
            priors.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
        return priors

    def priors(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> Tensor:
        """The anchors of every level in one ``(Σ_l H_l·W_l·A, 4)`` tensor, built once per sizes and device.

        Later calls with the same sizes on the same device return the cached tensor (shared: do not modify it).
        """
        key = ("priors", tuple((int(h), int(w)) for h, w in featmap_sizes), torch.device(device))
        return self._cache.get(key, lambda: torch.cat(self.grid_priors(featmap_sizes, device)))


class PointGenerator:
    """Points at every feature-map cell: ``((x + offset)·s, (y + offset)·s)``, rows ``y``-major.

    Args:
        strides: stride of each level.
        offset: cell offset (0.5: cell centers, as FCOS; 0: cell corners, as YOLOX's decoding).

    Example:
        >>> PointGenerator(strides=[8]).grid_priors([(1, 2)])[0]
        tensor([[ 4.,  4.],
                [12.,  4.]])
    """

    def __init__(self, strides: Sequence[int], offset: float = 0.5) -> None:
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        self._cache = DeviceCache(size=8)

    def grid_priors(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        """One ``(H·W, 2)`` float32 point tensor per level."""
        if len(featmap_sizes) != len(self.strides):
            raise ValueError(f"got {len(featmap_sizes)} feature maps for {len(self.strides)} strides {self.strides}")
        return [
            torch.stack(_grid(h, w, s, self.offset, torch.device(device)), dim=-1)
            for (h, w), s in zip(featmap_sizes, self.strides, strict=True)
        ]

    def priors(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> Tensor:
        """The points of every level in one ``(Σ_l H_l·W_l, 2)`` tensor, built once per sizes and device.

        Later calls with the same sizes on the same device return the cached tensor (shared: do not modify it).
        """
        key = ("priors", tuple((int(h), int(w)) for h, w in featmap_sizes), torch.device(device))
        return self._cache.get(key, lambda: torch.cat(self.grid_priors(featmap_sizes, device)))


def flatten_levels(maps: Sequence[Tensor], channels: int, name: str) -> Tensor:
    """Per-level maps to one ``(B, Σ_l H_l·W_l·A, channels)`` tensor, rows ``(level, y, x, a)`` as the priors.

    A 4-D map ``(B, A·channels, H, W)`` is flattened by ``permute(0, 2, 3, 1)``; a 3-D map
    ``(B, N_l, channels)`` is taken as already flattened (NetsPresso's layout). ``name`` is the argument
    named in the ``TypeError`` / ``ValueError`` raised for a map of another type or shape.

    Example:
        >>> maps = [torch.arange(8.0).reshape(1, 2, 2, 2), torch.zeros(1, 2, 1, 1)]
        >>> flatten_levels(maps, 1, "cls_scores").shape  # 2 anchors on 4 cells, then 2 on 1 cell
        torch.Size([1, 10, 1])
    """
    flat = []
    for level, m in enumerate(maps):
        if not isinstance(m, Tensor):
            raise TypeError(f"`{name}[{level}]` must be a tensor, got {type(m).__name__}")
        if m.ndim == 4:
            if m.shape[1] % channels:
                raise ValueError(
                    f"`{name}[{level}]` has {m.shape[1]} channels, not a multiple of {channels}: "
                    f"expected (B, A·{channels}, H, W), got {tuple(m.shape)}"
                )
            flat.append(m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, channels))
        elif m.ndim == 3 and m.shape[-1] == channels:
            flat.append(m)
        else:
            raise ValueError(
                f"`{name}[{level}]` must be (B, A·{channels}, H, W) or (B, N, {channels}), got {tuple(m.shape)}"
            )
    return torch.cat(flat, dim=1)


_LEVELS = DeviceCache(size=16)


def level_indices(counts: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """The level index of each row of priors concatenated over levels with ``counts`` rows each.

    Built on ``device`` from the host counts (no copy), once per counts and device; the tensor is shared.

    Example:
        >>> level_indices([2, 1])
        tensor([0, 0, 1])
    """
    counts, device = tuple(int(n) for n in counts), torch.device(device)

    def build() -> Tensor:
        levels = [torch.full((n,), level, dtype=torch.long, device=device) for level, n in enumerate(counts)]
        return torch.cat(levels) if levels else torch.zeros(0, dtype=torch.long, device=device)

    return _LEVELS.get((counts, device), build)


def prior_strides(
    counts: Sequence[int],
    strides: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The stride of each row of priors concatenated over levels with ``counts`` rows each, as ``dtype``.

    Built on ``device`` once per counts, strides and dtype; the tensor is shared.

    Example:
        >>> prior_strides([2, 1], [8, 16])
        tensor([ 8.,  8., 16.])
    """
    counts, strides = tuple(int(n) for n in counts), tuple(int(s) for s in strides)
    if len(counts) != len(strides):
        raise ValueError(f"`counts` has {len(counts)} levels for {len(strides)} strides {strides}")
    device = torch.device(device)

    def build() -> Tensor:
        rows = [torch.full((n,), s, dtype=dtype, device=device) for n, s in zip(counts, strides, strict=True)]
        return torch.cat(rows) if rows else torch.zeros(0, dtype=dtype, device=device)

    return _LEVELS.get(("strides", counts, strides, dtype, device), build)


def point_priors(
    featmap_sizes: Sequence[tuple[int, int]], strides: Sequence[int], offset: float, device: torch.device | str = "cpu"
) -> Tensor:
    """``PointGenerator(strides, offset).priors(featmap_sizes, device)`` for strides known only per call (derived
    from the image size), from one shared cache."""
    sizes = tuple((int(h), int(w)) for h, w in featmap_sizes)
    key = ("points", sizes, tuple(int(s) for s in strides), float(offset), torch.device(device))
    return _LEVELS.get(key, lambda: torch.cat(PointGenerator(strides, offset).grid_priors(sizes, device)))


def valid_flags(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    num_base_priors: int,
    pad_shapes: Tensor,
) -> Tensor:
    """Which priors lie on the valid (unpadded) part of each image's feature maps.

    A cell ``(y, x)`` of a level of stride ``s`` is valid for an image of padded shape ``(H, W)`` when
    ``y < min(ceil(H / s), H_l)`` and ``x < min(ceil(W / s), W_l)`` (MMDetection's rule).

    Args:
        featmap_sizes: ``(H_l, W_l)`` per level.
        strides: stride per level.
        num_base_priors: priors per cell.
        pad_shapes: ``(B, 2)`` padded ``(H, W)`` of each image.

    Returns:
        ``(B, P)`` bool over the priors of all levels.
    """
    flags = []
    for (height, width), stride in zip(featmap_sizes, strides, strict=True):
        valid_h = torch.clamp(torch.ceil(pad_shapes[:, 0].float() / stride), max=height)
        valid_w = torch.clamp(torch.ceil(pad_shapes[:, 1].float() / stride), max=width)
        ys = torch.arange(height, dtype=torch.long, device=pad_shapes.device).repeat_interleave(width)
        xs = torch.arange(width, dtype=torch.long, device=pad_shapes.device).repeat(height)
        cell = (ys[None] < valid_h[:, None]) & (xs[None] < valid_w[:, None])
        flags.append(cell.repeat_interleave(num_base_priors, dim=1))
    return torch.cat(flags, dim=1)


def image_valid_flags(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    num_base_priors: int,
    image_size: Sequence[int] | Sequence[Sequence[int]] | Tensor,
    batch: int,
    device: torch.device | str,
) -> Tensor:
    """:func:`valid_flags` ``(B, P)`` for ``image_size`` given as ``(H, W)``, per-image ``(B, 2)`` sizes or a tensor.

    Sizes given as Python numbers are known on the host: their flags are built once per sizes and device and
    shared (expanded over the batch, not copied). A tensor is used on the device as it is.
    """
    if isinstance(image_size, Tensor):
        pad_shapes = image_size.to(device).reshape(-1, 2).expand(batch, 2)
        return valid_flags(featmap_sizes, strides, num_base_priors, pad_shapes)
    nested = isinstance(image_size[0], Sequence)
    rows = tuple(tuple(float(v) for v in row) for row in (image_size if nested else [image_size]))
    if any(len(row) != 2 for row in rows):
        raise ValueError(f"`image_size` must be (H, W) or one (H, W) per image, got {image_size!r}")
    device = torch.device(device)
    key = ("valid", tuple(map(tuple, featmap_sizes)), tuple(strides), int(num_base_priors), rows, device)

    def build() -> Tensor:
        return valid_flags(featmap_sizes, strides, num_base_priors, torch.tensor(rows, device=device))

    return _LEVELS.get(key, build).expand(batch, -1)

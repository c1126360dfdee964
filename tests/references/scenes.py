"""Seeded scenes, map layout helpers and the value-and-gradient comparison shared by the preset tests.

Not a reference: the inputs the references and the criteria are both run on, and how they are compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from tests.references.mmdet_dense_heads import STRIDES

__all__ = [
    "FEATMAP_SIZES",
    "IMAGE_SIZE",
    "SCENES",
    "assert_terms_match",
    "featmap_sizes",
    "grads",
    "levels_to_maps",
    "random_maps",
    "random_targets",
    "scene",
]

IMAGE_SIZE = 128
FEATMAP_SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # a 128 x 128 image, strides 8 .. 128

# name: (seed, boxes per image, square image side, largest box side). B = 2; one image without boxes;
# "large" reaches the upper levels (RetinaNet / FCOS level 2, ATSS / GFL level 2 and up); "tiny" boxes have
# only low-quality RetinaNet matches and so few positives that Σ centerness < 1 (the clamps of FCOS / ATSS).
SCENES = {
    "seed0": (0, (3, 5), 128, 120.0),
    "seed1": (1, (6, 0), 128, 120.0),
    "seed2": (2, (1, 4), 128, 120.0),
    "large": (3, (4, 2), 256, 250.0),
    "tiny": (13, (1, 1), 128, 12.0),
}


def featmap_sizes(image_side: int, strides: Sequence[int] = STRIDES) -> list[tuple[int, int]]:
    return [(math.ceil(image_side / s), math.ceil(image_side / s)) for s in strides]


def scene(name: str, num_classes: int) -> tuple[torch.Generator, list[dict[str, Tensor]], list[tuple[int, int]]]:
    """A seeded generator (for the maps), the targets and the feature-map sizes of a named scene."""
    seed, counts, side, max_size = SCENES[name]
    generator = torch.Generator().manual_seed(seed)
    targets = random_targets(generator, counts, num_classes, (side, side), max_size=max_size)
    return generator, targets, featmap_sizes(side)


def random_targets(
    generator: torch.Generator,
    counts: Sequence[int],
    num_classes: int,
    image_size: tuple[int, int] | Sequence[tuple[int, int]] = (IMAGE_SIZE, IMAGE_SIZE),
    min_size: float = 8.0,
    max_size: float = 120.0,
) -> list[dict[str, Tensor]]:
    """One dict per image with ``counts[i]`` random float boxes inside an ``(H, W)`` image."""
    sizes = [image_size] * len(counts) if isinstance(image_size[0], int) else list(image_size)
    targets = []
    for m, (height, width) in zip(counts, sizes, strict=True):
        limit = torch.tensor([float(width), float(height)])
        wh = min_size + torch.rand(m, 2, generator=generator) * (torch.clamp(limit, max=max_size) - min_size)
        xy = torch.rand(m, 2, generator=generator) * (limit - wh)
        labels = torch.randint(0, num_classes, (m,), generator=generator)
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1), "labels": labels})
    return targets


def random_maps(
    generator: torch.Generator,
    batch: int,
    channels: int,
    sizes: Sequence[tuple[int, int]] = FEATMAP_SIZES,
    scale: float = 1.0,
    shift: float = 0.0,
    positive: bool = False,
) -> list[Tensor]:
    """Leaf per-level maps ``(B, channels, H_l, W_l)`` that require grad (``exp`` of them if ``positive``)."""
    maps = []
    for height, width in sizes:
        m = torch.randn(batch, channels, height, width, generator=generator) * scale + shift
        maps.append((m.exp() if positive else m).requires_grad_())
    return maps


def levels_to_maps(per_level: Sequence[Tensor], sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Per level ``(B, H·W·A, k)`` rows ``(y, x, a)`` back to maps ``(B, A·k, H, W)`` (channel ``a·k + j``)."""
    maps = []
    for rows, (height, width) in zip(per_level, sizes, strict=True):
        batch = rows.shape[0]
        maps.append(rows.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous())
    return maps


def grads(value: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """``d value / d inputs``; an input the value does not depend on gets zeros."""
    got = torch.autograd.grad(value, list(inputs), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(got, inputs, strict=True)]


def assert_terms_match(
    got: dict[str, Tensor], want: dict[str, Tensor], inputs: Sequence[Tensor], rtol: float = 1e-4, atol: float = 1e-6
) -> None:
    """Same keys, values within float32 round-off, and the same gradient of every term wrt ``inputs``."""
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(
            got[key], want[key].to(got[key].dtype), rtol=rtol, atol=atol, msg=lambda m, k=key: f"{k}: {m}"
        )
        got_grads = grads(got[key], inputs) if got[key].requires_grad else [torch.zeros_like(x) for x in inputs]
        want_grads = grads(want[key], inputs) if want[key].requires_grad else [torch.zeros_like(x) for x in inputs]
        for i, (g, w) in enumerate(zip(got_grads, want_grads, strict=True)):
            scale = float(w.abs().max()) if w.numel() else 0.0
            torch.testing.assert_close(
                g, w, rtol=rtol, atol=atol * max(scale, 1e-3), msg=lambda m, k=key, i=i: f"d {k} / d input {i}: {m}"
            )

"""FCOS point assignment, batched over images and chunked over points."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_losses.assigners.base import AssignResult, chunk_budget, chunk_size
from lightning_losses.boxes.cache import device_constant
from lightning_losses.boxes.targets import PaddedTargets
from lightning_losses.functional.kernels.runtime import run_kernel

__all__ = ["FCOS_REGRESS_RANGES", "PointAssigner"]

FCOS_REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1e8))

# Temporaries alive at once per (image, box, point) triple, at the peak of a chunk. Center sampling (the stack):
# left, top, right, bottom (float32, 16 B), the four center-region sides (16) and their stack (16): 48 B, 52
# with the per-point running minimum shared by the boxes. Without: the four sides, their minima, max_side, the
# masks and the masked areas, ~30 B: 32. Measured on CPU, tracking live tensor storage: 48.3 and 29.3 B.
_BYTES_PER_TRIPLE = 52
_BYTES_PER_TRIPLE_WHOLE_BOX = 32
_COMPILE_MIN_PAIRS = 1 << 18  # (image, box, point) triples from which the chunk kernel is compiled


class PointAssigner:
    r"""Assign FCOS points to boxes: strictly inside, within the level's range, smallest box wins.

    A point :math:`(x, y)` of a level with range :math:`[m_{lo}, m_{hi}]` is a candidate for a box when
    it lies strictly inside the box (with ``center_sampling``: strictly inside the box's center region
    :math:`[\max(c_x - r s, x_1), \max(c_y - r s, y_1), \min(c_x + r s, x_2), \min(c_y + r s, y_2)]`,
    :math:`r` = ``center_sample_radius``, :math:`s` the stride) and
    :math:`m_{lo} \le \max(l, t, r, b) \le m_{hi}`. Among its candidates the box of smallest area wins
    (the first on ties); a point with none is negative.

    Args:
        regress_ranges: ``(lo, hi)`` per level.
        center_sampling: use the center region instead of the whole box.
        center_sample_radius: :math:`r`, in strides.
        max_elements: chunk budget: ``None`` (default) is 2^24 elements (8 per (image, box, point) triple),
            cut to what the memory available on the points' device allows
            (:func:`~lightning_losses.assigners.base.chunk_budget`, 52 bytes of temporaries per triple, 32
            without center sampling); an int is a fixed budget of elements. The chunking never changes the
            result.
    """

    def __init__(
        self,
        regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES,
        center_sampling: bool = False,
        center_sample_radius: float = 1.5,
        max_elements: int | None = None,
    ) -> None:
        self.regress_ranges = [tuple(float(v) for v in r) for r in regress_ranges]
        self.center_sampling = center_sampling
        self.center_sample_radius = float(center_sample_radius)
        self.max_elements = None if max_elements is None else int(max_elements)

    @torch.no_grad()
    def assign(self, points: Tensor, levels: Tensor, strides: Sequence[int], gts: PaddedTargets) -> AssignResult:
        """Assign ``(P, 2)`` points of the given ``(P,)`` levels to the padded boxes of each image.

        ``max_overlaps`` holds the matched box's area (``inf`` for negatives).
        """
        if len(self.regress_ranges) < len(strides):
            raise ValueError(f"{len(self.regress_ranges)} regress ranges for {len(strides)} levels")
        points = points.float()  # half-precision areas overflow past 65504 px²
        batch, num_gts = gts.mask.shape
        num_points = points.shape[0]
        ranges = device_constant(self.regress_ranges, points.device)[levels]
        radius = device_constant([float(s) for s in strides], points.device)[levels] * self.center_sample_radius
        areas = ((gts.boxes[..., 2] - gts.boxes[..., 0]) * (gts.boxes[..., 3] - gts.boxes[..., 1])).masked_fill(
            ~gts.mask, float("inf")
        )
        min_area = points.new_full((batch, num_points), float("inf"))
        index = torch.zeros(batch, num_points, dtype=torch.long, device=points.device)
        per_triple = _BYTES_PER_TRIPLE if self.center_sampling else _BYTES_PER_TRIPLE_WHOLE_BOX
        budget = chunk_budget(self.max_elements, points.device, per_triple, per_pair=8)
        step = chunk_size(batch, num_gts, num_points, budget)
        for start in range(0, num_points if num_gts else 0, step):
            stop = min(start + step, num_points)
            min_area[:, start:stop], index[:, start:stop] = run_kernel(
                _smallest_candidate,
                batch * num_gts * num_points,  # the whole problem decides: every chunk takes the same path
                points[start:stop],
                gts.boxes,
                areas,
                ranges[start:stop],
                radius[start:stop],
                self.center_sampling,
                min_elements=_COMPILE_MIN_PAIRS,
            )
        positive = torch.isfinite(min_area)
        gt_inds = torch.where(positive, index + 1, 0)
        labels = torch.where(positive, gts.labels.gather(1, index), -1)
        return AssignResult(gt_inds, min_area, labels)


def _smallest_candidate(
    points: Tensor, boxes: Tensor, areas: Tensor, ranges: Tensor, radius: Tensor, center_sampling: bool
) -> tuple[Tensor, Tensor]:
    """``(B, n)`` area of each point's smallest candidate box (``inf``: none) and that box's index (the first on
    ties), for ``(n, 2)`` points, ``(B, G, 4)`` boxes with ``(B, G)`` areas (``inf`` for padding), per-point
    ``(n, 2)`` ranges and ``(n,)`` center-sampling radii.

    One pass over the (image, box, point) triples: through ``torch.compile`` (large problems, see
    :func:`~lightning_losses.functional.kernels.runtime.run_kernel`) its fifteen element-wise steps and the
    minimum over boxes are one loop.
    """
    boxes = boxes[..., None, :]  # (B, G, 1, 4)
    x, y = points[:, 0], points[:, 1]
    left, top = x - boxes[..., 0], y - boxes[..., 1]
    right, bottom = boxes[..., 2] - x, boxes[..., 3] - y
    if center_sampling:
        cx = (boxes[..., 0] + boxes[..., 2]) / 2
        cy = (boxes[..., 1] + boxes[..., 3]) / 2
        inside = (
            torch.stack(
                [
                    x - torch.maximum(cx - radius, boxes[..., 0]),
                    y - torch.maximum(cy - radius, boxes[..., 1]),
                    torch.minimum(cx + radius, boxes[..., 2]) - x,
                    torch.minimum(cy + radius, boxes[..., 3]) - y,
                ]
            ).amin(dim=0)
            > 0
        )
    else:
        inside = torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom)) > 0
    max_side = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))
    in_range = (max_side >= ranges[:, 0]) & (max_side <= ranges[:, 1])
    candidate_areas = torch.where(inside & in_range, areas[..., None], float("inf"))
    return candidate_areas.min(dim=1)

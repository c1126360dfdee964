"""What a dense criterion checks of its inputs, in one place: the mistakes that would otherwise train silently.

:class:`~lightning_losses.presets.DenseCriterion` calls :func:`check_inputs` on its first call (and on every
call with ``validate_args = True``): labels outside ``[0, num_classes)``, inverted boxes, boxes that look
normalised or centre-size, per-level maps whose sizes disagree with ``image_size`` and the strides. Reading the
targets back costs one host transfer, once per criterion copy. :func:`check_channels` and
:func:`unflatten_levels` look at shapes only (no device work) and run on every call.

Conventions the messages name: labels are 0-based class indices, background is implicit (an image's unlisted
area); boxes are absolute-pixel ``xyxy`` ``(x1, y1, x2, y2)`` in the image the maps were computed on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_channels",
    "check_inputs",
    "check_level_sizes",
    "check_targets",
    "image_hw",
    "unflatten_levels",
]

ImageSize = int | Sequence[int] | Sequence[Sequence[int]] | Tensor | None
TARGETS = "absolute-pixel xyxy boxes (x1, y1, x2, y2) and 0-based labels in [0, num_classes)"
CONVERT = 'e.g. torchvision.ops.box_convert(boxes, "cxcywh", "xyxy")'


def image_hw(image_size: ImageSize) -> tuple[tuple[int, int] | None, bool]:
    """``((H, W), per_image)`` on the host: an int is a square; per-image ``(B, 2)`` sizes give their maximum.

    A tensor on an accelerator is read back (one host sync); give host numbers to avoid it.

    Example:
        >>> image_hw(64), image_hw((48, 64)), image_hw([(48, 64), (60, 40)])
        (((64, 64), False), ((48, 64), False), ((60, 64), True))
    """
    if image_size is None:
        return None, False
    values = image_size.detach().cpu().tolist() if isinstance(image_size, Tensor) else image_size
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return (math.ceil(values), math.ceil(values)), False
    rows = list(values) if isinstance(values, Sequence) else None
    if rows and all(isinstance(v, (int, float)) for v in rows) and len(rows) == 2:
        return (math.ceil(rows[0]), math.ceil(rows[1])), False
    if rows and all(isinstance(r, Sequence) and len(r) == 2 for r in rows):
        return (math.ceil(max(r[0] for r in rows)), math.ceil(max(r[1] for r in rows))), True
    raise ValueError(f"`image_size` must be an int (a square), (H, W) or one (H, W) per image, got {image_size!r}")


def unflatten_levels(
    maps: Sequence[Tensor],
    name: str,
    strides: Sequence[int],
    image_size: ImageSize,
    priors_per_cell: int,
    has_priors: bool,
) -> list[Tensor]:
    """Flattened per-level maps ``(B, N_l, K)`` (torchvision's heads) as ``(B, A·K, H_l, W_l)`` views.

    A level's ``H_l × W_l`` comes from ``image_size`` and its stride: ``ceil`` or ``floor`` of ``H / s`` and
    ``W / s`` (the padding conventions of common backbones), the one pair with ``H_l · W_l · A = N_l``. With
    ``priors`` given and no ``image_size`` the positions come from the priors and only the counts matter: a
    level becomes an ``(N_l, 1)`` column. 4-D maps are returned as they are. Rows stay in their order
    (``y``-major, ``x``, anchor), so flattening the result gives back the input exactly.
    """
    if not isinstance(maps, (list, tuple)) or not any(isinstance(m, Tensor) and m.ndim == 3 for m in maps):
        return list(maps) if isinstance(maps, (list, tuple)) else maps
    hw, _ = image_hw(image_size)
    out = []
    for level, m in enumerate(maps):
        if not isinstance(m, Tensor) or m.ndim != 3 or level >= len(strides):
            out.append(m)
            continue
        batch, rows, channels = m.shape
        if hw is None:
            if not has_priors:
                raise ValueError(
                    f"`{name}[{level}]` is flattened, {tuple(m.shape)} = (B, N_l, {channels}): the level's "
                    "H_l × W_l is needed to place its priors. Give `image_size` (H, W) (a level is then "
                    "ceil(H / stride) × ceil(W / stride)), or `priors`, or pass (B, A·C, H_l, W_l) maps"
                )
            out.append(m.reshape(batch, rows, 1, channels).permute(0, 3, 1, 2))
            continue
        stride = strides[level]
        heights = sorted({math.ceil(hw[0] / stride), max(hw[0] // stride, 1)}, reverse=True)
        widths = sorted({math.ceil(hw[1] / stride), max(hw[1] // stride, 1)}, reverse=True)
        fits = [
            (h, w)
            for h in heights
            for w in widths
            if (rows % (h * w) == 0 if has_priors else rows == h * w * priors_per_cell)
        ]
        if (heights[0], widths[0]) in fits:
            fits = [(heights[0], widths[0])]
        if len(fits) != 1:
            expected = " or ".join(
                f"{h}·{w}·{priors_per_cell} = {h * w * priors_per_cell}" for h in heights for w in widths
            )
            raise ValueError(
                f"`{name}[{level}]` is flattened with {rows} rows, but an image of {hw[0]} × {hw[1]} at stride "
                f"{stride} gives H_l · W_l · A = {expected} priors: check `image_size` and `strides` "
                f"{tuple(strides)}, or pass (B, A·C, H_l, W_l) maps"
            )
        h, w = fits[0]
        per_cell = rows // (h * w)
        out.append(m.reshape(batch, h, w, per_cell * channels).permute(0, 3, 1, 2))
    return out


def check_channels(cls_scores: Any, num_classes: int, priors_per_cell: int | None) -> None:
    """``cls_scores[l]`` has ``A · C`` channels (``(B, A·C, H, W)``) or ``C`` columns (``(B, N, C)``).

    ``priors_per_cell`` is the ``A`` of the criterion's generated priors (``None`` with explicit priors: any
    ``A``). Shapes only.
    """
    if not isinstance(cls_scores, (list, tuple)):
        return
    for level, m in enumerate(cls_scores):
        if not isinstance(m, Tensor) or m.ndim not in (3, 4):
            continue
        channels = int(m.shape[1] if m.ndim == 4 else m.shape[-1])
        if m.ndim == 3 and channels != num_classes:
            raise ValueError(
                f"`cls_scores[{level}]` is flattened (B, N, C) with C = {channels}, but the criterion's "
                f"num_classes is {num_classes}: is `num_classes` the model's class count (background excluded)?"
            )
        per_cell = channels / num_classes
        if m.ndim == 4 and (channels % num_classes or (priors_per_cell is not None and per_cell != priors_per_cell)):
            anchors = priors_per_cell if priors_per_cell is not None else "A"
            want = "" if priors_per_cell is None else f" = {priors_per_cell * num_classes}"
            raise ValueError(
                f"`cls_scores[{level}]` has {channels} channels, shape {tuple(m.shape)}; expected A · C = "
                f"{anchors} · {num_classes}{want}, with A priors per cell and C the criterion's num_classes = "
                f"{num_classes}: is `num_classes` the model's class count (background excluded)?"
            )


def check_level_sizes(
    sizes: Sequence[tuple[int, int]], strides: Sequence[int], image_size: ImageSize, name: str
) -> None:
    """Each level's ``H_l × W_l`` within 1 of ``ceil(H / s_l) × ceil(W / s_l)``.

    Per-image sizes ``(B, 2)`` may be smaller than the padded batch the maps were computed on: there a level may
    also be larger, by the padding to the coarsest stride. Without ``image_size`` the levels are compared with
    one another: all must cover one image size (reversed levels or wrong strides do not).
    """
    if len(sizes) != len(strides) or not sizes:
        return
    hw, per_image = image_hw(image_size)
    order = f"are the levels in the order of `strides` {tuple(strides)}, and are those the model's strides?"
    if hw is None:
        for axis, label in ((0, "height"), (1, "width")):
            low = max((s[axis] - 2) * st + 1 for s, st in zip(sizes, strides, strict=True))
            high = min((s[axis] + 1) * st for s, st in zip(sizes, strides, strict=True))
            if low > high:
                covers = ", ".join(f"{s[axis]}·{st} = {s[axis] * st}" for s, st in zip(sizes, strides, strict=True))
                raise ValueError(
                    f"`{name}` levels cover image {label}s ({covers} pixels) that no single image has: {order}"
                )
        return
    pad = max(strides) if per_image else 0
    for level, ((h, w), stride) in enumerate(zip(sizes, strides, strict=True)):
        want = (math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))
        most = (math.ceil((hw[0] + pad) / stride), math.ceil((hw[1] + pad) / stride))
        if not (want[0] - 1 <= h <= most[0] + 1 and want[1] - 1 <= w <= most[1] + 1):
            raise ValueError(
                f"`{name}[{level}]` is {h} × {w} at stride {stride}, but an image of {hw[0]} × {hw[1]} "
                f"(`image_size`) gives ceil(H / {stride}) × ceil(W / {stride}) = {want[0]} × {want[1]} "
                f"(±1 allowed for padding conventions): {order}"
            )


def _well_formed(targets: Any) -> bool:
    if not isinstance(targets, Sequence) or isinstance(targets, (str, bytes)) or not targets:
        return False
    for t in targets:
        if (
            not isinstance(t, Mapping)
            or not isinstance(t.get("boxes"), Tensor)
            or not isinstance(t.get("labels"), Tensor)
        ):
            return False
        boxes, labels = t["boxes"], t["labels"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1] or labels.is_floating_point():
            return False
    return True


def check_targets(targets: Any, num_classes: int, extent: tuple[int, int] | None) -> None:
    """Labels in ``[0, num_classes)`` and ``x2 ≥ x1``, ``y2 ≥ y1`` (``ValueError``); a ``UserWarning`` when the
    boxes look normalised (every coordinate ≤ 1.5 on a larger image) or lie outside the ``(H, W)`` ``extent``.

    Malformed targets are left to the criterion's own checks. One host read for the whole batch.
    """
    if not _well_formed(targets):
        return
    labels = torch.cat([t["labels"].reshape(-1).long() for t in targets])
    if labels.numel() == 0:
        return
    device = labels.device
    boxes = torch.cat([t["boxes"].to(device=device, dtype=torch.float32) for t in targets])
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    height, width = extent if extent is not None else (math.inf, math.inf)
    limit = torch.tensor([width, height], dtype=torch.float32, device=device)
    outside = (boxes[:, :2] >= limit).any(1) | (boxes[:, 2:] <= 0).any(1) | (boxes[:, 2:] > 1.5 * limit).any(1)
    stats = torch.stack(
        [
            labels.min().float(),
            labels.max().float(),
            inverted.sum().float(),
            boxes.abs().amax(),
            outside.sum().float(),
        ]
    ).tolist()
    low, high, num_inverted, largest, num_outside = stats
    if low < 0 or high >= num_classes:
        for i, t in enumerate(targets):
            bad = t["labels"][(t["labels"] < 0) | (t["labels"] >= num_classes)]
            if bad.numel():
                values = sorted({int(v) for v in bad.tolist()})
                hint = " (1-based labels? subtract 1)" if high == num_classes and low >= 1 else ""
                raise ValueError(
                    f'`targets[{i}]["labels"]` holds {values}, outside [0, num_classes) = [0, {num_classes}): labels '
                    f"are 0-based class indices with the background implicit (no label for it){hint}; or is "
                    f"the criterion's num_classes ({num_classes}) too small?"
                )
    if num_inverted:
        for i, t in enumerate(targets):
            b = t["boxes"].float()
            rows = ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).nonzero().flatten().tolist()
            if rows:
                raise ValueError(
                    f'`targets[{i}]["boxes"]` has {len(rows)} boxes with x2 < x1 or y2 < y1, e.g. row {rows[0]}: '
                    f"{[round(v, 2) for v in b[rows[0]].tolist()]}. Boxes must be absolute-pixel xyxy (x1, y1, x2, "
                    f"y2); centre-size (cx, cy, w, h) or (x, y, w, h) boxes look like this: convert them, {CONVERT}"
                )
    if extent is None:
        return
    if largest <= 1.5 and max(extent) > 4:
        warnings.warn(
            f"every box coordinate in `targets` is at most 1.5 on a {height} × {width} image: the boxes look "
            f"normalised. The criteria take {TARGETS}: multiply normalised boxes by (W, H, W, H)",
            UserWarning,
            stacklevel=5,  # the caller of the criterion
        )
    elif num_outside:
        warnings.warn(
            f"{int(num_outside)} boxes in `targets` lie outside the {height} × {width} image (wholly, or past 1.5 "
            f"times its size). The criteria take {TARGETS} in the image the maps were computed on: centre-size "
            f"(cx, cy, w, h) boxes or boxes of the unresized image look like this ({CONVERT})",
            UserWarning,
            stacklevel=5,  # the caller of the criterion
        )


def check_inputs(
    targets: Any,
    num_classes: int,
    sizes: Sequence[tuple[int, int]] | None,
    strides: Sequence[int] | None,
    image_size: ImageSize,
    name: str,
) -> None:
    """:func:`check_level_sizes` (when ``sizes`` and ``strides`` are known) and :func:`check_targets` in the
    image given by ``image_size``, or else the one the maps cover (``max_l H_l · s_l``)."""
    if sizes and strides is not None:
        check_level_sizes(sizes, strides, image_size, name)
    extent, _ = image_hw(image_size)
    if extent is None and sizes and strides is not None and len(sizes) == len(strides):
        covered = [(h * s, w * s) for (h, w), s in zip(sizes, strides, strict=True)]
        extent = (max(h for h, _ in covered), max(w for _, w in covered))
    check_targets(targets, num_classes, extent)

"""Inputs and candidates of the dense-preset benchmark (:mod:`benchmarks.dense_sizes`).

Every dense preset (RetinaNet in MMDetection style, FCOS, ATSS, GFL; YOLOX in MMDetection style and YOLOv8, which
have no baseline here) gets per-level maps of an untrained head at one image size, ``boxes`` random boxes per
image (log-uniform sides from 16 px to ¾ of the short side, inside the image) and ``classes`` classes. Candidates:
``package`` (the preset) and ``mmdet`` (:mod:`benchmarks.mmdet_heads`, MMDetection 3.x's head code path on the
same maps). Inputs are generated on the CPU from fixed seeds and then moved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from benchmarks import mmdet_heads
from benchmarks.workloads import PACKAGE, Case, Comparison, Workload

__all__ = ["DENSE", "DENSE_BY_NAME", "MMDET", "dense_label", "host_params"]

MMDET = "mmdet"
STRIDES = mmdet_heads.STRIDES
YOLO_STRIDES = (8, 16, 32)
Params = Mapping[str, Any]


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sizes(p: Params, strides: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(math.ceil(p["height"] / s), math.ceil(p["width"] / s)) for s in strides]


def _maps(
    g: torch.Generator, batch: int, sizes: list[tuple[int, int]], channels: int, scale: float, shift: float
) -> list[Tensor]:
    return [torch.randn(batch, channels, h, w, generator=g) * scale + shift for h, w in sizes]


def _targets(g: torch.Generator, p: Params, device: torch.device) -> list[dict[str, Tensor]]:
    """``boxes`` boxes per image, log-uniform sides in [16, ¾ short side], centres so that each lies inside."""
    height, width, n = int(p["height"]), int(p["width"]), int(p["boxes"])
    image = torch.tensor([width, height], dtype=torch.float32)
    out = []
    for _ in range(int(p["batch"])):
        size = torch.exp(torch.empty(n, 2).uniform_(math.log(16.0), math.log(0.75 * min(height, width)), generator=g))
        centre = size / 2 + torch.rand(n, 2, generator=g) * (image - size)
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
        labels = torch.randint(0, int(p["classes"]), (n,), generator=g)
        out.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return out


def _leaves(maps: list[list[Tensor]], device: torch.device) -> list[list[Tensor]]:
    return [[m.to(device).requires_grad_() for m in level_maps] for level_maps in maps]


def _sum(losses: Mapping[str, Tensor]) -> Tensor:
    return torch.stack([torch.as_tensor(v, device=next(iter(losses.values())).device) for v in losses.values()]).sum()


def _probes(criterion: Any) -> list[tuple[str, Any, str]]:
    return [("assign", criterion.assigner, "assign")] + [(t, getattr(criterion, t), "forward") for t in criterion.terms]


def _head_probes(head: Any, terms: tuple[str, ...]) -> list[tuple[str, Any, str]]:
    return [("targets (assign)", head, "get_targets")] + [(t, head, t) for t in terms]


def _build(kind: str) -> Callable[[Params, torch.device], Case]:
    def build(p: Params, device: torch.device) -> Case:
        from lightning_losses import presets

        batch, classes = int(p["batch"]), int(p["classes"])
        image_size = (int(p["height"]), int(p["width"]))
        g = _g(13)
        targets = _targets(g, p, device)
        sizes = _sizes(p, STRIDES)
        if kind == "retinanet":
            criterion = presets.RetinaNetCriterion(classes, strides=STRIDES)
            maps = [_maps(g, batch, sizes, 9 * classes, 1.0, -4.6), _maps(g, batch, sizes, 36, 0.1, 0.0)]
            head = mmdet_heads.RetinaHead(classes)
        elif kind == "fcos":
            criterion = presets.FCOSCriterion(classes, strides=STRIDES)
            distances = [
                (torch.rand(batch, 4, h, w, generator=g) * 7 + 1) * s for (h, w), s in zip(sizes, STRIDES, strict=True)
            ]
            maps = [_maps(g, batch, sizes, classes, 1.0, -4.6), distances, _maps(g, batch, sizes, 1, 1.0, 0.0)]
            head = mmdet_heads.FCOSHead(classes)
        elif kind == "atss":
            criterion = presets.ATSSCriterion(classes, strides=STRIDES)
            maps = [
                _maps(g, batch, sizes, classes, 1.0, -4.6),
                _maps(g, batch, sizes, 4, 0.1, 0.0),
                _maps(g, batch, sizes, 1, 1.0, 0.0),
            ]
            head = mmdet_heads.ATSSHead(classes)
        elif kind == "gfl":
            criterion = presets.GFLCriterion(classes, strides=STRIDES)
            maps = [
                _maps(g, batch, sizes, classes, 1.0, -4.6),
                _maps(g, batch, sizes, 4 * (criterion.reg_max + 1), 1.0, 0.0),
            ]
            head = mmdet_heads.GFLHead(classes, criterion.reg_max)
        else:
            return _build_yolo(kind, p, device, g, targets)
        leaves = _leaves(maps, device)
        criterion = criterion.to(device)
        flat = [m for level_maps in leaves for m in level_maps]
        if kind == "fcos":
            package = lambda: _sum(criterion(*leaves, targets))  # noqa: E731
            mmdet = lambda: _sum(head(*leaves, targets))  # noqa: E731
        else:
            package = lambda: _sum(criterion(*leaves, targets, image_size=image_size))  # noqa: E731
            mmdet = lambda: _sum(head(*leaves, targets, image_size))  # noqa: E731
        return Case(
            flat,
            {PACKAGE: package, MMDET: mmdet},
            {PACKAGE: _probes(criterion), MMDET: _head_probes(head, criterion.terms)},
        )

    return build


def _build_yolo(
    kind: str, p: Params, device: torch.device, g: torch.Generator, targets: list[dict[str, Tensor]]
) -> Case:
    """YOLOX (MMDetection's ``(cls, bbox, obj)`` triples) and YOLOv8 (``(B, 4·16 + C, H, W)``), strides 8–32."""
    from lightning_losses import presets

    batch, classes = int(p["batch"]), int(p["classes"])
    image_size = (int(p["height"]), int(p["width"]))
    sizes = _sizes(p, YOLO_STRIDES)
    if kind == "yolox":
        criterion = presets.YOLOXCriterion(classes, strides=YOLO_STRIDES, style="mmdet").to(device)
        boxes = [
            torch.cat(
                [torch.rand(batch, 2, h, w, generator=g), torch.randn(batch, 2, h, w, generator=g) * 0.5 + 1.0], 1
            )
            for h, w in sizes
        ]
        maps = _leaves(
            [_maps(g, batch, sizes, classes, 1.0, -4.6), boxes, _maps(g, batch, sizes, 1, 1.0, -4.6)], device
        )
        outputs: list[Any] = [list(level) for level in zip(*maps, strict=True)]
        flat = [m for level_maps in maps for m in level_maps]
    else:
        criterion = presets.YOLOv8Criterion(classes, YOLO_STRIDES, reg_max=16).to(device)
        level_maps = []
        for h, w in sizes:
            m = torch.randn(batch, 64 + classes, h, w, generator=g)
            m[:, 64:] -= 4.6
            level_maps.append(m.to(device).requires_grad_())
        outputs = flat = level_maps
    package = lambda: _sum(criterion(outputs, targets, image_size=image_size))  # noqa: E731
    return Case(
        flat,
        {PACKAGE: package},
        {PACKAGE: _probes(criterion)},
        notes=["no MMDetection baseline here: the package alone"],
    )


def dense_label(p: Params) -> str:
    return f"B{p['batch']} × {p['height']}×{p['width']}"


def host_params(p: Params) -> dict[str, Any]:
    """The host-time size: the same batch, classes and boxes on a 128 × 128 image (341 cells per image)."""
    return {**p, "height": 128, "width": 128}


_FULL = tuple(
    {"batch": b, "height": h, "width": w, "boxes": 20, "classes": 80}
    for b, h, w in ((2, 640, 640), (4, 1024, 1024), (8, 800, 1333))
)
_QUICK = ({"batch": 2, "height": 128, "width": 160, "boxes": 20, "classes": 80},)
_VS_MMDET = (Comparison(PACKAGE, MMDET, time_target=0.5),)

DENSE: tuple[Workload, ...] = tuple(
    Workload(
        name,
        "dense",
        _build(kind),
        dense_label,
        _FULL,
        _QUICK,
        _VS_MMDET if kind not in ("yolox", "yolov8") else (Comparison(PACKAGE),),
        budget_s=30.0,
    )
    for name, kind in (
        ("RetinaNetCriterion (mmdet)", "retinanet"),
        ("FCOSCriterion", "fcos"),
        ("ATSSCriterion", "atss"),
        ("GFLCriterion", "gfl"),
        ("YOLOXCriterion (mmdet)", "yolox"),
        ("YOLOv8Criterion", "yolov8"),
    )
)
DENSE_BY_NAME: dict[str, Workload] = {f"dense {w.name}": w for w in DENSE}

"""The benchmark's workloads: seeded inputs, the package's candidate and its baselines.

A :class:`Workload` builds a :class:`Case` for one size on one device: leaf tensors that need
gradients, and named candidates that each run one forward and return the scalar loss. The harness
adds the backward (:func:`run_step`), so every timing and memory figure is forward + backward.
Candidates are ``package`` (``lightning_losses``), ``composite`` (the textbook formula of
:mod:`composites`), ``floor`` (one native ``binary_cross_entropy_with_logits`` on the same logits) and
``netspresso`` (NetsPresso Trainer 1.4.1's own loss, when vendored). Inputs are generated on the CPU
from fixed seeds and then moved, so every process and device sees the same numbers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import baselines, composites, yolov8

__all__ = ["BY_NAME", "WORKLOADS", "Case", "Comparison", "Workload", "run_step"]

PACKAGE, COMPOSITE, FLOOR, NETSPRESSO = "package", "composite", "floor", "netspresso"
Params = Mapping[str, Any]
Probe = tuple[str, Any, str]  # (stage label, owner object, method name) timed by the breakdown


@dataclass(frozen=True)
class Comparison:
    """One table row: ``candidate`` against ``baseline`` (measured side by side), with its targets.

    ``time_target`` / ``mem_target`` bound the ratio candidate / baseline (median of per-round time
    ratios; ratio of peak extra memory); ``mem_limit_mb`` bounds the candidate's own peak extra.
    A row without baseline reports the candidate alone.
    """

    candidate: str
    baseline: str | None = None
    time_target: float | None = None
    mem_target: float | None = None
    mem_limit_mb: float | None = None
    check_values: bool = True


@dataclass
class Case:
    """Built inputs of one workload size: leaves to differentiate and the candidates' forwards."""

    leaves: list[Tensor]
    candidates: dict[str, Callable[[], Tensor]]
    probes: dict[str, list[Probe]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Workload:
    """A named benchmark: how to build it, its sizes (full run and ``--quick``) and its table rows."""

    name: str
    group: str
    build: Callable[[Params, torch.device], Case]
    label: Callable[[Params], str]
    full: tuple[Params, ...]
    quick: tuple[Params, ...]
    comparisons: tuple[Comparison, ...]
    budget_s: float = 40.0


def run_step(case: Case, name: str) -> None:
    """One forward and backward of candidate ``name``; the gradients are computed and dropped."""
    loss = case.candidates[name]()
    torch.autograd.grad(loss, case.leaves, allow_unused=True)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _leaf(t: Tensor, device: torch.device) -> Tensor:
    return t.to(device).requires_grad_()


def _k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"


# --------------------------------------------------------------------------------------------------
# Classification losses on (N, C) logits


def _classification_inputs(params: Params, device: torch.device) -> dict[str, Any]:
    """Logits around the detector prior, 2 % positives with labels in ``[0, C)``, background ``C``."""
    n, c = int(params["n"]), int(params["classes"])
    g = _generator(0)
    pred = torch.randn(n, c, generator=g) * 1.5 - 2.0
    positive = torch.rand(n, generator=g) < 0.02
    labels = torch.where(positive, torch.randint(0, c, (n,), generator=g), torch.full((n,), c))
    scores = torch.rand(n, generator=g) * positive
    onehot = F.one_hot(labels, c + 1)[:, :c].float()
    return {
        "pred": _leaf(pred, device),
        "labels": labels.to(device),
        "scores": scores.to(device),
        "onehot": onehot.to(device),
        "soft": (onehot * scores[:, None]).to(device),
        "num_pos": float(max(int(positive.sum()), 1)),
    }


def _build_focal(params: Params, device: torch.device) -> Case:
    from lightning_losses.losses import FocalLoss

    x = _classification_inputs(params, device)
    module = FocalLoss().to(device)
    pred, labels, npos = x["pred"], x["labels"], x["num_pos"]
    return Case(
        [pred],
        {
            PACKAGE: lambda: module(pred, labels, avg_factor=npos),
            COMPOSITE: lambda: composites.mmdet_focal_loss(pred, labels, avg_factor=npos),
            FLOOR: lambda: composites.bce_floor(pred, x["onehot"], npos),
        },
    )


def _build_sigmoid_focal(params: Params, device: torch.device) -> Case:
    from lightning_losses.losses import SigmoidFocalLoss

    x = _classification_inputs(params, device)
    module = SigmoidFocalLoss().to(device)
    pred, onehot = x["pred"], x["onehot"]
    return Case(
        [pred],
        {
            PACKAGE: lambda: module(pred, onehot),
            COMPOSITE: lambda: composites.torchvision_focal_loss(pred, onehot),
            FLOOR: lambda: composites.bce_floor(pred, onehot),
        },
    )


def _build_quality_focal(params: Params, device: torch.device) -> Case:
    from lightning_losses.losses import QualityFocalLoss

    x = _classification_inputs(params, device)
    module = QualityFocalLoss().to(device)
    pred, labels, scores, npos = x["pred"], x["labels"], x["scores"], x["num_pos"]
    return Case(
        [pred],
        {
            PACKAGE: lambda: module(pred, (labels, scores), avg_factor=npos),
            COMPOSITE: lambda: composites.quality_focal_loss(pred, labels, scores, avg_factor=npos),
            FLOOR: lambda: composites.bce_floor(pred, x["soft"], npos),
        },
    )


# --------------------------------------------------------------------------------------------------
# Box regression losses on (N, 4) xyxy boxes and DFL on (N, n+1) bin logits


def _box_inputs(params: Params, device: torch.device) -> dict[str, Any]:
    """Targets of 8–256 px in an 800 px frame; predictions jittered in center (0.2·wh) and log-size (0.3)."""
    n = int(params["n"])
    g = _generator(1)
    center = torch.rand(n, 2, generator=g) * 800
    size = torch.exp(torch.empty(n, 2).uniform_(math.log(8), math.log(256), generator=g))
    target = torch.cat([center - size / 2, center + size / 2], dim=1)
    pred_center = center + torch.randn(n, 2, generator=g) * 0.2 * size
    pred_size = size * torch.exp(torch.randn(n, 2, generator=g) * 0.3)
    pred = torch.cat([pred_center - pred_size / 2, pred_center + pred_size / 2], dim=1)
    weight = torch.rand(n, generator=g) * 0.9 + 0.1
    return {
        "pred": _leaf(pred, device),
        "target": target.to(device),
        "weight": weight.to(device),
        "avg_factor": float(n) / 2,
    }


def _box_builder(module_name: str, composite: Callable[..., Tensor]) -> Callable[[Params, torch.device], Case]:
    def build(params: Params, device: torch.device) -> Case:
        import lightning_losses.losses as losses

        x = _box_inputs(params, device)
        module = getattr(losses, module_name)().to(device)
        pred, target, weight, avg = x["pred"], x["target"], x["weight"], x["avg_factor"]
        return Case(
            [pred],
            {
                PACKAGE: lambda: module(pred, target, weight=weight, avg_factor=avg),
                COMPOSITE: lambda: composite(pred, target, weight=weight, avg_factor=avg),
            },
        )

    return build


def _build_dfl(params: Params, device: torch.device) -> Case:
    from lightning_losses.losses import DistributionFocalLoss

    n, bins = int(params["n"]), int(params["bins"])
    g = _generator(2)
    pred = _leaf(torch.randn(n, bins, generator=g), device)
    target = (torch.rand(n, generator=g) * (bins - 1.1)).to(device)  # GFL clamps targets to reg_max - 0.1
    weight = (torch.rand(n, generator=g) * 0.9 + 0.1).to(device)
    avg = float(n) / 2
    module = DistributionFocalLoss().to(device)
    return Case(
        [pred],
        {
            PACKAGE: lambda: module(pred, target, weight=weight, avg_factor=avg),
            COMPOSITE: lambda: composites.distribution_focal_loss(pred, target, weight=weight, avg_factor=avg),
        },
    )


# --------------------------------------------------------------------------------------------------
# Detector criteria


def _targets(
    g: torch.Generator, batch: int, height: int, width: int, boxes: int, classes: int, sides: tuple[float, float]
) -> list[dict[str, Tensor]]:
    """``boxes`` boxes per image, log-uniform sides in ``sides`` (at most 90 % of the image), inside it."""
    out = []
    limit = torch.tensor([width, height], dtype=torch.float32) * 0.9
    for _ in range(batch):
        size = torch.exp(torch.empty(boxes, 2).uniform_(math.log(sides[0]), math.log(sides[1]), generator=g))
        size = torch.minimum(size, limit)
        room = torch.tensor([width, height]) - size
        center = size / 2 + torch.rand(boxes, 2, generator=g) * room
        xyxy = torch.cat([center - size / 2, center + size / 2], dim=1)
        out.append({"boxes": xyxy, "labels": torch.randint(0, classes, (boxes,), generator=g)})
    return out


def _to(targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> list[dict[str, Tensor]]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def _sum(losses: Mapping[str, Tensor]) -> Tensor:
    return torch.stack(list(losses.values())).sum()


def _term_probes(criterion: Any) -> list[Probe]:
    return [("assign", criterion.assigner, "assign")] + [(t, getattr(criterion, t), "forward") for t in criterion.terms]


def _build_yolox(params: Params, device: torch.device) -> Case:
    """NetsPresso's YOLOX layout: per level one raw ``(B, 5 + C, H, W)`` map, strides 8/16/32, xyxy targets."""
    from lightning_losses.presets import YOLOXCriterion

    batch, image, classes = int(params["batch"]), int(params["image"]), int(params["classes"])
    g = _generator(3)
    maps = []
    for stride in (8, 16, 32):
        side = image // stride
        m = torch.empty(batch, 5 + classes, side, side)
        m[:, :2] = torch.rand(batch, 2, side, side, generator=g)
        m[:, 2:4] = torch.randn(batch, 2, side, side, generator=g) * 0.5 + 1.0
        m[:, 4:] = torch.randn(batch, 1 + classes, side, side, generator=g) - 4.6
        maps.append(_leaf(m, device))
    targets = _to(_targets(g, batch, image, image, int(params["boxes"]), classes, (12.0, image / 2)), device)
    criterion = YOLOXCriterion(classes, strides=(8, 16, 32), style="netspresso").to(device)
    case = Case(maps, {PACKAGE: lambda: _sum(criterion(maps, targets))}, {PACKAGE: _term_probes(criterion)})
    ns = baselines.load_netspresso()
    if isinstance(ns, str):
        case.notes.append(ns)
        return case
    baseline = ns.yolox_loss(l1_activate_epoch=1).to(device)

    def netspresso() -> Tensor:
        # yolox_loss rewrites target["gt"][i]["boxes"] to cxcywh: every call gets its own copy (~µs here).
        target = {"gt": copy.deepcopy(targets), "img_size": image, "num_classes": classes}
        return baseline({"pred": maps}, target)

    case.candidates[NETSPRESSO] = netspresso
    case.probes[NETSPRESSO] = [
        ("assign", baseline, "get_assignments"),
        ("iou", baseline.iou_loss, "forward"),
        ("bce (obj+cls)", baseline.bcewithlog_loss, "forward"),
        ("l1", baseline.l1_loss, "forward"),
    ]
    return case


RETINA_STRIDES = (8, 16, 32, 64, 128)


def _level_sizes(height: int, width: int, strides: Sequence[int]) -> list[tuple[int, int]]:
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


def _build_retinanet_netspresso(params: Params, device: torch.device) -> Case:
    """NetsPresso's RetinaNet layout: per level ``(B, H·W·A, C)`` / ``(B, H·W·A, 4)``, one shared anchor tensor."""
    from lightning_losses.presets import RetinaNetCriterion

    batch, height, width = int(params["batch"]), int(params["height"]), int(params["width"])
    classes = int(params["classes"])
    criterion = RetinaNetCriterion(classes, strides=RETINA_STRIDES, style="netspresso").to(device)
    sizes = _level_sizes(height, width, RETINA_STRIDES)
    anchors = torch.cat(criterion.anchor_generator.grid_priors(sizes, device))
    per_cell = criterion.anchor_generator.num_base_priors
    g = _generator(4)
    cls = [_leaf(torch.randn(batch, h * w * per_cell, classes, generator=g) - 4.6, device) for h, w in sizes]
    box = [_leaf(torch.randn(batch, h * w * per_cell, 4, generator=g) * 0.1, device) for h, w in sizes]
    targets = _to(_targets(g, batch, height, width, int(params["boxes"]), classes, (32.0, 512.0)), device)
    case = Case(
        cls + box,
        {PACKAGE: lambda: _sum(criterion(cls, box, targets, priors=anchors))},
        {PACKAGE: _term_probes(criterion)},
    )
    ns = baselines.load_netspresso()
    if isinstance(ns, str):
        case.notes.append(ns)
        return case
    baseline = ns.retinanet_loss().to(device)

    def netspresso() -> Tensor:
        out = {"anchors": anchors, "cls_logits": cls, "bbox_regression": box}
        return baseline(out, {"gt": copy.deepcopy(targets)})

    case.candidates[NETSPRESSO] = netspresso
    case.probes[NETSPRESSO] = [("focal", baseline.cls_loss, "forward"), ("l1", baseline.reg_loss, "forward")]
    return case


def _dense_maps(
    g: torch.Generator, batch: int, sizes: Sequence[tuple[int, int]], channels: int, scale: float, shift: float
) -> list[Tensor]:
    return [torch.randn(batch, channels, h, w, generator=g) * scale + shift for h, w in sizes]


def _build_mmdet_criterion(kind: str) -> Callable[[Params, torch.device], Case]:
    """MMDetection-layout criteria (``(B, A·C, H, W)`` maps, generated priors) at the RetinaNet scale."""

    def build(params: Params, device: torch.device) -> Case:
        from lightning_losses import presets

        batch, height, width = int(params["batch"]), int(params["height"]), int(params["width"])
        classes = int(params["classes"])
        sizes = _level_sizes(height, width, RETINA_STRIDES)
        g = _generator(5)
        targets = _to(_targets(g, batch, height, width, int(params["boxes"]), classes, (32.0, 512.0)), device)
        image_size = (height, width)
        if kind == "retinanet":
            criterion = presets.RetinaNetCriterion(classes, strides=RETINA_STRIDES)
            a = criterion.anchor_generator.num_base_priors
            maps = [_dense_maps(g, batch, sizes, a * classes, 1.0, -4.6), _dense_maps(g, batch, sizes, a * 4, 0.1, 0.0)]
        elif kind == "fcos":
            criterion = presets.FCOSCriterion(classes, strides=RETINA_STRIDES)
            distances = [
                (torch.rand(batch, 4, h, w, generator=g) * 7 + 1) * s
                for (h, w), s in zip(sizes, RETINA_STRIDES, strict=True)
            ]
            maps = [
                _dense_maps(g, batch, sizes, classes, 1.0, -4.6),
                distances,
                _dense_maps(g, batch, sizes, 1, 1.0, 0.0),
            ]
            image_size = None
        else:
            criterion = presets.ATSSCriterion(classes) if kind == "atss" else presets.GFLCriterion(classes)
            box_channels = 4 if kind == "atss" else 4 * (criterion.reg_max + 1)
            maps = [
                _dense_maps(g, batch, sizes, classes, 1.0, -4.6),
                _dense_maps(g, batch, sizes, box_channels, 0.1 if kind == "atss" else 1.0, 0.0),
            ]
            if kind == "atss":
                maps.append(_dense_maps(g, batch, sizes, 1, 1.0, 0.0))
        leaves = [[_leaf(m, device) for m in level_maps] for level_maps in maps]
        criterion = criterion.to(device)
        if image_size is None:
            forward = lambda: _sum(criterion(*leaves, targets))  # noqa: E731
        else:
            forward = lambda: _sum(criterion(*leaves, targets, image_size=image_size))  # noqa: E731
        return Case(
            [m for level_maps in leaves for m in level_maps], {PACKAGE: forward}, {PACKAGE: _term_probes(criterion)}
        )

    return build


# --------------------------------------------------------------------------------------------------
# Registry

_CLS_FULL = ({"n": 100_000, "classes": 80}, {"n": 200_000, "classes": 80})
_CLS_QUICK = ({"n": 20_000, "classes": 80},)
_BOX_FULL = ({"n": 400_000},)
_BOX_QUICK = ({"n": 50_000},)
_RETINA_FULL = ({"batch": 2, "height": 800, "width": 1024, "boxes": 20, "classes": 80},)
_RETINA_QUICK = ({"batch": 1, "height": 320, "width": 384, "boxes": 20, "classes": 80},)  # below the compile size


def _cls_label(p: Params) -> str:
    return f"{_k(p['n'])}×{p['classes']}"


def _box_label(p: Params) -> str:
    return f"{_k(p['n'])} boxes" if "bins" not in p else f"{_k(p['n'])}×{p['bins']}"


def _yolox_label(p: Params) -> str:
    priors = sum((p["image"] // s) ** 2 for s in (8, 16, 32))
    return f"B{p['batch']} × {priors:,} priors × {p['boxes']} boxes × {p['classes']} cls ({p['image']} px)"


def _retina_label(p: Params) -> str:
    cells = sum(h * w for h, w in _level_sizes(p["height"], p["width"], RETINA_STRIDES))
    return f"B{p['batch']} × {cells:,} cells × {p['boxes']} boxes × {p['classes']} cls ({p['height']}×{p['width']})"


_VS_COMPOSITE_CLS = Comparison(PACKAGE, COMPOSITE, time_target=0.6, mem_target=0.35)
_VS_COMPOSITE_BOX = Comparison(PACKAGE, COMPOSITE, time_target=0.6, mem_target=0.5)

WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "FocalLoss",
        "classification",
        _build_focal,
        _cls_label,
        _CLS_FULL,
        _CLS_QUICK,
        (_VS_COMPOSITE_CLS, Comparison(PACKAGE, FLOOR, time_target=1.5, check_values=False)),
    ),
    Workload(
        "SigmoidFocalLoss",
        "classification",
        _build_sigmoid_focal,
        _cls_label,
        _CLS_FULL,
        _CLS_QUICK,
        (_VS_COMPOSITE_CLS, Comparison(PACKAGE, FLOOR, check_values=False)),
    ),
    Workload(
        "QualityFocalLoss",
        "classification",
        _build_quality_focal,
        _cls_label,
        _CLS_FULL,
        _CLS_QUICK,
        (_VS_COMPOSITE_CLS, Comparison(PACKAGE, FLOOR, check_values=False)),
    ),
    *(
        Workload(name, "box", _box_builder(name, composite), _box_label, _BOX_FULL, _BOX_QUICK, (_VS_COMPOSITE_BOX,))
        for name, composite in (
            ("IoULoss", composites.iou_loss),
            ("GIoULoss", composites.giou_loss),
            ("DIoULoss", composites.diou_loss),
            ("CIoULoss", composites.ciou_loss),
        )
    ),
    Workload(
        "DistributionFocalLoss",
        "box",
        _build_dfl,
        _box_label,
        ({"n": 400_000, "bins": 17},),
        ({"n": 50_000, "bins": 17},),
        (_VS_COMPOSITE_BOX,),
    ),
    Workload(
        "YOLOXCriterion (netspresso)",
        "netspresso",
        _build_yolox,
        _yolox_label,
        ({"batch": 8, "image": 640, "boxes": 100, "classes": 80},),
        ({"batch": 2, "image": 320, "boxes": 30, "classes": 80},),
        (Comparison(PACKAGE, NETSPRESSO, time_target=1 / 3, mem_target=0.5),),
        budget_s=60.0,
    ),
    Workload(
        "YOLOXCriterion (netspresso), crowded",
        "netspresso",
        _build_yolox,
        _yolox_label,
        ({"batch": 2, "image": 640, "boxes": 500, "classes": 80},),
        ({"batch": 1, "image": 320, "boxes": 200, "classes": 80},),
        (Comparison(PACKAGE, NETSPRESSO, mem_limit_mb=1024.0),),
        budget_s=60.0,
    ),
    Workload(
        "RetinaNetCriterion (netspresso)",
        "netspresso",
        _build_retinanet_netspresso,
        _retina_label,
        _RETINA_FULL,
        _RETINA_QUICK,
        (Comparison(PACKAGE, NETSPRESSO, time_target=0.5),),
        budget_s=60.0,
    ),
    *(
        Workload(
            name,
            "criteria",
            _build_mmdet_criterion(kind),
            _retina_label,
            _RETINA_FULL,
            _RETINA_QUICK,
            (Comparison(PACKAGE),),
            budget_s=25.0,
        )
        for name, kind in (
            ("RetinaNetCriterion (mmdet)", "retinanet"),
            ("ATSSCriterion", "atss"),
            ("GFLCriterion", "gfl"),
            ("FCOSCriterion", "fcos"),
        )
    ),
)

WORKLOADS += yolov8.workloads()  # the task-aligned YOLO rows live in benchmarks/yolov8.py

BY_NAME: dict[str, Workload] = {w.name: w for w in WORKLOADS}

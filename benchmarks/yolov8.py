"""Task-aligned YOLO workloads: ``YOLOv8Criterion`` against ultralytics 8.4's ``v8DetectionLoss`` and NetsPresso
Trainer 1.4.1's ``yolov9_loss``, on the same per-level ``(B, 4·16 + 80, H, W)`` maps (box bins first).

- vs ultralytics: B16 × 8,400 priors (640 px, strides 8/16/32) × 80 classes × 100 boxes per image. The
  baseline gets the maps and the batch dict it expects (image index, class, normalised ``xywh``), built once
  outside the timed step; it returns its terms times the batch size, so its candidate divides by it.
- vs NetsPresso: its box term scores every pair of positives (an ``N × N`` CIoU, about 20 GB at B16), so that
  row runs at B4; compare it per image.
- crowded: B2 × 1,000 boxes per image against ultralytics, with a peak-memory limit of 1 GB on the package.

ultralytics is AGPL and a baseline only: ``setup_baselines.sh`` vendors it into ``benchmarks/_vendor`` (with
``--no-deps`` and the few pure-Python packages its import needs), and this module appends that folder to
``sys.path`` to import it; without it the rows report the package alone with a note.

:func:`workloads` builds the :class:`~benchmarks.workloads.Workload` entries; :mod:`benchmarks.workloads`
adds them to its list (imported lazily here, so neither module imports the other at import time).
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ULTRALYTICS", "load_ultralytics", "ultralytics_vendored", "workloads"]

ULTRALYTICS = "ultralytics"
STRIDES = (8, 16, 32)
REG_MAX = 16


def _vendor() -> Path:
    from benchmarks.baselines import VENDOR, VENDOR_ENV

    return Path(os.environ.get(VENDOR_ENV, VENDOR))


def ultralytics_vendored() -> bool:
    """Whether ``setup_baselines.sh`` put ultralytics in the vendor folder (checked without importing it)."""
    return (_vendor() / "ultralytics" / "utils" / "loss.py").is_file()


def load_ultralytics() -> Any:
    """``ultralytics.utils.loss.v8DetectionLoss`` from the vendor folder, or a string saying why it is absent."""
    vendor = _vendor()
    if not ultralytics_vendored():
        return f"ultralytics not found in {vendor} (run benchmarks/setup_baselines.sh)"
    if str(vendor) not in sys.path:
        sys.path.append(str(vendor))  # after the venv: vendored packages never shadow the project's own
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(vendor / ".ultralytics"))  # its settings file, not in $HOME
    try:
        return importlib.import_module("ultralytics.utils.loss").v8DetectionLoss
    except ImportError as err:
        return f"ultralytics failed to import: {err}"


class _Detect(nn.Module):
    """What ``v8DetectionLoss`` reads from a model's last layer: strides, class count, bins."""

    def __init__(self, classes: int, device: torch.device) -> None:
        super().__init__()
        self.stride = torch.tensor(STRIDES, dtype=torch.float32)
        self.nc, self.reg_max = classes, REG_MAX
        self.anchor = nn.Parameter(torch.zeros(1, device=device))  # v8DetectionLoss reads the device from here


class _Model(nn.Module):
    """A model as ``v8DetectionLoss`` sees it: ``args`` (the 7.5 / 0.5 / 1.5 gains) and ``model[-1]``."""

    def __init__(self, classes: int, device: torch.device) -> None:
        super().__init__()
        self.model = nn.ModuleList([_Detect(classes, device)])
        self.args = type("Hyp", (), {"box": 7.5, "cls": 0.5, "dfl": 1.5})()


def _ultralytics_batch(targets: list[dict[str, Tensor]], image: int, device: torch.device) -> dict[str, Tensor]:
    index = torch.cat([torch.full((len(t["labels"]),), float(i)) for i, t in enumerate(targets)])
    boxes = torch.cat([t["boxes"] for t in targets]).cpu()
    xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], dim=1) / image
    labels = torch.cat([t["labels"] for t in targets]).cpu().float()
    return {"batch_idx": index.to(device), "cls": labels[:, None].to(device), "bboxes": xywh.to(device)}


def _build(params: Mapping[str, Any], device: torch.device) -> Any:
    """Maps of a 640 px detector at initialisation: box bins N(0, 1), class logits N(−4.6, 1) (σ ≈ 0.01)."""
    from benchmarks import baselines
    from benchmarks import workloads as w
    from lightning_losses.presets import YOLOv8Criterion

    batch, image, classes, boxes = (int(params[k]) for k in ("batch", "image", "classes", "boxes"))
    style = str(params["style"])
    g = w._generator(8)
    maps = []
    for stride in STRIDES:
        side = image // stride
        m = torch.randn(batch, 4 * REG_MAX + classes, side, side, generator=g)
        m[:, 4 * REG_MAX :] -= 4.6
        maps.append(w._leaf(m, device))
    targets = w._to(w._targets(g, batch, image, image, boxes, classes, (12.0, image / 2)), device)
    criterion = YOLOv8Criterion(classes, STRIDES, reg_max=REG_MAX, style=style).to(device)
    case = w.Case(maps, {w.PACKAGE: lambda: w._sum(criterion(maps, targets))}, {w.PACKAGE: w._term_probes(criterion)})
    if style == "ultralytics":
        loss_class = load_ultralytics()
        if isinstance(loss_class, str):
            case.notes.append(loss_class)
            return case
        baseline = loss_class(_Model(classes, device).to(device))
        batch_dict = _ultralytics_batch(targets, image, device)

        def ultralytics() -> Tensor:
            flat = torch.cat([m.flatten(2) for m in maps], dim=2)  # what its Detect head hands the loss
            preds = {"boxes": flat[:, : 4 * REG_MAX], "scores": flat[:, 4 * REG_MAX :], "feats": maps}
            return baseline(preds, batch_dict)[0].sum() / batch  # its terms × batch size → the terms

        case.candidates[ULTRALYTICS] = ultralytics
        case.probes[ULTRALYTICS] = [
            ("assign", baseline.assigner, "forward"),
            ("box+dfl", baseline.bbox_loss, "forward"),
        ]
    elif style == "netspresso":
        ns = baselines.load_netspresso()
        loss_class = ns if isinstance(ns, str) else _netspresso_yolov9()
        if isinstance(loss_class, str):
            case.notes.append(loss_class)
            return case
        baseline = loss_class(l1_activate_epoch=1, reg_max=REG_MAX).to(device)

        def netspresso() -> Tensor:
            target = {"gt": copy.deepcopy(targets), "img_size": image, "num_classes": classes}
            return baseline({"pred": maps}, target)

        case.candidates[w.NETSPRESSO] = netspresso
    return case


def _netspresso_yolov9() -> Any:
    """NetsPresso's ``YOLOv9Loss``; its module also imports the model op ``Anchor2Vec`` (torch-only)."""
    import types

    from benchmarks.baselines import PACKAGE

    root = _vendor() / PACKAGE
    for name, sub in ((f"{PACKAGE}.models", "models"), (f"{PACKAGE}.models.op", "models/op")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(root / sub)]
            sys.modules[name] = module
    try:
        return importlib.import_module(f"{PACKAGE}.losses.detection.yolov9").YOLOv9Loss
    except ImportError as err:
        return f"NetsPresso Trainer's yolov9_loss failed to import: {err}"


def _label(p: Mapping[str, Any]) -> str:
    priors = sum((p["image"] // s) ** 2 for s in STRIDES)
    return f"B{p['batch']} × {priors:,} priors × {p['boxes']} boxes × {p['classes']} cls ({p['image']} px)"


def workloads() -> tuple[Any, ...]:
    """The task-aligned YOLO rows of the benchmark."""
    from benchmarks.workloads import NETSPRESSO, PACKAGE, Comparison, Workload

    def sizes(batch: int, boxes: int, style: str, image: int = 640, **extra: Any) -> dict[str, Any]:
        return {"batch": batch, "image": image, "boxes": boxes, "classes": 80, "style": style, **extra}

    return (
        Workload(
            "YOLOv8Criterion (ultralytics)",
            "yolo",
            _build,
            _label,
            (sizes(16, 100, "ultralytics"),),
            (sizes(2, 30, "ultralytics", image=320),),
            (Comparison(PACKAGE, ULTRALYTICS, time_target=0.5, mem_target=0.5),),
            budget_s=90.0,
        ),
        Workload(
            "YOLOv8Criterion (netspresso)",
            "yolo",
            _build,
            _label,
            (sizes(4, 100, "netspresso"),),
            (sizes(2, 30, "netspresso", image=320),),
            (Comparison(PACKAGE, NETSPRESSO, time_target=1 / 3, mem_target=0.5),),
            budget_s=60.0,
        ),
        Workload(
            "YOLOv8Criterion, crowded",
            "yolo",
            _build,
            _label,
            (sizes(2, 1000, "ultralytics"),),
            (sizes(1, 300, "ultralytics", image=320),),
            (Comparison(PACKAGE, ULTRALYTICS, mem_limit_mb=1024.0),),
            budget_s=60.0,
        ),
    )

"""Half precision at realistic sizes for the detection presets: B 12 x 640², untrained head outputs (logits
~ N(0, 1), small random regression maps), 80 classes, one to six boxes per image and one image without boxes;
DETR with RT-DETR's 300 queries, auxiliary decoder layers, encoder proposals and denoising groups. Every term and
every gradient stays finite under bf16 / fp16 CPU autocast (float32 inputs) and with inputs already in float16 /
bfloat16 (what Lightning's ``16-true`` / ``bf16-true`` hand over), and some gradient is non-zero.

Budget (the file takes about 75 s of CPU time, 2 minutes of wall time on two busy cores). RetinaNet runs
with 5 classes: at 80 its 12 x 76,725 anchors x 80 = 74M logits take the eager focal kernel about 20 s per call
on two cores (9 s forward, 11 s backward, measured), and even 10 classes took 4 to 7 s per case; 5 classes keep
B 12 x 640² and 4.6M logits, 70 times float16's largest value. DETR has 2 auxiliary and 2 denoising layers
(RT-DETR: 5 and 6): each set adds the same terms again.

Reference: finiteness, and on the same inputs the old failure mode this size provokes (the float16 sum of the
classification logits' BCE terms overflows, past 65,504). One case per preset (float16 inputs) has every head
output at ±1e4 (FCOS's distances +1e4), past any exp range and float16's square, with 8 classes: the values, not
the size, are the point there. Compilation is off (``LIGHTNING_LOSSES_COMPILE=0``): these are the eager
kernels' numerics. Style of ``tests/test_half_precision.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import (
    ATSSCriterion,
    FCOSCriterion,
    GFLCriterion,
    RetinaNetCriterion,
    YOLOFastestCriterion,
)
from lightning_losses.functional.kernels.runtime import COMPILE_ENV
from lightning_losses.presets.detr import DETRCriterion
from lightning_losses.presets.yolov8 import YOLOv8Criterion

FP16_MAX = torch.finfo(torch.float16).max
HALVES = (torch.float16, torch.bfloat16)
MODES = ["autocast", "inputs"]
BATCH = 12
SIDE = 640
BOX_COUNTS = (3, 5, 1, 0, 4, 2, 6, 3, 2, 5, 1, 4)  # image 3 has no boxes
DENSE_STRIDES = (8, 16, 32, 64, 128)  # 8,525 cells at 640²
YOLO_STRIDES = (8, 16, 32)
FASTEST_STRIDES = (16, 32)
FASTEST_ANCHORS = [[12.0, 18.0, 37.0, 49.0, 52.0, 132.0], [115.0, 73.0, 119.0, 199.0, 242.0, 238.0]]
QUERIES = 300
AUX_LAYERS = DN_LAYERS = 2  # RT-DETR has 5 and 6; each further set repeats the same terms
DN_GROUPS = 100 // max(BOX_COUNTS)  # RT-DETR: 100 denoising queries' worth of groups, 2 x max boxes each
PRESETS = ["retinanet", "fcos", "atss", "gfl", "yolofastest", "yolov8", "detr"]
CLASSES = dict.fromkeys(PRESETS, 80) | {"retinanet": 5}
EXTREME_CLASSES = 8  # B 12 x 640² still, a tenth of the classification elements


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv(COMPILE_ENV, "0")


def _context(mode: str, dtype: torch.dtype):
    return torch.autocast("cpu", dtype=dtype) if mode == "autocast" else contextlib.nullcontext()


class Draw:
    """Untrained head outputs (float32); with ``extreme``, every value is ±1e4 (distances +1e4)."""

    def __init__(self, extreme: bool = False) -> None:
        self.g = torch.Generator().manual_seed(0)
        self.extreme = extreme

    def _extreme(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.where(torch.rand(shape, generator=self.g) < 0.5, -1e4, 1e4)

    def logits(self, *shape: int) -> torch.Tensor:
        return self._extreme(shape) if self.extreme else torch.randn(shape, generator=self.g)

    def deltas(self, *shape: int) -> torch.Tensor:
        return self._extreme(shape) if self.extreme else torch.randn(shape, generator=self.g) * 0.1

    def distances(self, *shape: int) -> torch.Tensor:
        """FCOS's ``exp(scale · x)`` in pixels: a few pixels untrained."""
        if self.extreme:
            return torch.full(shape, 1e4)
        return (torch.randn(shape, generator=self.g) * 0.5).exp() * 8

    def maps(self, kind, channels: int, strides) -> list[torch.Tensor]:
        return [kind(BATCH, channels, SIDE // s, SIDE // s) for s in strides]

    def targets(self, classes: int) -> list[dict[str, torch.Tensor]]:
        """``BOX_COUNTS`` boxes per image, sides 16 to 336 px (every level gets some), inside the image."""
        targets = []
        for n in BOX_COUNTS:
            wh = 16 + torch.rand(n, 2, generator=self.g) * 320
            xy = torch.rand(n, 2, generator=self.g) * (SIDE - wh)
            labels = torch.randint(0, classes, (n,), generator=self.g)
            targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": labels})
        return targets

    def detr_layer(self, queries: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and normalised ``cxcywh`` boxes (a sigmoid head's range) of one decoder layer."""
        centers = torch.rand(BATCH, queries, 2, generator=self.g) * 0.8 + 0.1
        sizes = torch.rand(BATCH, queries, 2, generator=self.g) * 0.3 + 0.02
        return self.logits(BATCH, queries, classes), torch.cat([centers, sizes], -1)


def _case(name: str, draw: Draw, classes: int) -> tuple[Any, tuple[Any, ...], dict[str, Any], list[torch.Tensor]]:
    """The criterion, its positional and keyword inputs but the targets (float32 tensors where the head gives
    them), and the classification logits (to show the size is past float16's range)."""
    kwargs: dict[str, Any] = {"image_size": (SIDE, SIDE)}
    if name == "retinanet":
        cls = draw.maps(draw.logits, 9 * classes, DENSE_STRIDES)
        return RetinaNetCriterion(classes), (cls, draw.maps(draw.deltas, 36, DENSE_STRIDES)), kwargs, cls
    if name in ("fcos", "atss"):
        cls = draw.maps(draw.logits, classes, DENSE_STRIDES)
        box = draw.maps(draw.distances if name == "fcos" else draw.deltas, 4, DENSE_STRIDES)
        ctr = draw.maps(draw.logits, 1, DENSE_STRIDES)
        criterion = FCOSCriterion(classes) if name == "fcos" else ATSSCriterion(classes)
        return criterion, (cls, box, ctr), kwargs, cls
    if name == "gfl":
        cls = draw.maps(draw.logits, classes, DENSE_STRIDES)
        return GFLCriterion(classes), (cls, draw.maps(draw.logits, 4 * 17, DENSE_STRIDES)), kwargs, cls
    if name == "yolofastest":
        maps = draw.maps(draw.logits, 3 * (5 + classes), FASTEST_STRIDES)
        criterion = YOLOFastestCriterion(classes, FASTEST_ANCHORS, strides=FASTEST_STRIDES)
        cls = [m.unflatten(1, (3, 5 + classes))[:, :, 5:] for m in maps]
        return criterion, (maps,), kwargs, cls
    if name == "yolov8":
        maps = draw.maps(draw.logits, 4 * 16 + classes, YOLO_STRIDES)
        return YOLOv8Criterion(classes, YOLO_STRIDES), (maps,), kwargs, [m[:, 64:] for m in maps]
    assert name == "detr"
    criterion = DETRCriterion(classes, num_aux_layers=AUX_LAYERS, encoder=True, num_dn_layers=DN_LAYERS)
    final = draw.detr_layer(QUERIES, classes)
    width = 2 * max(BOX_COUNTS)  # each denoising group: a positive and a negative query per box, padded
    index = [torch.cat([torch.arange(n) + width * g for g in range(DN_GROUPS)]) for n in BOX_COUNTS]
    kwargs |= {
        "aux_outputs": [draw.detr_layer(QUERIES, classes) for _ in range(AUX_LAYERS)],
        "enc_outputs": draw.detr_layer(QUERIES, classes),
        "dn_outputs": [draw.detr_layer(width * DN_GROUPS, classes) for _ in range(DN_LAYERS)],
        "dn_meta": {"dn_positive_idx": index, "dn_num_group": DN_GROUPS},
    }
    return criterion, final, kwargs, [final[0]]


def _leaves(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs] if inputs.is_floating_point() else []
    items = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, list | tuple) else ()
    return [leaf for item in items for leaf in _leaves(item)]


def _to(inputs: Any, dtype: torch.dtype) -> Any:
    """``inputs`` with every floating tensor in ``dtype``, a leaf that requires grad."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(dtype).requires_grad_() if inputs.is_floating_point() else inputs
    if isinstance(inputs, dict):
        return {k: v if k == "dn_meta" else _to(v, dtype) for k, v in inputs.items()}
    if isinstance(inputs, list | tuple):
        return type(inputs)(_to(item, dtype) for item in inputs)
    return inputs


def _check(name: str, dtype: torch.dtype, mode: str, extreme: bool = False) -> None:
    draw = Draw(extreme)
    classes = EXTREME_CLASSES if extreme else CLASSES[name]
    criterion, inputs, kwargs, cls = _case(name, draw, classes)
    if not extreme:  # the old failure mode: at this size a float16 sum of the classification terms overflows
        logits = torch.cat([c.reshape(-1) for c in cls]).half()
        bce = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
        assert logits.numel() > FP16_MAX
        assert torch.isinf(bce.sum(dtype=torch.float16)), "the size no longer overflows a float16 sum"
    in_dtype = dtype if mode == "inputs" else torch.float32
    inputs, kwargs = _to(inputs, in_dtype), _to(kwargs, in_dtype)
    leaves = _leaves((inputs, kwargs))
    targets = draw.targets(classes)
    with _context(mode, dtype):
        terms = criterion(*inputs, targets, **kwargs)
    grads = torch.autograd.grad(sum(t.float() for t in terms.values()), leaves, allow_unused=True)
    for key, value in terms.items():
        assert torch.isfinite(value.float()).all(), f"{name} {key}: {value}"
    for i, grad in enumerate(grads):
        assert grad is None or torch.isfinite(grad.float()).all(), f"{name}: non-finite gradient of input {i}"
    assert any(g is not None and float(g.float().abs().sum()) > 0 for g in grads), f"{name}: every gradient is 0"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", HALVES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", PRESETS)
def test_preset_at_b12_640_is_finite(name, dtype, mode):
    _check(name, dtype, mode)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_with_extreme_outputs_is_finite_in_float16(name):
    """Every head output at ±1e4 (FCOS's distances at +1e4), float16 inputs."""
    _check(name, torch.float16, "inputs", extreme=True)

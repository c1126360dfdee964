"""bf16 head outputs and a bf16 default dtype (``--trainer.precision=bf16-true``): every preset gives finite terms
and gradients, and the default dtype changes nothing.

Reference: the same call under the float32 default dtype. Every tensor the library builds names its dtype, so
the two runs must agree bit for bit; a factory that inherited the default would build bf16 boxes, priors or
costs and change the values (or fail on a dtype mismatch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from lightning_losses import (
    ATSSCriterion,
    FCOSCriterion,
    GFLCriterion,
    PIDNetCriterion,
    RetinaNetCriterion,
    YOLOFastestCriterion,
    YOLOXCriterion,
)
from lightning_losses.presets.detr import DETRCriterion
from lightning_losses.presets.yolov8 import YOLOv8Criterion

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

SIDE = 64
STRIDES = (8, 16, 32)
SIZES = [(SIDE // s, SIDE // s) for s in STRIDES]
CLASSES = 3
F32 = torch.float32  # inputs name their dtype: they are the data, built outside the precision context


@pytest.fixture
def bf16_default() -> Iterator[Callable[[], None]]:
    """Switches the default dtype to bfloat16 when called; the float32 default comes back after the test."""
    before = torch.get_default_dtype()
    yield lambda: torch.set_default_dtype(torch.bfloat16)
    torch.set_default_dtype(before)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [20.0, 18.0, 60.0, 62.0]], dtype=F32),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[33.5, 1.0, 50.25, 40.0]], dtype=F32), "labels": torch.tensor([1])},
    ]


def _maps(generator: torch.Generator, channels: int, scale: float = 1.0, positive: bool = False) -> list[torch.Tensor]:
    maps = []
    for h, w in SIZES:
        m = torch.randn(2, channels, h, w, generator=generator, dtype=F32) * scale
        maps.append((m.exp() if positive else m).to(torch.bfloat16))
    return maps


def _case(name: str) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """The criterion, its positional inputs before the targets (bf16 leaves) and keyword inputs."""
    g = torch.Generator().manual_seed(0)
    kwargs: dict[str, Any] = {"image_size": (SIDE, SIDE)}
    if name == "retinanet":
        return RetinaNetCriterion(CLASSES, STRIDES), (_maps(g, 9 * CLASSES), _maps(g, 36, 0.3)), kwargs
    if name == "fcos":
        crit = FCOSCriterion(CLASSES, STRIDES, regress_ranges=((-1, 16), (16, 32), (32, 1e8)))
        return crit, (_maps(g, CLASSES), _maps(g, 4, 0.5, positive=True), _maps(g, 1)), kwargs
    if name == "atss":
        return ATSSCriterion(CLASSES, STRIDES), (_maps(g, CLASSES), _maps(g, 4, 0.3), _maps(g, 1)), kwargs
    if name == "gfl":
        return GFLCriterion(CLASSES, STRIDES), (_maps(g, CLASSES), _maps(g, 68)), kwargs
    if name == "yolox":
        return YOLOXCriterion(CLASSES, STRIDES), (_maps(g, 5 + CLASSES, 0.5),), kwargs
    if name == "yolofastest":
        crit = YOLOFastestCriterion(CLASSES, anchors=[[12, 14, 30, 24]] * 3, strides=STRIDES)
        return crit, (_maps(g, 2 * (5 + CLASSES), 0.5),), kwargs
    if name == "yolov8":
        return YOLOv8Criterion(CLASSES, STRIDES), (_maps(g, 64 + CLASSES),), kwargs
    if name == "detr":
        logits = torch.randn(2, 5, CLASSES, generator=g, dtype=F32).to(torch.bfloat16)
        centers = torch.rand(2, 5, 2, generator=g, dtype=F32) * 0.6 + 0.2
        boxes = torch.cat([centers, torch.rand(2, 5, 2, generator=g, dtype=F32) * 0.3 + 0.1], -1)
        return DETRCriterion(CLASSES), (logits, boxes.to(torch.bfloat16)), kwargs
    assert name == "pidnet"
    maps = tuple(torch.randn(2, c, 8, 8, generator=g, dtype=F32).to(torch.bfloat16) for c in (CLASSES, CLASSES, 1))
    mask = torch.randint(0, CLASSES, (2, 32, 32), generator=g)
    return PIDNetCriterion(CLASSES, ohem_min_kept=64), maps, {"target": mask}


PRESETS = ["retinanet", "fcos", "atss", "gfl", "yolox", "yolofastest", "yolov8", "detr", "pidnet"]


def _leaves(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    return [leaf for item in inputs for leaf in _leaves(item)]


def _run(name: str) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    criterion, inputs, kwargs = _case(name)
    leaves = _leaves(inputs)
    for leaf in leaves:
        leaf.requires_grad_()
    terms = criterion(*inputs, **kwargs) if name == "pidnet" else criterion(*inputs, _targets(), **kwargs)
    total = sum(terms.values())
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    return terms, [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves, strict=True)]


@pytest.mark.parametrize("name", PRESETS)
def test_bf16_default_dtype_changes_nothing(name, bf16_default):
    want_terms, want_grads = _run(name)
    bf16_default()
    got_terms, got_grads = _run(name)
    assert set(got_terms) == set(want_terms)
    for key, value in want_terms.items():
        assert torch.isfinite(value.float()).all(), f"{name} {key}: {value}"
        torch.testing.assert_close(got_terms[key], value, rtol=0, atol=0, msg=f"{name} {key}")
    for got, want in zip(got_grads, want_grads, strict=True):
        assert torch.isfinite(want.float()).all(), name
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert any(float(g.float().abs().sum()) > 0 for g in want_grads), f"{name}: no gradient reached the outputs"

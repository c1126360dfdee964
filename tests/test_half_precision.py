"""Half precision everywhere: every registered loss and the presets stay finite (values and gradients) under
bf16 / fp16 CPU autocast and with half-precision inputs outside autocast (what ``16-true`` / ``bf16-true``
hand over), at sizes where a float16 sum or count would overflow (past 65,504).

Reference: finiteness, and the old failure mode shown on the same inputs (the float16 sum that overflows).
Compilation is off (``LIGHTNING_LOSSES_COMPILE=0``): these are the eager kernels' numerics.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import PIDNetCriterion, YOLOXCriterion
from lightning_losses import functional as LF
from lightning_losses.functional.kernels.runtime import COMPILE_ENV
from lightning_losses.registry import LOSSES
from tests.losses.loss_cases import CASES, TorchDraw, loss_class, registered_names

FP16_MAX = torch.finfo(torch.float16).max
HALVES = (torch.float16, torch.bfloat16)
MODES = ["autocast", "inputs"]


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv(COMPILE_ENV, "0")


def _context(mode: str, dtype: torch.dtype):
    return torch.autocast("cpu", dtype=dtype) if mode == "autocast" else contextlib.nullcontext()


def _half(x, mode: str, dtype: torch.dtype):
    """``x``'s floating tensors in ``dtype`` for half-precision inputs; as they are under autocast."""
    if isinstance(x, tuple):
        return tuple(_half(t, mode, dtype) for t in x)
    if isinstance(x, torch.Tensor) and x.is_floating_point() and mode == "inputs":
        return x.to(dtype)
    return x


class ExtremeLogits(TorchDraw):
    """The contract table's draw with logits of ±1e4."""

    def logits(self, *shape: int) -> torch.Tensor:
        return torch.where(torch.rand(shape, generator=self.generator) < 0.5, -1e4, 1e4)


def _leaves(pred) -> list[torch.Tensor]:
    return list(pred) if isinstance(pred, tuple) else [pred]


@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "1e4"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", HALVES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", registered_names())
def test_every_registered_loss_is_finite_in_half_precision(name, dtype, mode, extreme):
    """Each loss of the contract table; for ``1e4`` its logits are ±1e4 (past any exp range), boxes and
    regression values moderate."""
    case = CASES[loss_class(name).__name__]
    pred, target, weight = case.inputs(ExtremeLogits(0) if extreme else TorchDraw(0))
    pred, target = _half(pred, mode, dtype), _half(target, mode, dtype)
    leaves = [p.requires_grad_() for p in _leaves(pred)]
    pred = tuple(leaves) if isinstance(pred, tuple) else leaves[0]
    with _context(mode, dtype):
        value = LOSSES[name](**case.init)(pred, target, weight)
    grads = torch.autograd.grad(value.float().sum(), leaves, allow_unused=True)
    assert torch.isfinite(value.float()).all(), f"{name}: {value}"
    for grad in grads:
        assert grad is None or torch.isfinite(grad.float()).all(), f"{name}: non-finite gradient"


def _yolox_case(dtype: torch.dtype, batch: int = 12, side: int = 640, classes: int = 3):
    """YOLOX's per-level maps of an untrained head (logits ~ N(0, 1)) at ``side``², and two boxes per image."""
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(batch, 5 + classes, side // s, side // s, generator=g).to(dtype) for s in (8, 16, 32)]
    xy = torch.rand(batch, 2, 2, generator=g) * side * 0.6
    boxes = torch.cat([xy, xy + 40 + torch.rand(batch, 2, 2, generator=g) * 150], -1)
    targets = [{"boxes": boxes[i], "labels": torch.randint(0, classes, (2,), generator=g)} for i in range(batch)]
    return YOLOXCriterion(classes, (8, 16, 32)), maps, targets


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", HALVES, ids=["fp16", "bf16"])
def test_yolox_at_b12_640_is_finite(dtype, mode):
    """B 12 x 640², untrained logits: loss_obj sums 12 x 8,400 BCE terms of about log 2, past float16's range."""
    criterion, maps, targets = _yolox_case(dtype if mode == "inputs" else torch.float32)
    obj = torch.cat([m[:, 4].reshape(-1) for m in maps])
    old_sum = F.binary_cross_entropy_with_logits(obj.half(), torch.zeros_like(obj, dtype=torch.half), reduction="none")
    assert torch.isinf(old_sum.sum(dtype=torch.float16)), "the size no longer overflows a float16 sum"
    leaves = [m.requires_grad_() for m in maps]
    with _context(mode, dtype):
        terms = criterion(leaves, targets, image_size=(640, 640))
    grads = torch.autograd.grad(sum(t.float() for t in terms.values()), leaves)
    for key, value in terms.items():
        assert torch.isfinite(value.float()).all(), f"{key}: {value}"
    for grad in grads:
        assert torch.isfinite(grad.float()).all()
    assert any(float(g.float().abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", HALVES, ids=["fp16", "bf16"])
def test_pidnet_at_b2_640_is_finite(dtype, mode):
    """B 2 x 640² segmentation: 819,200 pixels per term, counts and sums past float16's range."""
    g = torch.Generator().manual_seed(0)
    classes = 3
    in_dtype = dtype if mode == "inputs" else torch.float32
    maps = [torch.randn(2, c, 80, 80, generator=g).to(in_dtype).requires_grad_() for c in (classes, classes, 1)]
    mask = torch.randint(0, classes, (2, 640, 640), generator=g)
    assert mask.numel() > FP16_MAX  # a float16 pixel count would be inf
    assert torch.isinf(torch.ones(mask.shape, dtype=torch.float16).sum(dtype=torch.float16))
    with _context(mode, dtype):
        terms = PIDNetCriterion(classes)(*maps, target=mask)
    grads = torch.autograd.grad(sum(t.float() for t in terms.values()), maps)
    for key, value in terms.items():
        assert torch.isfinite(value.float()).all(), f"{key}: {value}"
    for grad in grads:
        assert torch.isfinite(grad.float()).all()


def test_balanced_l1_gradient_is_finite_past_float16_range():
    """A float16 difference of 1e4 takes the linear branch; the log branch it masks (b·diff ≈ 1.9e5, past
    65,504) must not turn the gradient into NaN. Reference: the linear branch's gradient, gamma·sign(diff)."""
    pred = torch.tensor([1e4, -1e4, 0.5], dtype=torch.float16, requires_grad=True)
    loss = LF.balanced_l1_loss(pred, torch.zeros(3, dtype=torch.float16), reduction="sum")
    (grad,) = torch.autograd.grad(loss, pred)
    assert torch.isfinite(loss)
    torch.testing.assert_close(grad[:2].float(), torch.tensor([1.5, -1.5]))

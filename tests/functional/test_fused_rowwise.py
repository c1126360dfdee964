"""Low-memory row-wise kernels (IoU family, DFL) against the composite formulas written out op by op here.

These tests exercise the autograd Function at small sizes: the plain-autograd path that small eager inputs take
(``rows.PLAIN_MAX_ELEMENTS``) is switched off by the autouse fixture, and tested on its own at the end.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import functional as LF
from lightning_losses.functional.kernels import rows, runtime
from lightning_losses.functional.kernels.rows import fused_rowwise_loss
from lightning_losses.functional.kernels.runtime import COMPILE_ENV

NAMES = ["iou_loss", "giou_loss", "diou_loss", "ciou_loss", "distribution_focal_loss"]


def composite(name: str, p: torch.Tensor, t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The unfused per-row loss, every intermediate a separate op (MMDetection's formulas)."""
    if name == "distribution_focal_loss":
        left = t.long()
        right = (left + 1).clamp(max=p.shape[1] - 1)
        w_left, w_right = left + 1 - t, t - left
        return (
            F.cross_entropy(p, left, reduction="none") * w_left + F.cross_entropy(p, right, reduction="none") * w_right
        )
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_t = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    iw = (torch.min(p[:, 2], t[:, 2]) - torch.max(p[:, 0], t[:, 0])).clamp(min=0)
    ih = (torch.min(p[:, 3], t[:, 3]) - torch.max(p[:, 1], t[:, 1])).clamp(min=0)
    inter = iw * ih
    cw = (torch.max(p[:, 2], t[:, 2]) - torch.min(p[:, 0], t[:, 0])).clamp(min=0)
    ch = (torch.max(p[:, 3], t[:, 3]) - torch.min(p[:, 1], t[:, 1])).clamp(min=0)
    if name == "iou_loss":
        return -(inter / (area_p + area_t - inter).clamp(min=1e-6)).clamp(min=eps).log()
    if name == "giou_loss":
        union = (area_p + area_t - inter).clamp(min=eps)
        enclose = (cw * ch).clamp(min=eps)
        return 1 - (inter / union - (enclose - union) / enclose)
    iou = inter / (area_p + area_t - inter + eps)
    rho2 = ((p[:, 0] + p[:, 2] - t[:, 0] - t[:, 2]) ** 2 + (p[:, 1] + p[:, 3] - t[:, 1] - t[:, 3]) ** 2) / 4
    diou = iou - rho2 / (cw**2 + ch**2 + eps)
    if name == "diou_loss":
        return 1 - diou
    wp, hp = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1] + eps
    wt, ht = t[:, 2] - t[:, 0], t[:, 3] - t[:, 1] + eps
    v = (4 / math.pi**2) * (torch.atan(wt / ht) - torch.atan(wp / hp)) ** 2
    with torch.no_grad():
        alpha = (iou > 0.5).to(v.dtype) * v / (1 - iou + v).clamp(min=eps)
    return 1 - (diou - alpha * v).clamp(-1, 1)


def case(name: str, n: int = 203, seed: int = 0, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    if name == "distribution_focal_loss":
        pred = 2 * torch.randn(n, 17, generator=gen, dtype=torch.float64)
        target = torch.rand(n, generator=gen, dtype=torch.float64) * 16
        target[: min(n, 3)] = torch.tensor([0.0, 16.0, 7.0], dtype=torch.float64)[: min(n, 3)]  # ends, a bin centre
        return pred.to(dtype).requires_grad_(), target.to(dtype)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 40
    target = torch.cat([xy, xy + 4 + 30 * torch.rand(n, 2, generator=gen, dtype=torch.float64)], 1)
    pred = target + 4 * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2] + 0.5)
    pred[:2] = target[:2]  # perfect predictions
    return pred.to(dtype).requires_grad_(), target.to(dtype)


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv(COMPILE_ENV, "0")
    monkeypatch.setattr(rows, "PLAIN_MAX_ELEMENTS", 0)


@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_equal_the_composite_formula_over_many_chunks(name, monkeypatch):
    monkeypatch.setattr(runtime, "CHUNK_ELEMENTS", 64)  # 16 boxes or 3 DFL rows per chunk, 203 rows
    pred, target = case(name)
    out = getattr(LF, name)(pred, target, reduction="none")
    ref = composite(name, pred, target)
    torch.testing.assert_close(out, ref)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(torch.autograd.grad(out, pred, upstream)[0], torch.autograd.grad(ref, pred, upstream)[0])


@pytest.mark.parametrize("name", ["iou_loss", "giou_loss", "diou_loss", "distribution_focal_loss"])
def test_gradcheck_float64_through_the_row_kernel(name, monkeypatch):
    """Target without a gradient: the Function's backward is the path checked (chunked)."""
    monkeypatch.setattr(runtime, "CHUNK_ELEMENTS", 32)
    pred, target = case(name, n=12, seed=2, dtype=torch.float64)
    pred = pred.detach()[2:].requires_grad_()  # off the perfect predictions' kinks
    target = target[2:]
    weight = torch.rand(10, dtype=torch.float64)
    fn = getattr(LF, name)
    assert torch.autograd.gradcheck(lambda p: fn(p, target, weight=weight, avg_factor=3.0), (pred,))


@pytest.mark.parametrize("name", NAMES)
def test_backward_keeps_only_the_inputs(name):
    """Saved-tensor hooks count what autograd keeps: the inputs only (and DFL's per-row log-sum-exp), versus
    every intermediate of the composite."""
    pred, target = case(name, n=64)
    per_row = pred.shape[0] if name == "distribution_focal_loss" else 0
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        getattr(LF, name)(pred, target)
    assert sum(saved) == pred.numel() + target.numel() + per_row
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        composite(name, pred, target).mean()
    assert sum(saved) > 2 * (pred.numel() + target.numel())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(name, dtype):
    pred, target = case(name, n=50, seed=3, dtype=dtype)
    out = getattr(LF, name)(pred, target, reduction="sum")
    ref = composite(name, pred.detach().float().requires_grad_(), target.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.sum())
    (grad,) = torch.autograd.grad(out, pred)
    assert grad.dtype == dtype
    assert torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_target_with_a_gradient_gets_it(name):
    """A target that requires grad (e.g. a predicted quality) takes plain autograd and receives its gradient."""
    pred, target = case(name, n=40, seed=4, dtype=torch.float64)
    target = target.requires_grad_()
    out = getattr(LF, name)(pred, target, reduction="sum")
    ref = composite(name, pred, target).sum()
    grads = torch.autograd.grad(out, (pred, target))
    ref_grads = torch.autograd.grad(ref, (pred, target))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", NAMES)
def test_empty_input_gives_zero_with_a_graph(name):
    pred, target = case(name, n=0)
    out = getattr(LF, name)(pred, target)
    assert out.item() == 0.0
    out.backward()
    assert pred.grad.shape == pred.shape


def test_each_row_kernel_has_its_own_code_object():
    """dynamo caches at most 8 compilations per code object: kernels built from one closure must not share theirs,
    or the last losses of a model silently fall back to eager."""
    for name in NAMES:
        pred, target = case(name, n=8)
        getattr(LF, name)(pred, target).backward()
        getattr(LF, name)(pred, target, reduction="none").sum().backward()
    logits, labels = torch.randn(8, 3, requires_grad=True), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    for reduction in ("mean", "none"):
        LF.sigmoid_focal_loss(logits, labels, reduction=reduction).sum().backward()
        LF.sigmoid_focal_loss(logits, torch.rand(8, 3), reduction=reduction).sum().backward()
        LF.quality_focal_loss(logits, (labels, torch.rand(8)), reduction=reduction).sum().backward()
    kernels = list(runtime._kernels.values())
    assert len(kernels) >= 3 * len(NAMES) + 3 * 3
    assert len({k.__code__ for k in kernels}) == len(kernels)


def test_saved_rows_need_a_closed_form_gradient():
    with pytest.raises(ValueError, match="grad_fn"):
        fused_rowwise_loss(lambda x, t: (x.sum(1), x.sum(1)), torch.randn(3, 2), torch.randn(3, 2), saves=True)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_dfl_reuses_the_forward_log_sum_exp(reduction, monkeypatch):
    """Compiled on the whole input, DFL's backward reads the forward's saved log-sum-exp: values and gradients
    equal the two cross-entropies written with F.cross_entropy, with a weight and an upstream gradient."""
    monkeypatch.setenv(COMPILE_ENV, "1")
    gen = torch.Generator().manual_seed(9)
    pred = torch.randn(700, 9, generator=gen).requires_grad_()
    target = torch.rand(700, generator=gen) * 8
    weight = torch.rand(700, generator=gen)
    out = LF.distribution_focal_loss(pred, target, weight=weight, reduction=reduction, avg_factor=None)
    left = target.long()
    right = (left + 1).clamp(max=8)
    ref = (
        F.cross_entropy(pred, left, reduction="none") * (left + 1 - target)
        + F.cross_entropy(pred, right, reduction="none") * (target - left)
    ) * weight
    ref = ref.mean() if reduction == "mean" else ref
    torch.testing.assert_close(out, ref)
    upstream = torch.randn(ref.shape, generator=gen)
    torch.testing.assert_close(torch.autograd.grad(out, pred, upstream)[0], torch.autograd.grad(ref, pred, upstream)[0])


def literal_zero_weight_rule(loss, pred, weight, divisor, scale):
    """MMDetection 3.x's box-loss rule written out: ``(pred * weight).sum()`` when no weight is positive, else
    ``scale · Σ w·ℓ / divisor``."""
    if not torch.any(weight > 0):
        return (pred * weight[:, None]).sum()
    return scale * (loss * weight).sum() / divisor


@pytest.mark.parametrize("weights", ["zero", "non-positive", "mixed"])
@pytest.mark.parametrize("path", ["function", "plain autograd"])
def test_zero_weight_rule_in_the_row_kernel_equals_the_literal_rule(weights, path, monkeypatch):
    """The rule folded into the fused GIoU row kernel (many chunks) against its literal form over the composite
    GIoU: values, gradients to ``pred`` with an upstream factor, and to ``target`` on the plain-autograd path."""
    from lightning_losses.functional.iou import giou_kernel

    monkeypatch.setattr(runtime, "CHUNK_ELEMENTS", 64)
    pred, target = case("giou_loss", n=90, seed=7, dtype=torch.float64)
    target = target.requires_grad_(path == "plain autograd")
    weight = {
        "zero": torch.zeros(90, dtype=torch.float64),
        "non-positive": -torch.rand(90, dtype=torch.float64) * (torch.arange(90) % 3 == 0),
        "mixed": torch.rand(90, dtype=torch.float64) * (torch.arange(90) % 7 == 0),
    }[weights]
    out = fused_rowwise_loss(
        giou_kernel, pred, target, 1e-6, weight=weight, divisor=13.0, scale=2.5, zero_weight_shortcut=True
    )
    ref = literal_zero_weight_rule(composite("giou_loss", pred, target), pred, weight, 13.0, 2.5)
    torch.testing.assert_close(out, ref)
    inputs = (pred, target) if path == "plain autograd" else (pred,)
    upstream = torch.tensor(-1.3, dtype=torch.float64)
    got = torch.autograd.grad(out, inputs, upstream, allow_unused=True, materialize_grads=True)
    want = torch.autograd.grad(ref, inputs, upstream, allow_unused=True, materialize_grads=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("weights", [[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.4, 0.0, 1.0, 0.2]])
def test_zero_weight_rule_in_the_row_kernel_gradcheck_float64(weights, monkeypatch):
    """gradcheck of the Function's backward through the rule's branch and the loss's branch (chunked)."""
    from lightning_losses.functional.iou import diou_kernel

    monkeypatch.setattr(runtime, "CHUNK_ELEMENTS", 8)
    pred, target = case("diou_loss", n=7, seed=8, dtype=torch.float64)
    pred, target = pred.detach()[2:].requires_grad_(), target[2:]
    weight = torch.tensor(weights, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p: fused_rowwise_loss(
            diou_kernel, p, target, 1e-6, weight=weight, divisor=3.0, scale=0.5, zero_weight_shortcut=True
        ),
        (pred,),
    )


@pytest.mark.parametrize("name", NAMES)
def test_small_eager_inputs_take_plain_autograd_with_the_functions_values(name, monkeypatch):
    """Under ``PLAIN_MAX_ELEMENTS`` elements an eager call runs as plain autograd (it keeps intermediates: more
    saved elements than the inputs), with the Function's value and gradient; under bf16 autocast it still
    computes in float32 (equal to the float32 call)."""
    pred, target = case(name, n=64)
    weight = torch.rand(64, generator=torch.Generator().manual_seed(3))
    weight[:5] = 0

    def run():
        return getattr(LF, name)(pred, target, weight, avg_factor=7.0)

    function_value = run()
    (function_grad,) = torch.autograd.grad(function_value, pred)
    monkeypatch.setattr(rows, "PLAIN_MAX_ELEMENTS", pred.numel() + 1)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        plain_value = run()
    assert sum(saved) > pred.numel() + target.numel()  # the plain path: intermediates are saved
    (plain_grad,) = torch.autograd.grad(plain_value, pred)
    torch.testing.assert_close(plain_value, function_value)
    torch.testing.assert_close(plain_grad, function_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_value = run()
    assert autocast_value.dtype == torch.float32
    torch.testing.assert_close(autocast_value, function_value)

"""Fused focal kernel against the unfused textbook formula (values, gradients, chunks, dtypes, compile)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

from lightning_losses.functional.kernels import runtime
from lightning_losses.functional.kernels.elementwise import fused_quality_focal_loss, fused_sigmoid_focal_loss
from lightning_losses.functional.kernels.runtime import COMPILE_ENV


def composite_focal(x, t, gamma, alpha):
    """The unfused formula, op by op: σ, 1 - p_t, its power, the balance, BCE with logits."""
    p = x.sigmoid()
    one_minus_pt = (1 - p) * t + p * (1 - t)
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none") * one_minus_pt.pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setenv(COMPILE_ENV, "0")


def _case(n=257, c=5, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(n, c, generator=gen)).to(dtype).requires_grad_()
    labels = torch.randint(-1, c + 1, (n,), generator=gen)  # -1 and C give all-zero rows
    onehot = (labels[:, None] == torch.arange(c)).float()
    soft = torch.rand(n, c, generator=gen)
    return x, labels, onehot, soft


@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.5, 2.0])
@pytest.mark.parametrize("alpha", [0.25, None])
@pytest.mark.parametrize("kind", ["labels", "soft"])
@pytest.mark.parametrize("reduce", [True, False])
def test_values_and_gradients_equal_the_composite_formula(gamma, alpha, kind, reduce, monkeypatch):
    """Many chunks (chunk size forced small, row count not a multiple of it) and a weight."""
    monkeypatch.setattr(runtime, "CHUNK_ELEMENTS", 64)
    x, labels, onehot, soft = _case()
    target = onehot if kind == "labels" else soft
    weight = torch.rand(x.shape[0], 1)
    divisor = 37.0 if reduce else None
    out = fused_sigmoid_focal_loss(
        x, None if kind == "labels" else soft, labels if kind == "labels" else None, weight, divisor, gamma, alpha
    )
    ref = composite_focal(x, target, gamma, alpha) * weight
    ref = ref.sum() / divisor if reduce else ref
    torch.testing.assert_close(out, ref)
    upstream = torch.randn_like(ref)
    (grad,) = torch.autograd.grad(out, x, upstream)
    (ref_grad,) = torch.autograd.grad(ref, x, upstream)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("kind", ["labels", "soft"])
def test_gradcheck_float64(kind):
    x, labels, _, soft = _case(n=9, c=3, seed=1, dtype=torch.float64)
    target = None if kind == "labels" else soft.double()
    lab = labels if kind == "labels" else None
    weight = torch.rand(9, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: fused_sigmoid_focal_loss(z, target, lab, weight, 4.0, 1.5, 0.3), (x,))
    assert torch.autograd.gradcheck(lambda z: fused_sigmoid_focal_loss(z, target, lab, None, None, 2.0, 0.25), (x,))


def test_tensor_divisor_and_saturated_logits_stay_finite():
    """|x| = 100 saturates σ: the fused loss and gradient stay finite and match the stable float64 formula."""
    x = torch.tensor([[100.0, -100.0, 0.0]], requires_grad=True)
    labels = torch.tensor([1])
    out = fused_sigmoid_focal_loss(x, None, labels, None, torch.tensor(2.0), 2.0, 0.25)
    out.backward()
    ref = composite_focal(x.detach().double(), torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), 2.0, 0.25)
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(out.double(), ref.sum() / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype):
    x, labels, onehot, _ = _case(dtype=dtype)
    out = fused_sigmoid_focal_loss(x, None, labels, None, 100.0, 2.0, 0.25)
    ref = composite_focal(x.detach().float(), onehot, 2.0, 0.25).sum() / 100.0
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    out.backward()
    assert x.grad.dtype == dtype
    assert torch.isfinite(x.grad.float()).all()


def test_failed_compilation_falls_back_to_eager_with_one_warning(monkeypatch):
    """Where no compiler works, the kernel warns once and the eager result comes back."""
    monkeypatch.setenv(COMPILE_ENV, "1")
    monkeypatch.setattr(runtime, "_compiler", runtime._Compiler())

    def broken(fn, **kwargs):
        def fail(*args):
            raise InvalidCxxCompiler()

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    x, labels, onehot, _ = _case()
    with pytest.warns(UserWarning, match="using eager kernels"):
        out = fused_sigmoid_focal_loss(x, None, labels, None, 10.0, 2.0, 0.25)
    torch.testing.assert_close(out, composite_focal(x, onehot, 2.0, 0.25).sum() / 10.0)


def test_compilation_failure_is_kept_with_its_reason_and_reported_once(monkeypatch):
    """The failure is state of the runtime: its reason (type and message) is in the one warning, later calls
    neither compile again nor warn, and their values are the eager ones."""
    monkeypatch.setenv(COMPILE_ENV, "1")
    monkeypatch.setattr(runtime, "_compiler", runtime._Compiler())
    attempts = []

    def broken(fn, **kwargs):
        def fail(*args):
            attempts.append(fn)
            raise CppCompileError(["c++"], "no compiler")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    x, labels, onehot, _ = _case()
    assert runtime.compile_failure() is None
    assert runtime.compiles(x.numel())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            out = fused_sigmoid_focal_loss(x, None, labels, None, 10.0, 2.0, 0.25)
            out.backward()
    reason = f"CppCompileError: {CppCompileError(['c++'], 'no compiler')}"
    assert [str(w.message) for w in record if "torch.compile" in str(w.message)] == [
        f"torch.compile of focal_labels_sum_grad failed ({reason}); using eager kernels from now on"
    ]
    assert len(attempts) == 1
    assert runtime.compile_failure() == reason
    assert not runtime.compiles(x.numel())
    torch.testing.assert_close(out, composite_focal(x, onehot, 2.0, 0.25).sum() / 10.0)


@pytest.mark.parametrize(
    ("rows", "width", "whole", "max_rows"),
    [(203, 4, False, None), (203, 4, False, 5), (203, 4, True, 5), (0, 4, False, None), (10, 100, False, None)],
)
def test_row_chunks_cover_every_row_once_within_the_chunk_size(rows, width, whole, max_rows, monkeypatch):
    """Reference: the rows 0..N-1 in order; every chunk holds at most CHUNK_ELEMENTS elements (or one row, when a
    row is larger) and max_rows rows, except ``whole``, which is one call over all rows."""
    monkeypatch.setattr(runtime, "CHUNK_ELEMENTS", 64)
    x = torch.zeros(rows, width)
    chunks = list(runtime.row_chunks(x, whole, max_rows))
    assert [i for s in chunks for i in range(rows)[s]] == list(range(rows))
    if whole:
        assert chunks == [slice(0, rows)]
        return
    sizes = [s.stop - s.start for s in chunks]
    assert all(n <= max(1, 64 // width) and n <= (max_rows or rows) for n in sizes)
    assert all(n == sizes[0] for n in sizes[:-1])


@pytest.mark.parametrize(
    ("module", "home", "names"),
    [
        ("fused", "runtime", ["COMPILE_ENV", "COMPILE_MIN_ELEMENTS", "cached_kernel", "compiles", "run_kernel"]),
        ("fused", "elementwise", ["fused_quality_focal_loss", "fused_sigmoid_focal_loss"]),
        ("fused_rows", "runtime", ["COMPILE_MIN_ELEMENTS", "cached_kernel", "compiles", "run_kernel"]),
        ("fused_rows", "rows", ["fused_rowwise_loss", "vjp_kernel"]),
    ],
)
def test_old_module_paths_serve_every_public_name_with_a_deprecation_warning(module, home, names):
    """``functional.fused`` / ``functional.fused_rows`` stay importable: each public name is the object of its new
    home, and reading it warns with that home."""
    import importlib

    old = importlib.import_module(f"lightning_losses.functional.{module}")
    new = importlib.import_module(f"lightning_losses.functional.kernels.{home}")
    for name in names:
        assert name in old.__all__
        with pytest.warns(DeprecationWarning, match=f"import it from lightning_losses.functional.kernels.{home}"):
            assert getattr(old, name) is getattr(new, name)
    with pytest.raises(AttributeError, match="_CHUNK_ELEMENTS"):
        old._CHUNK_ELEMENTS  # noqa: B018


def test_compiled_kernels_equal_eager(monkeypatch):
    """The torch.compile path (what large inputs use by default) gives the eager values and gradients."""
    x, labels, _, soft = _case(n=2048, c=8)
    results = {}
    for mode in ("0", "1"):
        monkeypatch.setenv(COMPILE_ENV, mode)
        for kind, target, lab in (("labels", None, labels), ("soft", soft, None)):
            out = fused_sigmoid_focal_loss(x, target, lab, None, 50.0, 2.0, 0.25)
            (grad,) = torch.autograd.grad(out, x)
            results[mode, kind] = (out, grad)
    for kind in ("labels", "soft"):
        torch.testing.assert_close(results["1", kind][0], results["0", kind][0])
        torch.testing.assert_close(results["1", kind][1], results["0", kind][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduce", [True, False])
def test_compiled_whole_input_kernels_equal_the_composite_formula(dtype, reduce, monkeypatch):
    """Compiled, the kernels take the whole input in one call, weight and reduction inside: focal (labels and
    soft targets) and QFL against the composite formulas, values and gradients, with an upstream gradient."""
    monkeypatch.setenv(COMPILE_ENV, "1")
    x, labels, onehot, soft = _case(n=300, c=7, seed=6, dtype=dtype)
    xf = x.detach().float().requires_grad_()
    weight = torch.rand(300, 7)
    divisor = 11.0 if reduce else None
    scores = torch.rand(300)
    cases = [
        (
            lambda z: fused_sigmoid_focal_loss(z, None, labels, weight, divisor, 2.0, 0.25),
            lambda z: composite_focal(z, onehot, 2.0, 0.25) * weight,
        ),
        (
            lambda z: fused_sigmoid_focal_loss(z, soft.to(dtype), None, weight, divisor, 1.5, None),
            lambda z: composite_focal(z, soft.to(dtype).float(), 1.5, None) * weight,
        ),
        (
            lambda z: fused_quality_focal_loss(z, labels, scores, None, weight[:, 0], divisor, 2.0),
            lambda z: composite_qfl(z, labels, scores, 2.0) * weight[:, 0],
        ),
    ]
    tol = {} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    for fast, slow in cases:
        out = fast(x)
        ref = slow(xf)
        ref = ref.sum() / divisor if reduce else ref
        torch.testing.assert_close(out.float(), ref, **tol)
        upstream = torch.randn(ref.shape)
        (grad,) = torch.autograd.grad(out, x, upstream.to(out.dtype))
        (ref_grad,) = torch.autograd.grad(ref, xf, upstream)
        assert grad.dtype == dtype
        torch.testing.assert_close(grad.float(), ref_grad, **tol)


def composite_qfl(x, labels, scores, beta):
    """The unfused QFL: BCE(x, 0)·σ^β everywhere, overwritten at (i, y_i) by BCE(x, s)·|s − σ|^β, summed."""
    p = x.sigmoid()
    loss = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none") * p.pow(beta)
    rows = torch.nonzero((labels >= 0) & (labels < x.shape[1])).squeeze(1)
    cols = labels[rows]
    positive = F.binary_cross_entropy_with_logits(x[rows, cols], scores[rows], reduction="none")
    loss = loss.index_put((rows, cols), positive * (scores[rows] - p[rows, cols]).abs().pow(beta))
    return loss.sum(dim=1)


@pytest.mark.parametrize("beta", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("reduce", [True, False])
def test_quality_focal_equals_the_composite_formula(beta, reduce, monkeypatch):
    monkeypatch.setattr(runtime, "CHUNK_ELEMENTS", 64)
    gen = torch.Generator().manual_seed(3)
    x = (2 * torch.randn(101, 6, generator=gen)).requires_grad_()
    labels = torch.randint(-1, 7, (101,), generator=gen)
    scores = torch.rand(101, generator=gen)
    weight = torch.rand(101, generator=gen)
    out = fused_quality_focal_loss(x, labels, scores, None, weight, 9.0 if reduce else None, beta)
    ref = composite_qfl(x, labels, scores, beta) * weight
    ref = ref.sum() / 9.0 if reduce else ref
    torch.testing.assert_close(out, ref)
    upstream = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, upstream)[0], torch.autograd.grad(ref, x, upstream)[0])


def test_quality_focal_gradcheck_float64_soft_target():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(7, 4, dtype=torch.float64, generator=gen).requires_grad_()
    target = torch.rand(7, 4, dtype=torch.float64, generator=gen) * (torch.rand(7, 4, generator=gen) > 0.6)
    assert torch.autograd.gradcheck(lambda z: fused_quality_focal_loss(z, None, None, target, None, 3.0, 2.0), (x,))


@pytest.mark.parametrize("name", ["iou_loss", "giou_loss", "diou_loss", "ciou_loss", "distribution_focal_loss"])
def test_compiled_box_and_dfl_losses_equal_eager(name, monkeypatch):
    """The element-wise cores large inputs send through torch.compile give the eager values and gradients."""
    from lightning_losses import functional as LF

    gen = torch.Generator().manual_seed(5)
    if name == "distribution_focal_loss":
        pred = torch.randn(512, 17, generator=gen).requires_grad_()
        target = torch.rand(512, generator=gen) * 16
    else:
        xy = torch.rand(512, 2, generator=gen) * 50
        pred = torch.cat([xy, xy + 5 + torch.rand(512, 2, generator=gen) * 30], 1).requires_grad_()
        target = torch.cat([xy + 2, xy + 10 + torch.rand(512, 2, generator=gen) * 30], 1)
    results = []
    for mode in ("0", "1"):
        monkeypatch.setenv(COMPILE_ENV, mode)
        out = getattr(LF, name)(pred, target, reduction="none")
        results.append((out, torch.autograd.grad(out.sum(), pred)[0]))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


@pytest.mark.parametrize("loss", ["focal", "qfl"])
def test_forward_written_gradient_is_returned_once_and_a_retained_graph_recomputes(loss):
    """A reduced call that needs a gradient writes it in the forward and keeps it on its node until the first
    backward returns it (then drops it); a second backward through the retained graph recomputes it; under
    no_grad the value is the same. Reference: autograd through the composite formula, written here."""
    x, labels, onehot, _ = _case()
    scores = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1))
    weight = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(2))

    def fused():
        if loss == "focal":
            return fused_sigmoid_focal_loss(x, None, labels, weight[:, None], 7.0, 2.0, 0.25)
        return fused_quality_focal_loss(x, labels, scores, None, weight, 7.0, 2.0)

    def composite():
        p = x.sigmoid()
        target = onehot if loss == "focal" else onehot * scores[:, None]
        bce = F.binary_cross_entropy_with_logits(x, target, reduction="none")
        if loss == "focal":
            per = bce * (0.25 * onehot + 0.75 * (1 - onehot)) * (p - onehot).abs().pow(2) * weight[:, None]
        else:
            per = bce * torch.where(onehot > 0, (scores[:, None] - p).abs(), p).pow(2) * weight[:, None]
        return per.sum() / 7.0

    (expected,) = torch.autograd.grad(composite(), x)
    out = fused()
    assert out.grad_fn.kept.shape == x.shape  # written by the forward
    out.backward(retain_graph=True)
    assert out.grad_fn.kept is None  # handed on, not held by the graph
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-7)
    out.backward()
    torch.testing.assert_close(x.grad, 2 * expected, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(fused(), composite())

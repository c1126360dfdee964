"""Bounded compilation of the fused kernels: how many compilations a training run can cause, what happens at
dynamo's recompile limit, which errors are caught, and the Python-level switch and warm-up.

Compilations are counted with a cheap backend (dynamo's tracing, no inductor code generation) handed to the
runtime, and per compiled copy from dynamo's own cache entries of its code object.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list
from torch._dynamo.exc import BackendCompilerFailed
from torch._inductor.exc import InvalidCxxCompiler

from lightning_losses import functional as LF
from lightning_losses.functional.kernels import runtime, set_compile, warmup
from lightning_losses.functional.kernels.elementwise import ElementwiseSpec, _ElementwiseLoss
from lightning_losses.functional.kernels.focal import focal_labels, focal_labels_grad
from lightning_losses.functional.kernels.runtime import COMPILE_ENV

BOUND = 2  # compilations per compiled copy: one, and one more where a non-row size (the class count) varies
STRIDES = (8, 16, 32)
CLASSES = 4
BINS = 5


class CountingBackend:
    """A ``torch.compile`` backend that runs the traced graph as is and counts the compilations."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        self.count += 1
        return gm.forward


@pytest.fixture
def counting(monkeypatch) -> CountingBackend:
    """Every kernel call compiled (``LIGHTNING_LOSSES_COMPILE=1``) with a fresh runtime and the counting backend."""
    backend = CountingBackend()
    monkeypatch.setenv(COMPILE_ENV, "1")
    monkeypatch.setattr(runtime, "_compiler", runtime._Compiler(backend=backend))
    return backend


def _entries() -> dict[str, int]:
    """Dynamo's cached compilations of each compiled copy, by the copy's name."""
    out = {}
    for wrapper in runtime._compiler.compiled.values():
        fn = wrapper._torchdynamo_orig_callable
        out[fn.__name__] = len(_debug_get_cache_entry_list(fn.__code__))
    return out


def _step(batch: int, side: int, boxes: int, dtype: torch.dtype, gamma: float, train: bool, seed: int = 0) -> None:
    """One dense head's loss terms at this size: focal over every prior, GIoU and DFL over the positives."""
    g = torch.Generator().manual_seed(seed)
    priors = batch * sum((side // s) ** 2 for s in STRIDES)
    logits = torch.randn(priors, CLASSES, generator=g).to(dtype).requires_grad_(train)
    labels = torch.randint(0, CLASSES + 1, (priors,), generator=g)
    xy = torch.rand(boxes, 2, generator=g) * side
    pred = torch.cat([xy, xy + 4 + torch.rand(boxes, 2, generator=g) * 8], 1).to(dtype).requires_grad_(train)
    dist = torch.randn(4 * boxes, BINS, generator=g).to(dtype).requires_grad_(train)
    dist_target = torch.rand(4 * boxes, generator=g) * (BINS - 1.1)
    avg = torch.tensor(float(boxes))
    terms = [
        LF.sigmoid_focal_loss(logits, labels, torch.rand(priors, generator=g), gamma=gamma, avg_factor=avg),
        LF.giou_loss(pred, pred.detach().flip(0).float(), torch.rand(boxes, generator=g), avg_factor=avg),
        LF.distribution_focal_loss(dist, dist_target, torch.rand(4 * boxes, generator=g), avg_factor=avg),
    ]
    for term in terms:
        assert torch.isfinite(term), term
    if train:
        sum(terms).backward()


DTYPES = (torch.float32, torch.bfloat16, torch.float16)
GAMMAS = (2.0, 1.5)


def test_compilations_are_bounded_over_sizes_autocast_and_grad_mode(counting):
    """Reference: a fixed count. The first pass (every dtype and gamma, training and validation under no_grad and
    under inference mode, one box and many) compiles each copy once; a second pass over other batch sizes
    (B = 1 included), box counts, image sizes, under autocast and under no_grad compiles nothing more, falls back
    nowhere, and no copy holds more than BOUND compilations."""
    for dtype in DTYPES:
        for gamma in GAMMAS:
            for boxes in (1, 7):
                _step(2, 64, boxes, dtype, gamma, train=True)
                with torch.no_grad():
                    _step(2, 64, boxes, dtype, gamma, train=False)
                with torch.inference_mode():
                    _step(2, 64, boxes, dtype, gamma, train=False)
    first = counting.count
    copies = len(runtime._compiler.compiled)
    # focal: the training forward (the sum and the gradient in one kernel), the no-grad sum and the inference-mode
    # sum per dtype and gamma. GIoU (1 box and many: two size classes) and DFL (4 rows per box: one): a forward
    # and an inference-mode forward shared by the dtypes (they compute in float32), and a backward per dtype (it
    # writes the gradient in pred's dtype).
    assert copies == len(DTYPES) * len(GAMMAS) * 3 + (2 + 1) * (2 + len(DTYPES))
    assert first == copies

    for batch, side, boxes in ((1, 96, 3), (4, 128, 17), (3, 64, 2)):
        for dtype in DTYPES:
            for gamma in GAMMAS:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    _step(batch, side, boxes, dtype, gamma, train=True, seed=batch)
                with torch.no_grad():
                    _step(batch, side, boxes, dtype, gamma, train=False, seed=batch)
                with torch.inference_mode():
                    _step(batch, side, boxes, dtype, gamma, train=False, seed=batch)
    assert counting.count == first
    assert len(runtime._compiler.compiled) == copies
    assert runtime.compile_fallbacks() == {}
    assert max(_entries().values()) <= BOUND


def test_a_copy_compiles_again_only_for_a_new_class_count(counting):
    """Within one call signature only a non-row size can add a compilation, once: after it the class count is
    dynamic too (BOUND). (Dynamo may remember from an earlier copy of the same name that it varies, and compile
    it dynamic at once: fewer, never more.)"""
    counts = []
    for classes in (3, 5, 9, 12):
        x = torch.randn(40, classes, requires_grad=True)
        LF.sigmoid_focal_loss(x, torch.randint(0, classes + 1, (40,)), avg_factor=3.0).backward()
        counts.append(counting.count)
    assert max(_entries().values()) <= BOUND
    assert counts[-1] == counts[1] <= 2 * BOUND  # two copies: the sum and the gradient


def _spy_spec(chunk_rows: list[int]) -> ElementwiseSpec:
    def spy(x, labels, gamma, alpha):
        if not torch.compiler.is_compiling():
            chunk_rows.append(x.shape[0])
        return focal_labels(x, labels, gamma, alpha)

    return ElementwiseSpec(spy, focal_labels_grad, (2.0, 0.25), divisor=7.0)


def test_recompile_limit_falls_back_to_eager_chunks_reported_once(counting, monkeypatch):
    """Forced: a recompile limit of 1 and a second class count. The kernel warns once with the reason, then runs
    eagerly in chunks of CHUNK_ELEMENTS (never the whole input at once), with the composite formula's value;
    later calls of that signature stay chunked without warning again."""
    monkeypatch.setattr(runtime, "CHUNK_ELEMENTS", 64)
    rows: list[int] = []
    spec = _spy_spec(rows)
    x = torch.randn(50, 4)
    labels = torch.randint(0, 5, (50,))
    with torch._dynamo.config.patch(recompile_limit=1):
        _ElementwiseLoss.apply(spec, x, None, labels)
        assert rows == []  # compiled on the whole input: the spy ran only while traced
        for call in range(2):
            x = torch.randn(50, 8)
            rows.clear()
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                out = _ElementwiseLoss.apply(spec, x, None, labels)
            assert len([w for w in record if "recompile_limit (1)" in str(w.message)]) == (call == 0)
            torch.testing.assert_close(out, focal_labels(x, labels, 2.0, 0.25).sum() / 7.0)
            assert rows == [8] * 6 + [2]  # 64 elements of 8 classes per chunk
    (name,) = runtime.compile_fallbacks()
    assert name == "spy_sum"
    assert "recompile_limit (1)" in runtime.compile_fallbacks()[name]


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory"), MemoryError(), KeyboardInterrupt(), ValueError("a bug")],
    ids=["oom", "memory", "interrupt", "bug"],
)
def test_only_compiler_errors_are_caught(error, counting, monkeypatch):
    """Out of memory (raised or wrapped in a compiler error), interrupts and ordinary bugs propagate and leave
    compilation on; a compiler error (no C++ compiler) is caught and switches to eager kernels."""

    def broken(fn, **kwargs):
        def fail(*args):
            if isinstance(error, torch.OutOfMemoryError):
                raise BackendCompilerFailed(fn, error, None) from error
            raise error

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    x = torch.randn(20, 3)
    with pytest.raises(type(error)):
        LF.sigmoid_focal_loss(x, torch.randint(0, 4, (20,)))
    assert runtime.compile_failure() is None


def test_a_compiler_error_switches_to_eager_with_the_eager_value(counting, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: lambda *a: (_ for _ in ()).throw(InvalidCxxCompiler()))
    x, labels = torch.randn(20, 3), torch.randint(0, 4, (20,))
    with pytest.warns(UserWarning, match="InvalidCxxCompiler"):
        out = LF.sigmoid_focal_loss(x, labels)
    assert runtime.compile_failure().startswith("InvalidCxxCompiler")
    torch.testing.assert_close(out, focal_labels(x, labels, 2.0, 0.25).mean())


def test_python_switch_overrides_the_environment(counting, monkeypatch):
    """set_compile(False) beats LIGHTNING_LOSSES_COMPILE=1; True compiles a small input; None gives the choice back."""
    x, labels = torch.randn(20, 3), torch.randint(0, 4, (20,))
    try:
        assert set_compile(False) is None
        LF.sigmoid_focal_loss(x, labels)
        assert counting.count == 0
        monkeypatch.setenv(COMPILE_ENV, "0")
        set_compile(True)
        LF.sigmoid_focal_loss(x, labels)
        assert counting.count == 1
    finally:
        assert set_compile(None) is True
    assert not runtime.compiles(1 << 30)


def test_warmup_compiles_what_training_then_uses(counting, monkeypatch):
    """After warmup(dtypes, classes, bins), a training step of another size in those dtypes compiles nothing."""
    monkeypatch.delenv(COMPILE_ENV)
    compiled = warmup((torch.float32, torch.bfloat16), num_classes=CLASSES, bins=BINS, box_losses=("giou_loss",))
    assert counting.count == len(compiled) > 0
    assert all("_sig" in name for name in compiled)
    monkeypatch.setenv(COMPILE_ENV, "1")
    for dtype in (torch.float32, torch.bfloat16):
        _step(3, 96, 9, dtype, 2.0, train=True)
        with torch.inference_mode():
            _step(3, 96, 9, dtype, 2.0, train=False)
    assert counting.count == len(compiled)
    with pytest.raises(ValueError, match="`rows` must be at least 2"):
        warmup(rows=1)


def test_auto_mode_compiles_from_the_threshold_read_at_call_time(counting, monkeypatch):
    """``auto``: an input of ``COMPILE_MIN_ELEMENTS`` elements compiles, one fewer stays eager; a threshold a
    user sets on the module takes effect on the next call (no default bound at import)."""
    monkeypatch.delenv(COMPILE_ENV)
    threshold = runtime.COMPILE_MIN_ELEMENTS
    assert runtime.compiles(threshold)
    assert not runtime.compiles(threshold - 1)
    x, labels = torch.randn(50, 4), torch.randint(0, 5, (50,))
    LF.sigmoid_focal_loss(x, labels)  # 200 elements: eager
    assert counting.count == 0
    monkeypatch.setattr(runtime, "COMPILE_MIN_ELEMENTS", 200)
    assert runtime.compiles(200)
    assert not runtime.compiles(199)
    LF.sigmoid_focal_loss(x, labels)
    assert counting.count == 1

"""How the fused kernels run: the compile gate, bounded compilation, row chunks and the compute dtype.

A kernel is a plain tensor function. :func:`run_kernel` sends it through ``torch.compile`` where that pays
off (:func:`compiles`), or calls it eagerly; :func:`cached_kernel` gives every kernel a code object of its
own; :func:`row_chunks` cuts an input into the row ranges one call handles.

Compilation is bounded by design. Dynamo keeps a few compilations per code object
(``torch._dynamo.config.recompile_limit``) and anything that changes its guards takes one more: a dtype, the
value of a Python constant (``gamma``, ``eps``, ``mode``), autocast, inference mode, ``requires_grad``, a
size of 0 or 1. So :func:`run_kernel` compiles one copy of a kernel per *call signature* (the constants, the
inference mode, and per tensor its dtype, device, layout, which sizes are 0, 1 or more, and whether it is an
inference tensor) and calls it with
the rest normalised: detached tensors, no grad, autocast off, the row dimension marked dynamic. One copy then
sees one compilation, two where another size (the class count) varies. Where a copy hits the limit anyway,
or the compiler fails (no C++ compiler, an unsupported platform), the kernel runs eagerly *in chunks* and the
reason is reported once; out-of-memory errors and interrupts are never caught.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "CHUNK_ELEMENTS",
    "COMPILE_ENV",
    "COMPILE_MIN_ELEMENTS",
    "autocast_off",
    "cached_kernel",
    "compile_failure",
    "compile_fallbacks",
    "compiles",
    "compute_dtype",
    "row_chunks",
    "run_chunked",
    "run_kernel",
    "set_compile",
    "to_compute",
]

COMPILE_ENV = "LIGHTNING_LOSSES_COMPILE"
# From here (e.g. the (B·P, C) logits of B 1 x 640² x 80 classes: 682k) a training run compiles: the compiled
# kernel is several times faster than the eager one, so the one-off compile stall is repaid within the first
# minutes of training. Below it (unit tests, the embedded demo's 128² images) inputs stay eager: the eager kernel is
# cheap in absolute terms and such runs are shorter than the stall. benchmarks/compile_cost.py measures both sides
# (cold and warm compile time, eager vs compiled per size; COMPILE_COST.md). Read at call time: a user may set it.
COMPILE_MIN_ELEMENTS = 1 << 18
CHUNK_ELEMENTS = 1 << 20  # bounds the eager temporaries; large enough that per-chunk overhead stays small

T = TypeVar("T")


@dataclass
class _Compiler:
    """The process's compilation state.

    Attributes:
        compiled: one ``torch.compile`` wrapper per call signature (see :func:`run_kernel`).
        failure: why the compiler failed (exception type and message), ``None`` while it works.
        exhausted: the call signatures that hit dynamo's recompile limit; they run eagerly from then on.
        fallbacks: per kernel name, why it fell back to eager chunks (reported once).
        backend: the ``torch.compile`` backend; tests pass a cheap counting one.
        enabled: the Python-level switch of :func:`set_compile` (``None``: the environment decides).
    """

    compiled: dict[tuple[Any, ...], Callable[..., Any]] = field(default_factory=dict)
    failure: str | None = None
    exhausted: set[tuple[Any, ...]] = field(default_factory=set)
    fallbacks: dict[str, str] = field(default_factory=dict)
    backend: str | Callable[..., Any] = "inductor"
    enabled: bool | None = None


class _ChunksNeededError(Exception):
    """Raised by :func:`run_kernel` on a whole input it will not compile: :func:`run_chunked` reruns in chunks."""


_compiler = _Compiler()
_kernels: dict[tuple[str, Callable[..., Any]], Callable[..., Any]] = {}


def compile_failure() -> str | None:
    """Why ``torch.compile`` failed in this process (exception type and message), or ``None``."""
    return _compiler.failure


def compile_fallbacks() -> dict[str, str]:
    """The kernels that hit dynamo's recompile limit and run as eager chunks, each with the reason."""
    return dict(_compiler.fallbacks)


def set_compile(enabled: bool | None) -> bool | None:
    """Switch compilation from Python: ``True`` compiles every kernel call, ``False`` none, ``None`` leaves it
    to ``LIGHTNING_LOSSES_COMPILE`` and the size threshold. Returns the previous setting.

    Example:
        >>> previous = set_compile(False)
        >>> compiles(1 << 30)
        False
        >>> _ = set_compile(previous)
    """
    previous, _compiler.enabled = _compiler.enabled, enabled
    return previous


def _mode() -> str:
    if _compiler.enabled is not None:
        return "1" if _compiler.enabled else "0"
    return os.environ.get(COMPILE_ENV, "auto")


def compiles(numel: int, min_elements: int | None = None) -> bool:
    """Whether :func:`run_kernel` sends an input of ``numel`` elements through ``torch.compile``
    (``min_elements``: the threshold, :data:`COMPILE_MIN_ELEMENTS` as set now if ``None``)."""
    if min_elements is None:
        min_elements = COMPILE_MIN_ELEMENTS
    mode = _mode()
    if mode == "0" or (mode != "1" and numel < min_elements) or torch.compiler.is_compiling():
        return False
    return _compiler.failure is None


def _signature(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What dynamo guards on, per argument: a tensor's dtype, device, layout, size classes (0, 1, more) and
    whether it is an inference tensor; a constant's type and value."""
    sig: list[Any] = []
    for a in args:
        if isinstance(a, Tensor):
            sizes = tuple(min(s, 2) for s in a.shape)
            broadcast = tuple(s == 0 for s in a.stride())
            sig.append((a.dtype, a.device, sizes, a.is_contiguous(), broadcast, a.is_inference()))
        else:
            try:
                hash(a)
            except TypeError:  # an unhashable constant is keyed by its text
                a = repr(a)
            sig.append((type(a), a))
    return (torch.is_inference_mode_enabled(), *sig)


def _copy(fn: Callable[..., Any], index: int) -> Callable[..., Any]:
    """``fn`` with a code object of its own: dynamo's compilations of the copy are the copy's alone."""
    name = f"{fn.__name__}_sig{index}"
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _normalised(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Detached tensors with their row dimension (of 2 or more rows) marked dynamic."""
    out = []
    for a in args:
        if isinstance(a, Tensor):
            a = a.detach()
            if a.ndim and a.shape[0] >= 2:
                torch._dynamo.maybe_mark_dynamic(a, 0)
        out.append(a)
    return tuple(out)


def _device_type(args: tuple[Any, ...]) -> str:
    return next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")


def autocast_off(device_type: str) -> contextlib.ExitStack:
    """Autocast disabled on ``device_type`` where it is on: kernels compute in their own dtype policy
    (:func:`compute_dtype`), never in what autocast would pick."""
    stack = contextlib.ExitStack()
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        stack.enter_context(torch.autocast(device_type, enabled=False))
    return stack


def _plain_mode(device_type: str) -> contextlib.ExitStack:
    """No grad and no autocast: the one global state every kernel call runs in, compiled or eager."""
    stack = contextlib.ExitStack()
    if torch.is_grad_enabled():
        stack.enter_context(torch.no_grad())
    stack.enter_context(autocast_off(device_type))
    return stack


_FATAL = (torch.OutOfMemoryError, MemoryError, KeyboardInterrupt)


def _fatal_cause(err: BaseException) -> BaseException | None:
    """An out-of-memory error or interrupt ``err`` wraps (or is), which must propagate."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, _FATAL):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "inner_exception", None)]
    return None


def _compiler_errors() -> tuple[type[BaseException], ...]:
    from torch._dynamo import exc as dynamo_exc
    from torch._inductor import exc as inductor_exc

    return (dynamo_exc.TorchDynamoException, inductor_exc.InvalidCxxCompiler, inductor_exc.CppCompileError)


def _give_up(name: str, reason: str, whole: bool) -> None:
    """Report the fallback of ``name`` once; on a whole input, ask :func:`run_chunked` for chunks."""
    if name not in _compiler.fallbacks:
        _compiler.fallbacks[name] = reason
        warnings.warn(f"torch.compile of {name}: {reason}; running it eagerly in chunks", stacklevel=3)
    if whole:
        raise _ChunksNeededError(reason)


# One patch object, entered on every compiled call: building a config patch costs a class and a ContextVar
# (hundreds of µs), entering one costs a few; its ContextVar stack makes it reentrant and thread-safe.
_FAIL_ON_RECOMPILE_LIMIT = torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)


def run_kernel(
    fn: Callable[..., Any], numel: int, *args: Any, min_elements: int | None = None, whole: bool = False
) -> Any:
    """Call a kernel, through ``torch.compile`` when that pays off, under no grad and no autocast.

    ``LIGHTNING_LOSSES_COMPILE=1`` (or :func:`set_compile`) always compiles, ``0`` never; by default
    (``auto``) inputs of at least ``min_elements`` elements do, where one compilation (seconds) is repaid by
    fusing a kernel's dozen element-wise passes into one. Each call signature gets its own compiled copy
    (module docstring), so the number of compilations is bounded by the signatures a program uses, not by
    its batch sizes. The row dimension is dynamic from the first call; the class or bin count stays a
    constant the compiler can vectorise over.

    A failed compilation warns once with its reason and eager kernels run from then on; a copy that hits
    dynamo's recompile limit warns once and runs eagerly. Either way, with ``whole`` (``args`` are a whole
    input, too large for eager temporaries) the call raises for :func:`run_chunked` to rerun in chunks.
    Out-of-memory errors and interrupts propagate.
    """
    device_type = _device_type(args)
    if not compiles(numel, min_elements):
        with _plain_mode(device_type):
            return fn(*args)
    name = getattr(fn, "__name__", "kernel")
    key = (fn, *_signature(args))
    if key in _compiler.exhausted:
        _give_up(name, _compiler.fallbacks.get(name, "recompile limit reached"), whole)
        with _plain_mode(device_type):
            return fn(*args)
    compiled = _compiler.compiled.get(key)
    if compiled is None:
        own = _copy(fn, len(_compiler.compiled))
        compiled = _compiler.compiled[key] = torch.compile(own, dynamic=None, backend=_compiler.backend)
    try:
        with _plain_mode(device_type), _FAIL_ON_RECOMPILE_LIMIT:
            return compiled(*_normalised(args))
    except torch._dynamo.exc.FailOnRecompileLimitHit:
        _compiler.exhausted.add(key)
        limit = torch._dynamo.config.recompile_limit
        _give_up(name, f"dynamo's recompile_limit ({limit}) reached", whole)
    except BaseException as err:
        fatal = _fatal_cause(err)
        if fatal is err:
            raise
        if fatal is not None:
            raise fatal from err
        if not isinstance(err, _compiler_errors()):
            raise
        _compiler.failure = f"{type(err).__name__}: {err}"
        warnings.warn(
            f"torch.compile of {name} failed ({_compiler.failure}); using eager kernels from now on", stacklevel=2
        )
        if whole:
            raise _ChunksNeededError(_compiler.failure) from err
    with _plain_mode(device_type):
        return fn(*args)


def run_chunked(body: Callable[[bool], T], numel: int, min_elements: int | None = None) -> T:
    """``body(compiled)``, with ``compiled`` from :func:`compiles`; where a kernel gives up compiling a whole
    input (``run_kernel(..., whole=True)``), ``body(False)`` again: eager, in chunks.

    ``body`` must be restartable: it builds its result from scratch (a gradient it overwrites, sums it
    collects).
    """
    compiled = compiles(numel, min_elements)
    if not compiled:
        return body(False)
    try:
        return body(True)
    except _ChunksNeededError:
        return body(False)


def cached_kernel(kind: str, fn: Callable[..., Any], kernel: Callable[..., Any]) -> Callable[..., Any]:
    """``kernel`` (a closure over ``fn``) as a function with a code object of its own, one per ``(kind, fn)``.

    Kernels that were all closures of one shared function would share one dynamo cache and name.
    """
    key = (kind, fn)
    if key not in _kernels:
        name = f"{getattr(fn, '__name__', 'kernel')}_{kind}"
        code = kernel.__code__.replace(co_name=name)
        own = types.FunctionType(code, kernel.__globals__, name, kernel.__defaults__, kernel.__closure__)
        _kernels[key] = functools.update_wrapper(own, kernel, assigned=("__doc__", "__annotations__"))
    return _kernels[key]


def row_chunks(x: Tensor, whole: bool, max_rows: int | None = None) -> Iterator[slice]:
    """The row ranges of ``x`` one kernel call takes: all rows if ``whole`` (a compiled kernel that allocates
    no temporaries), else chunks of :data:`CHUNK_ELEMENTS` elements (``max_rows`` rows at most).

    Example:
        >>> [(s.start, s.stop) for s in row_chunks(torch.zeros(5, 3), whole=False, max_rows=2)]
        [(0, 2), (2, 4), (4, 5)]
    """
    rows = x.shape[0]
    if whole:
        step = max(rows, 1)
    else:
        step = max(1, CHUNK_ELEMENTS // max(math.prod(x.shape[1:]), 1))
        step = step if max_rows is None else min(step, max_rows)
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in: float32 for half precision and non-float inputs, else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point else dtype


def to_compute(t: Tensor) -> Tensor:
    """A floating-point ``t`` in its :func:`compute_dtype`; labels and masks unchanged."""
    return t.to(compute_dtype(t.dtype)) if t.is_floating_point() else t

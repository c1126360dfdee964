"""How the fused kernels run: the compile gate, the kernel caches, row chunks and the compute dtype.

A kernel is a plain tensor function. :func:`run_kernel` sends it through ``torch.compile`` where that pays
off (:func:`compiles`), or calls it eagerly; :func:`cached_kernel` gives every kernel a code object of its
own; :func:`row_chunks` cuts an input into the row ranges one call handles. A compilation that fails is
reported once, with its reason, and every kernel runs eagerly from then on in this process.
"""

from __future__ import annotations

import functools
import math
import os
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CHUNK_ELEMENTS",
    "COMPILE_ENV",
    "COMPILE_MIN_ELEMENTS",
    "cached_kernel",
    "compile_failure",
    "compiles",
    "compute_dtype",
    "row_chunks",
    "run_kernel",
    "to_compute",
]

COMPILE_ENV = "LIGHTNING_LOSSES_COMPILE"
COMPILE_MIN_ELEMENTS = 1 << 21
CHUNK_ELEMENTS = 1 << 20  # bounds the eager temporaries; large enough that per-chunk overhead stays small


@dataclass
class _Compiler:
    """The process's ``torch.compile`` wrappers, one per kernel, and why compiling failed (``None`` if it has not)."""

    compiled: dict[Callable[..., Any], Callable[..., Any]] = field(default_factory=dict)
    failure: str | None = None


_compiler = _Compiler()
_kernels: dict[tuple[str, Callable[..., Any]], Callable[..., Any]] = {}


def compile_failure() -> str | None:
    """Why ``torch.compile`` failed in this process (exception type and message), or ``None``."""
    return _compiler.failure


def compiles(numel: int, min_elements: int = COMPILE_MIN_ELEMENTS) -> bool:
    """Whether :func:`run_kernel` sends an input of ``numel`` elements through ``torch.compile``."""
    mode = os.environ.get(COMPILE_ENV, "auto")
    if mode == "0" or (mode != "1" and numel < min_elements) or torch.compiler.is_compiling():
        return False
    return _compiler.failure is None


def run_kernel(fn: Callable[..., Any], numel: int, *args: Any, min_elements: int = COMPILE_MIN_ELEMENTS) -> Any:
    """Call a kernel, through ``torch.compile`` when that pays off.

    ``LIGHTNING_LOSSES_COMPILE=1`` always compiles, ``0`` never; by default (``auto``) inputs of at
    least ``min_elements`` elements do, where one compilation (seconds) is repaid by fusing
    a kernel's dozen element-wise passes into one. Shapes start static and only the sizes that change
    between calls become dynamic: the class or bin count stays a constant the compiler can vectorise
    over. A failed compilation (no C++ compiler, an unsupported platform) warns once with its reason and
    eager kernels run from then on.
    """
    if not compiles(numel, min_elements):
        return fn(*args)
    compiled = _compiler.compiled.get(fn)
    if compiled is None:
        compiled = _compiler.compiled[fn] = torch.compile(fn, dynamic=None)
    try:
        return compiled(*args)
    except Exception as err:  # degrade to eager wherever the compiler is unavailable
        _compiler.failure = f"{type(err).__name__}: {err}"
        warnings.warn(
            f"torch.compile of {fn.__name__} failed ({_compiler.failure}); using eager kernels from now on",
            stacklevel=2,
        )
        return fn(*args)


def cached_kernel(kind: str, fn: Callable[..., Any], kernel: Callable[..., Any]) -> Callable[..., Any]:
    """``kernel`` (a closure over ``fn``) as a function with a code object of its own, one per ``(kind, fn)``.

    Dynamo caches compilations per code object (8 at most): kernels that were all closures of one shared
    function would exhaust it and drop the later ones to eager.
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

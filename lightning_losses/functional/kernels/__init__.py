"""The fused, low-memory loss kernels, one concern per module.

- :mod:`.runtime`: when a kernel is compiled (bounded per call signature), the kernel caches, row chunks,
  the compute dtype; :func:`set_compile` switches compilation from Python.
- :mod:`.warmup`: :func:`warmup` compiles the kernels before training for given dtypes.
- :mod:`.sigmoid`, :mod:`.focal`, :mod:`.qfl`, :mod:`.dfl`: the per-element (per-row) math and its
  closed-form gradients, plain tensor functions.
- :mod:`.elementwise`: the autograd Function of the element-wise losses (focal, QFL).
- :mod:`.rows`: the autograd Function of the per-row losses (IoU family, DFL).

The public losses in :mod:`lightning_losses.functional` call these; users need only :func:`warmup`,
:func:`set_compile` and, to diagnose, :func:`compile_failure` / :func:`compile_fallbacks`.
"""

from lightning_losses.functional.kernels.runtime import compile_failure, compile_fallbacks, set_compile
from lightning_losses.functional.kernels.warmup import warmup

__all__ = ["compile_failure", "compile_fallbacks", "set_compile", "warmup"]

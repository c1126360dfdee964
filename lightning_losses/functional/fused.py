"""Deprecated alias of the fused focal / QFL kernels and their runtime.

The names moved to :mod:`lightning_losses.functional.kernels.runtime` (``compiles``, ``run_kernel``,
``cached_kernel``, ``COMPILE_ENV``, ``COMPILE_MIN_ELEMENTS``) and
:mod:`lightning_losses.functional.kernels.elementwise` (``fused_sigmoid_focal_loss``,
``fused_quality_focal_loss``). Reading one from here still works and warns with its new home.
"""

from __future__ import annotations

from lightning_losses.functional.kernels.moved import moved_names

_RUNTIME = "lightning_losses.functional.kernels.runtime"
_ELEMENTWISE = "lightning_losses.functional.kernels.elementwise"
_HOMES = {
    "COMPILE_ENV": _RUNTIME,
    "COMPILE_MIN_ELEMENTS": _RUNTIME,
    "cached_kernel": _RUNTIME,
    "compiles": _RUNTIME,
    "run_kernel": _RUNTIME,
    "fused_quality_focal_loss": _ELEMENTWISE,
    "fused_sigmoid_focal_loss": _ELEMENTWISE,
}
__all__ = sorted(_HOMES)
__getattr__ = moved_names(__name__, _HOMES)

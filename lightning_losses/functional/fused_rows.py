"""Deprecated alias of the fused row kernels (IoU family, DFL).

``fused_rowwise_loss`` and ``vjp_kernel`` moved to :mod:`lightning_losses.functional.kernels.rows`; the
runtime names this module also exposed (``compiles``, ``run_kernel``, ``cached_kernel``,
``COMPILE_MIN_ELEMENTS``) to :mod:`lightning_losses.functional.kernels.runtime`. Reading one from here still
works and warns with its new home.
"""

from __future__ import annotations

from lightning_losses.functional.kernels.moved import moved_names

_RUNTIME = "lightning_losses.functional.kernels.runtime"
_ROWS = "lightning_losses.functional.kernels.rows"
_HOMES = {
    "COMPILE_MIN_ELEMENTS": _RUNTIME,
    "cached_kernel": _RUNTIME,
    "compiles": _RUNTIME,
    "run_kernel": _RUNTIME,
    "fused_rowwise_loss": _ROWS,
    "vjp_kernel": _ROWS,
}
__all__ = sorted(_HOMES)
__getattr__ = moved_names(__name__, _HOMES)

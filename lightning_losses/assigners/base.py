"""What every assigner returns, the chunking that bounds its memory, and the budget that sizes the chunks."""

from __future__ import annotations

import math
import time
from numbers import Real
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "FALLBACK_AVAILABLE_BYTES",
    "MAX_CHUNK_BYTES",
    "MEMORY_FRACTION",
    "MIN_BUDGET",
    "AssignResult",
    "chunk_budget",
    "chunk_size",
    "memory_budget",
]

MEMORY_FRACTION = 1 / 8
"""Default share of the available memory one assigner chunk may fill with its temporaries: the network's
activations, the loss terms and (on a GPU) other streams work beside the assigner, and the available reading
is a snapshot, so the assigner takes an eighth and leaves the rest."""

MIN_BUDGET = 1 << 18
"""Fewest elements a chunk holds whatever the reading (a few MiB of temporaries): a nearly full device would
otherwise split one assignment into thousands of kernel launches for a saving of a few MiB."""

MAX_CHUNK_BYTES = 256 << 20
"""Most bytes of temporaries one chunk allocates whatever the reading: the order of the fixed budgets the
assigners had before (max-IoU 2^22 triples x 40 B = 160 MiB), at which a chunk's fixed cost is already
negligible. Larger chunks are no faster and only raise the peak (a 2^28-element ceiling made RetinaNet's peak at
B 4 x 1024² 813 MB on a 24 GiB host, against 500 MB) and, on a GPU, the caching allocator's reserve: memory
decides the chunk where it is scarce, this where it is not."""

FALLBACK_AVAILABLE_BYTES = 2 << 30
"""Available bytes assumed where no reading exists (a device other than CPU or CUDA; a host without
``/proc/meminfo`` and without ``psutil``): 2 GiB, so the default fraction gives a 256 MiB chunk."""

_HOST_READING_SECONDS = 1.0  # a host reading is reused this long: one file read per step, not one per level
_host_reading: tuple[float, int] = (-math.inf, 0)  # (monotonic time, bytes); replaced whole, never mutated


class AssignResult(NamedTuple):
    """Batched assignment of priors to ground-truth boxes.

    Attributes:
        gt_inds: ``(B, P)`` int64: ``-1`` ignored, ``0`` negative, ``i + 1`` positive for box ``i``.
        max_overlaps: ``(B, P)`` the IoU that decided each prior (its matched box's IoU for positives).
        labels: ``(B, P)`` int64 class of the matched box, ``-1`` where not positive.
    """

    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor

    @property
    def positive(self) -> Tensor:
        """``(B, P)`` bool mask of positive priors."""
        return self.gt_inds > 0

    @property
    def matched(self) -> Tensor:
        """``(B, P)`` index of the matched box (0 where not positive, so safe to gather with)."""
        return (self.gt_inds - 1).clamp(min=0)


def chunk_size(batch: int, num_gts: int, num_priors: int, budget: int, per_pair: int = 1) -> int:
    """Priors per chunk so that ``batch × num_gts × chunk × per_pair`` elements stay within ``budget``."""
    per_prior = max(batch * max(num_gts, 1) * per_pair, 1)
    return max(1, min(num_priors, budget // per_prior))


def _meminfo_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux), ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    value, unit = line.split()[1:3]
                    return int(value) * 1024 if unit == "kB" else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None


def _psutil_available() -> int | None:
    """``psutil.virtual_memory().available`` where psutil imports (it is no dependency), else ``None``."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError, AttributeError):
        return None


def _host_available_bytes() -> int:
    """Host memory available now: ``/proc/meminfo``, else psutil, else :data:`FALLBACK_AVAILABLE_BYTES`.

    A reading is reused for :data:`_HOST_READING_SECONDS`, so the levels and criteria of one step share one.
    """
    global _host_reading
    now = time.monotonic()
    taken, value = _host_reading
    if now - taken < _HOST_READING_SECONDS:
        return value
    reading = _meminfo_available()
    if reading is None:
        reading = _psutil_available()
    value = FALLBACK_AVAILABLE_BYTES if reading is None else reading
    _host_reading = (now, value)
    return value


def _cuda_available_bytes(device: torch.device) -> int:
    """Free device memory plus what PyTorch's caching allocator holds but does not use (it hands that out first).

    ``torch.cuda.mem_get_info`` asks the driver (``cudaMemGetInfo``) and ``memory_reserved`` /
    ``memory_allocated`` read the allocator's counters: host-side queries that wait on no stream.
    """
    free, _ = torch.cuda.mem_get_info(device)
    return int(free) + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _available_bytes(device: torch.device) -> int:
    """Bytes available now on ``device`` for new tensors (see :func:`memory_budget`)."""
    if device.type == "cuda":
        return _cuda_available_bytes(device)
    if device.type == "cpu":
        return _host_available_bytes()
    return FALLBACK_AVAILABLE_BYTES


def _check_positive_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be finite and > 0, got {value}")
    return value


def memory_budget(device: torch.device | str, bytes_per_element: float, fraction: float = MEMORY_FRACTION) -> int:
    r"""Elements whose temporaries fit in ``fraction`` of the memory available now on ``device``.

    .. math::
        \min\Big(\max\Big(\Big\lfloor \frac{f \cdot A}{b} \Big\rfloor,\ m\Big),\
        \max\Big(\Big\lfloor \frac{C}{b} \Big\rfloor,\ m\Big)\Big)

    with :math:`f` = ``fraction``, :math:`b` = ``bytes_per_element`` (what one element, an assigner's
    (image, box, prior) triple, costs in temporaries alive at once) and :math:`A` the available bytes:

    - CUDA: ``torch.cuda.mem_get_info(device)``'s free bytes plus ``memory_reserved - memory_allocated`` (blocks
      the caching allocator holds unused and reuses before asking the driver). These are host-side driver and
      allocator queries, not stream synchronisations: nothing waits for queued kernels and no tensor value is
      read, so the budget can be taken inside a training step;
    - CPU: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else ``psutil.virtual_memory().available`` where
      psutil imports, else :data:`FALLBACK_AVAILABLE_BYTES`; a reading is reused for a second;
    - any other device: :data:`FALLBACK_AVAILABLE_BYTES`.

    The default :data:`MEMORY_FRACTION` (1/8) leaves room for the work beside the assigner; :math:`m` =
    :data:`MIN_BUDGET` (:math:`2^{18}` elements) and :math:`C` = :data:`MAX_CHUNK_BYTES` (256 MiB) bound the result
    (see their notes).

    Args:
        device: where the chunk's temporaries will live.
        bytes_per_element: bytes of temporaries per element, > 0.
        fraction: share of the available memory, in ``(0, 1]``.

    Example:
        >>> MIN_BUDGET <= memory_budget("cpu", 64) <= MAX_CHUNK_BYTES // 64
        True
    """
    bytes_per_element = _check_positive_real(bytes_per_element, "bytes_per_element")
    fraction = _check_positive_real(fraction, "fraction")
    if fraction > 1:
        raise ValueError(f"`fraction` must be in (0, 1], got {fraction}")
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"`device` must name a torch device, got {device!r}") from err
    if not isinstance(device, torch.device):
        raise TypeError(f"`device` must be a torch.device or str, got {type(device).__name__}")
    available = max(int(_available_bytes(device)), 0)
    ceiling = max(int(MAX_CHUNK_BYTES / bytes_per_element), MIN_BUDGET)
    return min(max(int(fraction * available / bytes_per_element), MIN_BUDGET), ceiling)


def chunk_budget(
    max_elements: int | None, device: torch.device, bytes_per_element: float, per_pair: int = 1, default: int = 1 << 24
) -> int:
    """(Image, box, prior) triples one chunk may hold.

    ``None`` (automatic): the assigner's ``default`` budget (``default // per_pair`` triples, what it used before
    budgets were read from memory), cut to :func:`memory_budget` of ``device`` at ``bytes_per_element`` per triple
    where memory is scarcer: a roomy device keeps the default's speed and peak, a full one gets smaller chunks.
    An int is a fixed budget counted as before, ``per_pair`` elements a triple: ``max_elements // per_pair``
    triples, which chunks exactly as ``chunk_size(..., max_elements, per_pair)`` does (``⌊⌊m/a⌋/b⌋ = ⌊m/(ab)⌋``).
    """
    if max_elements is None:
        return min(memory_budget(device, bytes_per_element), max(default // per_pair, 1))
    return max_elements // per_pair

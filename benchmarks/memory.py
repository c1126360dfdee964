"""Peak extra memory of one candidate of one workload, measured in a process of its own.

Each measurement runs in a fresh child forked from a ``forkserver`` that has torch and the package
imported (so a child starts in a fraction of a second instead of re-importing them) and that was
started with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc then serves every tensor-sized block with
``mmap`` and returns it to the OS when freed, so the resident set tracks live tensors. The child gets
an empty ``TORCHINDUCTOR_CACHE_DIR`` of its own, so its first call's time includes any cold
``torch.compile``. It builds the inputs, runs two warm-up steps (forward + backward), then on the CPU:

1. reads ``VmRSS`` from ``/proc/self/status`` (inputs, warm caches and libraries included),
2. resets the high-water mark by writing ``5`` to ``/proc/self/clear_refs``,
3. runs the forward, reads ``VmHWM`` (forward peak), runs the backward, reads ``VmHWM`` again,

and reports ``peak extra = VmHWM − VmRSS_before``. On CUDA it uses ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats`` minus ``memory_allocated`` before.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

__all__ = ["MemoryResult", "measure", "start_forkserver"]

MMAP_THRESHOLD = "131072"
PRELOAD = ["torch", "benchmarks.workloads", "lightning_losses.losses", "lightning_losses.presets"]
_context: ForkServerContext | None = None


@dataclass
class MemoryResult:
    """What one child reports (MiB and seconds); ``error`` is set when it failed."""

    extra_mb: float = float("nan")
    forward_extra_mb: float = float("nan")
    baseline_mb: float = float("nan")
    first_call_s: float = float("nan")
    second_call_s: float = float("nan")
    error: str = ""


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def _child(workload: str, params: dict[str, Any], candidate: str, device_name: str, threads: int) -> MemoryResult:
    """Measure in this (child) process."""
    import torch

    from benchmarks.dense_inputs import DENSE_BY_NAME
    from benchmarks.workloads import BY_NAME

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    case = (DENSE_BY_NAME[workload] if workload in DENSE_BY_NAME else BY_NAME[workload]).build(params, device)
    if candidate not in case.candidates:
        return MemoryResult(error="; ".join(case.notes) or f"no candidate {candidate!r}")
    fn = case.candidates[candidate]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def step() -> float:
        start = time.perf_counter()
        torch.autograd.grad(fn(), case.leaves, allow_unused=True)
        sync()
        return time.perf_counter() - start

    first = step()
    second = step()  # a recompilation for the second shape, if any, happens here and not below
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        loss = fn()
        sync()
        forward_peak = torch.cuda.max_memory_allocated(device)
        torch.autograd.grad(loss, case.leaves, allow_unused=True)
        sync()
        peak = torch.cuda.max_memory_allocated(device)
        unit = 1024.0 * 1024.0
    else:
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        loss = fn()
        forward_peak = _status_kib("VmHWM")
        torch.autograd.grad(loss, case.leaves, allow_unused=True)
        peak = _status_kib("VmHWM")
        unit = 1024.0
    return MemoryResult((peak - before) / unit, (forward_peak - before) / unit, before / unit, first, second)


def _entry(conn: Connection, cache_dir: str, *args: Any) -> None:
    """Child process body: measure, send the result as a dict, never raise."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    try:
        result = _child(*args)
    except Exception as err:  # the table reports it; the run goes on
        result = MemoryResult(error=f"{type(err).__name__}: {err}"[:300])
    conn.send(asdict(result))
    conn.close()


def start_forkserver() -> ForkServerContext:
    """Start the forkserver once, with the malloc threshold in its environment (not in ours); call before threads."""
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        os.environ["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
        try:
            forkserver.ensure_running()
        finally:
            if previous is None:
                del os.environ["MALLOC_MMAP_THRESHOLD_"]
            else:
                os.environ["MALLOC_MMAP_THRESHOLD_"] = previous
        _context = context
    return _context


def measure(
    workload: str,
    params: dict[str, Any],
    candidate: str,
    device: str,
    threads: int,
    timeout_s: float,
    shared_cache: str | None = None,
) -> MemoryResult:
    """Measure one candidate in a new child process; errors (crash, timeout, exception) come back in ``error``.

    ``shared_cache``: an inductor cache folder the children share (kept), so only the first child compiles cold;
    by default each child gets an empty one, so its first call's time includes a cold compilation.
    """
    context = start_forkserver()
    cache_dir = shared_cache or tempfile.mkdtemp(prefix="bench-inductor-")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_entry, args=(sender, cache_dir, workload, params, candidate, device, threads), daemon=True
    )
    try:
        process.start()
        sender.close()
        if not receiver.poll(timeout_s):
            process.kill()
            return MemoryResult(error=f"timed out after {timeout_s:.0f} s")
        try:
            return MemoryResult(**receiver.recv())
        except EOFError:
            process.join(10)
            return MemoryResult(error=f"child died (exit code {process.exitcode})")
    finally:
        process.join(10)
        receiver.close()
        if shared_cache is None:
            shutil.rmtree(cache_dir, ignore_errors=True)

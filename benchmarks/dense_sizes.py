"""Every dense preset against MMDetection 3.x's head code path at three sizes: time, aten ops, host time, memory.

    python -m benchmarks.run --only dense --out benchmarks/DENSE.md             # CPU, ≈ 20 min on 2 cores
    python -m benchmarks.run --only dense --device cuda --out /tmp/DENSE-cuda.md

Per preset (:mod:`benchmarks.dense_inputs`) and size (B 2 × 640², B 4 × 1024², B 8 × 1333×800; 80 classes, 20 boxes
per image), one forward + backward of the package's preset and of :mod:`benchmarks.mmdet_heads` on the same maps:

- **time**: interleaved rounds (:func:`benchmarks.timing.time_interleaved`), the median of the per-round ratios;
- **aten ops**: ops dispatched in one call (forward + backward) under a ``TorchDispatchMode`` counter, with how many
  of them read a value back to the host (``_local_scalar_dense``, ``nonzero``, ``equal``, ``is_nonzero``). Under a
  dispatch mode ``torch.compile`` steps aside, so a compiled kernel counts the ops of its eager twin;
- **host time**: the same call at the same batch, classes and boxes on a 128² image
  (:func:`~benchmarks.dense_inputs.host_params`), where the tensor arithmetic is negligible: what is left is the
  fixed cost of a call (Python, dispatch, op launches, per-image loops), the part that does not shrink with the
  image. On CUDA it is wall time with a synchronisation at the end, so it includes the launches' latency;
- **memory**: :func:`benchmarks.memory.measure` in a fresh process (``VmHWM`` on CPU,
  ``torch.cuda.max_memory_allocated`` on CUDA), the children sharing one inductor cache (no first-call column here);
- **where the time goes**: :func:`benchmarks.breakdown.breakdown`: assignment / targets, each loss term, the rest
  of the forward, and the backward.
"""

from __future__ import annotations

import argparse
import gc
import math
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.breakdown import Breakdown, breakdown
from benchmarks.dense_inputs import DENSE, MMDET, dense_label, host_params
from benchmarks.memory import MemoryResult, measure, start_forkserver
from benchmarks.timing import quartiles, time_interleaved
from benchmarks.workloads import PACKAGE, Case, Workload

__all__ = ["DenseRow", "OpCounter", "count_ops", "dense_rows", "render_dense"]

HOST_READS = ("aten._local_scalar_dense", "aten.nonzero", "aten.equal", "aten.is_nonzero")
TITLE = "Dense presets vs MMDetection 3.x's head code path"


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while active, and those that read a value back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.host_reads = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.ops += 1
        if str(func).startswith(HOST_READS):
            self.host_reads += 1
        return func(*args, **(kwargs or {}))


def count_ops(case: Case, name: str) -> tuple[int, int]:
    """``(aten ops, host reads)`` of one forward + backward of candidate ``name``."""
    with OpCounter() as counter:
        torch.autograd.grad(case.candidates[name](), case.leaves, allow_unused=True)
    return counter.ops, counter.host_reads


@dataclass
class DenseRow:
    """One preset at one size on one device: the package, and MMDetection's path where there is one."""

    preset: str
    size: str
    device: str
    ms: dict[str, float]
    ratio: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    rounds: int = 0
    value_diff: float | None = None
    ops: dict[str, tuple[int, int]] = field(default_factory=dict)
    host_ms: dict[str, float] = field(default_factory=dict)
    host_ratio: float = math.nan
    host_ops: dict[str, int] = field(default_factory=dict)
    memory: dict[str, MemoryResult] = field(default_factory=dict)
    stages: dict[str, Breakdown] = field(default_factory=dict)


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _value_diff(case: Case) -> float:
    with torch.no_grad():
        a, b = float(case.candidates[PACKAGE]()), float(case.candidates[MMDET]())
    return abs(a - b) / max(abs(b), 1e-12)


def _memory(
    plan: list[tuple[Workload, dict[str, Any]]],
    device: torch.device,
    jobs: int,
    timeout: float,
    log: Callable[[str], None],
) -> dict[tuple[str, str, str], MemoryResult]:
    tasks = [(w, p, name) for w, p in plan for name in ((PACKAGE, MMDET) if w.comparisons[0].baseline else (PACKAGE,))]
    start_forkserver()
    cache = tempfile.mkdtemp(prefix="bench-inductor-dense-")  # warm after the first child: no cold compile each

    def one(task: tuple[Workload, dict[str, Any], str]) -> MemoryResult:
        w, p, name = task
        result = measure(f"dense {w.name}", dict(p), name, str(device), torch.get_num_threads(), timeout, cache)
        log(f"  memory dense {w.name} {w.label(p)} {name}: {result.error or f'{result.extra_mb:,.0f} MB'}")
        return result

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = list(pool.map(one, tasks))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {(w.name, w.label(p), name): r for (w, p, name), r in zip(tasks, results, strict=True)}


def _host(workload: Workload, params: dict[str, Any], device: torch.device, rounds: int) -> tuple[dict, float, dict]:
    case = workload.build(host_params(params), device)
    names = list(case.candidates)
    timing = time_interleaved(case, names, device, max_rounds=rounds, min_rounds=rounds, budget_s=0.0, warmup=2)
    ms = {n: 1e3 * timing.median(n) for n in names}
    ratio = quartiles(timing.ratios(PACKAGE, MMDET))[1] if MMDET in names else math.nan
    return ms, ratio, {n: count_ops(case, n)[0] for n in names}


def dense_rows(
    device: torch.device, quick: bool, rounds: int | None, jobs: int, memory_timeout: float, log: Callable[[str], None]
) -> list[DenseRow]:
    """Measure every dense preset at its sizes (``quick``: one tiny size) on ``device``."""
    plan = [(w, dict(p)) for w in DENSE for p in (w.quick if quick else w.full)]
    log(f"dense presets on {device}: memory, {len(plan)} preset sizes")
    memory = _memory(plan, device, jobs, memory_timeout, log)
    max_rounds, min_rounds = (rounds, rounds) if rounds else ((3, 2) if quick else (7, 3))
    rows = []
    for workload, params in plan:
        size = dense_label(params)
        case = workload.build(params, device)
        names = list(case.candidates)
        log(f"time dense {workload.name} {size} on {device}: {', '.join(names)}")
        timing = time_interleaved(case, names, device, max_rounds, min_rounds, workload.budget_s)
        row = DenseRow(
            workload.name,
            size,
            str(device),
            {n: 1e3 * timing.median(n) for n in names},
            rounds=len(timing.rounds[PACKAGE]),
        )
        if MMDET in names:
            row.ratio = quartiles(timing.ratios(PACKAGE, MMDET))
            row.value_diff = _value_diff(case)
        row.ops = {n: count_ops(case, n) for n in names}
        row.memory = {n: memory[(workload.name, size, n)] for n in names}
        del case
        gc.collect()
        fresh = workload.build(params, device)
        row.stages = {n: b for n in names if (b := breakdown(fresh, n, device, calls=2)) is not None}
        del fresh
        gc.collect()
        row.host_ms, row.host_ratio, row.host_ops = _host(workload, params, device, 3 if quick else 7)
        log(f"  ratio {row.ratio[1]:.2f}, ops {row.ops}, host ms {row.host_ms}")
        rows.append(row)
    return rows


def _num(v: float, digits: int = 0) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:,.{digits}f}"


def _pair(row: DenseRow, values: dict[str, Any], fmt: Callable[[Any], str]) -> str:
    return " / ".join(fmt(values[n]) for n in (PACKAGE, MMDET) if n in values)


def _mem(m: MemoryResult) -> str:
    return "error" if m.error else _num(m.extra_mb)


def render_dense(rows: list[DenseRow]) -> list[str]:
    """Markdown: the comparison table and the time breakdown of each device."""
    out: list[str] = []
    for device in dict.fromkeys(r.device for r in rows):
        out += [f"## {TITLE} ({device})", ""]
        out += [
            "| preset | size | package ms | MMDetection ms | time ratio [IQR] (rounds) | ≤ 0.5 | aten ops pkg / mmdet "
            "| host reads pkg / mmdet | host ms at 128² pkg / mmdet (ratio) | ops at 128² pkg / mmdet "
            "| peak extra MB pkg / mmdet | Δ value |",
            "|---|---|--:|--:|---|---|--:|--:|--:|--:|--:|--:|",
        ]
        for r in (r for r in rows if r.device == device):
            q1, med, q3 = r.ratio
            ratio = f"{med:.2f} [{q1:.2f}–{q3:.2f}] ({r.rounds})" if not math.isnan(med) else "–"
            met = "" if math.isnan(med) else ("yes" if med <= 0.5 else "**no**")
            host = _pair(r, r.host_ms, lambda v: _num(v, 1))
            host += f" ({r.host_ratio:.2f})" if not math.isnan(r.host_ratio) else ""
            out.append(
                f"| {r.preset} | {r.size} | {_num(r.ms[PACKAGE], 1)} | {_num(r.ms.get(MMDET, math.nan), 1)} | {ratio} "
                f"| {met} | {_pair(r, r.ops, lambda v: f'{v[0]:,}')} | {_pair(r, r.ops, lambda v: str(v[1]))} | {host} "
                f"| {_pair(r, r.host_ops, lambda v: f'{v:,}')} | {_pair(r, r.memory, _mem)} "
                f"| {'–' if r.value_diff is None else f'{r.value_diff:.1e}'} |"
            )
        out += ["", f"## Where the dense presets' time goes ({device})", ""]
        out += [
            "| preset | size | candidate | forward ms | of which (ms) | rest of forward ms | backward ms |",
            "|---|---|---|--:|---|--:|--:|",
        ]
        for r in (r for r in rows if r.device == device):
            for name, b in r.stages.items():
                stages = " · ".join(f"{k} {v:,.1f}" for k, v in b.stages.items())
                out.append(
                    f"| {r.preset} | {r.size} | {name} | {b.forward_ms:,.1f} | {stages} | {b.rest_ms:,.1f} "
                    f"| {b.backward_ms:,.1f} |"
                )
        out.append("")
    return out


def selected(args: argparse.Namespace) -> bool:
    """Whether ``python -m benchmarks.run`` runs this section: no ``--only``, or an ``--only`` containing ``dense``."""
    return not args.only or any("dense" in s.lower() for s in args.only)

"""Machine description and the Markdown tables of ``RESULTS.md``."""

from __future__ import annotations

import hashlib
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from benchmarks.breakdown import Breakdown
from benchmarks.memory import MemoryResult
from benchmarks.workloads import Comparison

__all__ = ["Row", "StageRow", "machine_info", "render"]

REPO = Path(__file__).resolve().parent.parent
GROUP_TITLES = {
    "classification": "Classification losses: package vs composite formula and vs the native BCE floor",
    "box": "Box-regression losses: package vs composite formula",
    "netspresso": "Detector criteria vs NetsPresso Trainer 1.4.1's own losses",
    "criteria": "MMDetection-style criteria at the RetinaNet scale (no baseline)",
    "yolo": "Task-aligned YOLO criterion vs ultralytics 8.4 and NetsPresso Trainer 1.4.1",
}


@dataclass
class Row:
    """One comparison of one workload size on one device, with everything measured for it."""

    workload: str
    group: str
    size: str
    device: str
    comparison: Comparison
    candidate_ms: float
    baseline_ms: float = math.nan
    ratio: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    rounds: int = 0
    candidate_mem: MemoryResult = field(default_factory=MemoryResult)
    baseline_mem: MemoryResult | None = None
    candidate_first_s: float = math.nan
    value_diff: float | None = None
    note: str = ""

    @property
    def memory_ratio(self) -> float:
        if self.baseline_mem is None or self.baseline_mem.error or self.candidate_mem.error:
            return math.nan
        return self.candidate_mem.extra_mb / self.baseline_mem.extra_mb if self.baseline_mem.extra_mb > 0 else math.nan


@dataclass
class StageRow:
    """Breakdown of one criterion candidate."""

    workload: str
    size: str
    device: str
    candidate: str
    breakdown: Breakdown
    memory: MemoryResult


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() if out.returncode == 0 else "?"


def _proc_field(path: str, key: str) -> str:
    """The value of the first ``key: value`` line of a ``/proc`` file ("" when absent)."""
    return next((line.split(":", 1)[1].strip() for line in _read(path).splitlines() if line.startswith(key)), "")


def machine_info() -> dict[str, str]:
    """CPU model, cores, memory, library versions, git state and the fused kernels' content hash."""
    kernels = sorted((REPO / "lightning_losses" / "functional" / "kernels").glob("*.py"))
    digest = hashlib.sha256()
    for path in kernels:
        digest.update(path.read_bytes())
    fused_hash = digest.hexdigest()[:12] if kernels else "missing"
    changed = _git("status", "--porcelain", "--", "lightning_losses") not in ("", "?")
    return {
        "CPU": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cores": f"{os.cpu_count()} logical ({len(os.sched_getaffinity(0))} usable)",
        "memory": _proc_field("/proc/meminfo", "MemTotal"),
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "torchmetrics": _version("torchmetrics"),
        "lightning": _version("lightning"),
        "git": _git("rev-parse", "--short", "HEAD")
        + (" + uncommitted changes in lightning_losses/" if changed else ""),
        "kernels sha256": fused_hash,
        "LIGHTNING_LOSSES_COMPILE": os.environ.get("LIGHTNING_LOSSES_COMPILE", "unset (auto)"),
    }


def _num(value: float, digits: int = 0) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _ratio(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def _met(value: float, target: float | None) -> str:
    if target is None:
        return ""
    if math.isnan(value):
        return "n/a"
    return "yes" if value <= target else "**no**"


def _mem(result: MemoryResult | None) -> str:
    if result is None:
        return "–"
    if result.error:
        return "error"
    return _num(result.extra_mb)


def _target(target: float | None, speedup: bool = False) -> str:
    if target is None:
        return "–"
    if speedup and target < 1:
        return f"≤ {target:.2f} (≥ {1 / target:.0f}× faster)"
    return f"≤ {target:g}"


def _comparison_table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| workload | size | vs | package ms | baseline ms | time ratio [IQR] (rounds) | target | met "
        "| package MB | baseline MB | memory ratio | target | met | Δ value |",
        "|---|---|---|--:|--:|---|---|---|--:|--:|--:|---|---|--:|",
    ]
    for r in rows:
        c = r.comparison
        q1, med, q3 = r.ratio
        time_cell = f"{med:.2f} [{q1:.2f}–{q3:.2f}] ({r.rounds})" if not math.isnan(med) else "–"
        if c.mem_limit_mb is not None:
            mem_ratio, mem_target = "–", f"pkg < {c.mem_limit_mb:,.0f} MB"
            extra = r.candidate_mem.extra_mb if not r.candidate_mem.error else math.nan
            mem_met = _met(extra, c.mem_limit_mb)
        else:
            mem_ratio, mem_target, mem_met = (
                _ratio(r.memory_ratio),
                _target(c.mem_target),
                _met(r.memory_ratio, c.mem_target),
            )
        value = "–" if r.value_diff is None else f"{r.value_diff:.1e}"
        time_target = _target(c.time_target, speedup=c.baseline == "netspresso")
        lines.append(
            f"| {r.workload} | {r.size} | {c.baseline or '–'} | {_num(r.candidate_ms, 1)} | {_num(r.baseline_ms, 1)} "
            f"| {time_cell} | {time_target} | {_met(med, c.time_target)} "
            f"| {_mem(r.candidate_mem)} | {_mem(r.baseline_mem)} | {mem_ratio} | {mem_target} | {mem_met} | {value} |"
        )
    return lines


def _absolute_table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| criterion | size | median ms [IQR] (rounds) | peak extra MB | forward peak MB |",
        "|---|---|--:|--:|--:|",
    ]
    for r in rows:
        mem = r.candidate_mem
        forward = "error" if mem.error else _num(mem.forward_extra_mb)
        q1, _, q3 = r.ratio
        lines.append(
            f"| {r.workload} | {r.size} | {_num(r.candidate_ms, 1)} [{_num(q1, 1)}–{_num(q3, 1)}] ({r.rounds}) "
            f"| {_mem(mem)} | {forward} |"
        )
    return lines


def _warmup_table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| workload | size | 1st call, fresh process, empty compile cache (s) | 2nd call there (s) "
        "| 1st call in the timing process (s) | median (s) |",
        "|---|---|--:|--:|--:|--:|",
    ]
    seen = set()
    for r in rows:
        key = (r.workload, r.size, r.device)
        if key in seen:
            continue
        seen.add(key)
        m = r.candidate_mem
        lines.append(
            f"| {r.workload} | {r.size} | {_num(m.first_call_s, 2)} | {_num(m.second_call_s, 2)} "
            f"| {_num(r.candidate_first_s, 2)} | {_num(r.candidate_ms / 1e3, 2)} |"
        )
    return lines


def _stage_table(rows: Sequence[StageRow]) -> list[str]:
    lines = [
        "| criterion | size | candidate | forward ms | of which (ms) | rest of forward ms | backward ms "
        "| forward peak MB | fwd+bwd peak MB |",
        "|---|---|---|--:|---|--:|--:|--:|--:|",
    ]
    for s in rows:
        b = s.breakdown
        stages = " · ".join(f"{k} {v:,.0f}" for k, v in b.stages.items())
        forward_peak = "error" if s.memory.error else _num(s.memory.forward_extra_mb)
        lines.append(
            f"| {s.workload} | {s.size} | {s.candidate} | {b.forward_ms:,.0f} | {stages} | {b.rest_ms:,.0f} "
            f"| {b.backward_ms:,.0f} | {forward_peak} | {_mem(s.memory)} |"
        )
    return lines


def render(
    header: dict[str, str],
    rows: Sequence[Row],
    stages: Sequence[StageRow],
    notes: Sequence[str],
    method: str,
) -> str:
    """The whole ``RESULTS.md``."""
    out = ["# Benchmark results", "", "Generated by `python -m benchmarks.run`; do not edit by hand.", ""]
    out += [f"- **{k}**: {v}" for k, v in header.items()]
    out += ["", "## Method", "", method.strip(), ""]
    for device in dict.fromkeys(r.device for r in rows):
        device_rows = [r for r in rows if r.device == device]
        for group, title in GROUP_TITLES.items():
            group_rows = [r for r in device_rows if r.group == group]
            if not group_rows:
                continue
            out += [f"## {title} ({device})", ""]
            out += _absolute_table(group_rows) if group == "criteria" else _comparison_table(group_rows)
            out.append("")
        device_stages = [s for s in stages if s.device == device]
        if device_stages:
            out += [f"## Where the criteria's time and memory go ({device})", ""]
            out += _stage_table(device_stages)
            out.append("")
        package_rows = [r for r in device_rows if r.comparison.candidate == "package"]
        out += [f"## Warm-up and compilation, package ({device})", ""]
        out += _warmup_table(package_rows)
        out.append("")
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)

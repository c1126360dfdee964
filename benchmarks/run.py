"""Run the performance benchmarks of ``lightning_losses`` and write ``benchmarks/RESULTS.md``.

    python -m benchmarks.run                 # full suite (≈ 15 min on 2 cores)
    python -m benchmarks.run --quick         # smaller sizes, fewer rounds (≈ 1 min); a smoke test
    python -m benchmarks.run --only Focal --out /tmp/focal.md

(``python benchmarks/run.py`` works too.)

Two phases per device (CPU, and CUDA when available):

1. memory: every candidate of every workload size in a process of its own (:mod:`benchmarks.memory`),
   ``--jobs`` at a time (peak memory is per process, so running two at once does not disturb the figures);
2. time: in this process, the candidates of one workload alternate round by round (:mod:`benchmarks.timing`),
   and each table row reports the median of the per-round ratios; criteria then get a stage breakdown
   (:mod:`benchmarks.breakdown`).

NetsPresso rows need ``benchmarks/setup_baselines.sh`` first (or ``--vendor DIR``); without it they are
skipped with a note, and every other row still runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# libgomp spin-waits at every parallel region by default. On a shared 2-core VM the spinning thread holds
# the core its partner needs: a 20k×80 focal loss forward + backward took 0.56 s instead of 25 ms (20 ms
# on one thread), so the figures counted parallel regions, not work. Passive waiting removes that
# artefact. It must be set before torch loads libgomp; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if not __package__:  # run as a script (python benchmarks/run.py): make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import yolov8
from benchmarks.baselines import VENDOR, VENDOR_ENV, load_netspresso
from benchmarks.breakdown import breakdown
from benchmarks.collectives import collectives_section
from benchmarks.dense_sizes import dense_rows, render_dense
from benchmarks.dense_sizes import selected as dense_selected
from benchmarks.memory import MemoryResult, measure, start_forkserver
from benchmarks.report import Row, StageRow, machine_info, render
from benchmarks.timing import quartiles, thread_check, time_interleaved
from benchmarks.workloads import WORKLOADS, Workload

HERE = Path(__file__).resolve().parent
METHOD = """
Every figure is one forward **and** backward in float32 (`torch.autograd.grad` of the scalar loss
with respect to the inputs), on the CPU with `torch.set_num_threads({threads})` and
`OMP_WAIT_POLICY={wait_policy}` (libgomp's default spin-waiting turns every parallel region into a wait for a
descheduled thread on a shared machine; the contention check above shows how busy the cores were).

- **Time**: after warm-up steps (where `torch.compile` compiles), the candidates of a workload run
  back to back in every round, the order rotating each round; "ms" is the median over rounds, the
  ratio is the median of the per-round ratios package / baseline, with its interquartile range.
  {rounds}
- **Memory**: each candidate runs in a fresh process with `MALLOC_MMAP_THRESHOLD_=131072` (freed tensors
  go back to the OS) and its own empty inductor cache. After two warm-up steps it reads
  `VmRSS`, resets the high-water mark (`/proc/self/clear_refs` ← 5), runs one step and reports
  peak extra = `VmHWM` − `VmRSS` before (inputs and weights are allocated before the reset; the
  gradient is part of the extra). "forward peak" is `VmHWM` read between forward and backward.
  On CUDA: `torch.cuda.max_memory_allocated` − `memory_allocated` before.
- **Δ value**: |package − baseline| / |baseline| of the loss values on the same inputs (the floor is a
  different loss and gets none).
- Composite baselines are written in `benchmarks/composites.py` after MMDetection's pure-PyTorch
  paths (torchvision's for `SigmoidFocalLoss`); NetsPresso's are its own `yolox_loss` / `retinanet_loss`
  (targets deep-copied per call, since `yolox_loss` rewrites them). The floor is one
  `binary_cross_entropy_with_logits` on the same logits with a precomputed dense target.
- MB are MiB. No timing assertion exists in any test: these tables are the only verdict.
"""


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (≈ 1 min); a smoke test")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="Markdown file to write")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CPU, plus CUDA when available"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--jobs", type=int, default=2, help="memory-measuring processes run at once")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run workloads whose name contains this ('ddp': the DDP fit; 'dense': every dense preset vs MMDetection)",
    )
    parser.add_argument("--memory-timeout", type=float, default=900.0, help="seconds per memory process")
    parser.add_argument(
        "--vendor", type=Path, default=VENDOR, help="folder holding NetsPresso Trainer (setup_baselines.sh fills it)"
    )
    parser.add_argument("--no-ddp", action="store_true", help="leave out the 2-rank DDP fit (its own ≈ 20 s)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds per workload size (default 3–5 with --quick, else 5–15)"
    )
    return parser.parse_args(argv)


def _devices(choice: str) -> list[torch.device]:
    if choice == "cpu":
        return [torch.device("cpu")]
    if choice == "cuda":
        return [torch.device("cuda")]
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _candidates(workload: Workload, available: set[str]) -> list[str]:
    names = []
    for c in workload.comparisons:
        for name in (c.candidate, c.baseline):
            if name is not None and name in available and name not in names:
                names.append(name)
    return names


def _memory_phase(
    plan: list[tuple[Workload, dict[str, Any]]], available: set[str], device: torch.device, args: argparse.Namespace
) -> dict[tuple[str, str, str], MemoryResult]:
    tasks = [(w, p, name) for w, p in plan for name in _candidates(w, available)]
    _log(f"memory on {device}: {len(tasks)} processes, {args.jobs} at a time")
    start_forkserver()

    def one(task: tuple[Workload, dict[str, Any], str]) -> MemoryResult:
        w, p, name = task
        result = measure(w.name, dict(p), name, str(device), args.threads, args.memory_timeout)
        status = result.error or f"{result.extra_mb:,.0f} MB (1st call {result.first_call_s:.1f} s)"
        _log(f"  memory {w.name} {w.label(p)} {name}: {status}")
        return result

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, tasks))
    return {(w.name, w.label(p), name): r for (w, p, name), r in zip(tasks, results, strict=True)}


def _value_diff(case: Any, candidate: str, baseline: str) -> float:
    with torch.no_grad():
        a = float(case.candidates[candidate]())
        b = float(case.candidates[baseline]())
    return abs(a - b) / max(abs(b), 1e-12)


def _time_workload(
    workload: Workload,
    params: dict[str, Any],
    device: torch.device,
    args: argparse.Namespace,
    memory: dict[tuple[str, str, str], MemoryResult],
    notes: list[str],
) -> tuple[list[Row], list[StageRow]]:
    size = workload.label(params)
    case = workload.build(params, device)
    notes.extend(f"{workload.name} {size}: {n}" for n in case.notes)
    names = [n for n in _candidates(workload, set(case.candidates)) if n in case.candidates]
    max_rounds, min_rounds, budget = (5, 3, 2.0) if args.quick else (15, 5, workload.budget_s)
    if args.rounds is not None:
        max_rounds = min_rounds = max(1, args.rounds)
    _log(f"time {workload.name} {size} on {device}: {', '.join(names)}")
    timing = time_interleaved(case, names, device, max_rounds, min_rounds, budget)
    rows = []
    for c in workload.comparisons:
        if c.candidate not in case.candidates:
            continue
        row = Row(
            workload.name,
            workload.group,
            size,
            str(device),
            c,
            1e3 * timing.median(c.candidate),
            rounds=len(timing.rounds[c.candidate]),
            candidate_mem=memory.get((workload.name, size, c.candidate), MemoryResult(error="not measured")),
            candidate_first_s=timing.first_call_s[c.candidate],
        )
        if c.baseline is None:
            row.ratio = tuple(1e3 * v for v in quartiles(timing.rounds[c.candidate]))  # type: ignore[assignment]
        elif c.baseline in case.candidates:
            row.baseline_ms = 1e3 * timing.median(c.baseline)
            row.ratio = quartiles(timing.ratios(c.candidate, c.baseline))
            row.baseline_mem = memory.get((workload.name, size, c.baseline), MemoryResult(error="not measured"))
            if c.check_values:
                row.value_diff = _value_diff(case, c.candidate, c.baseline)
        else:
            row.note = f"{c.baseline} unavailable"
            notes.append(f"{workload.name} {size}: row vs {c.baseline} skipped ({c.baseline} unavailable)")
        rows.append(row)
        versus = f", vs {c.baseline}: " + (row.note or f"ratio {row.ratio[1]:.3g}") if c.baseline else ""
        _log(f"  {c.candidate} {row.candidate_ms:,.1f} ms{versus}")
    stages = []
    if workload.group in ("netspresso", "criteria"):
        del case
        gc.collect()
        fresh = workload.build(params, device)
        for name in names:
            b = breakdown(fresh, name, device, calls=2 if args.quick else 3)
            if b is not None:
                mem = memory.get((workload.name, size, name), MemoryResult(error="not measured"))
                stages.append(StageRow(workload.name, size, str(device), name, b, mem))
    return rows, stages


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    load_start = os.getloadavg()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-main-")
    torch.set_num_threads(args.threads)
    check_start = thread_check(args.threads)
    machine = machine_info()
    only = [s for s in args.only if s.lower() != "dense"]
    selected = [w for w in WORKLOADS if not args.only or any(s.lower() in w.name.lower() for s in only)]
    plan = [(w, dict(p)) for w in selected for p in (w.quick if args.quick else w.full)]
    os.environ[VENDOR_ENV] = str(args.vendor.resolve())  # the workloads and the memory children read it
    ns = load_netspresso()
    available = {"package", "composite", "floor"} | (set() if isinstance(ns, str) else {"netspresso"})
    available |= {yolov8.ULTRALYTICS} if yolov8.ultralytics_vendored() else set()
    notes: list[str] = []
    if isinstance(ns, str):
        notes.append(f"NetsPresso rows skipped: {ns}")
    rows: list[Row] = []
    stages: list[StageRow] = []
    dense = []
    loads = []
    for device in _devices(args.device):
        memory = _memory_phase(plan, available, device, args)
        notes += [f"memory of {' '.join(key)} on {device}: {r.error}" for key, r in memory.items() if r.error]
        loads.append(f"{os.getloadavg()[0]:.2f} after the memory phase on {device}")
        for workload, params in plan:
            r, s = _time_workload(workload, params, device, args, memory, notes)
            rows += r
            stages += s
            gc.collect()
        if dense_selected(args):
            dense += dense_rows(device, args.quick, args.rounds, args.jobs, args.memory_timeout, _log)
    run_ddp = not args.no_ddp and (not args.only or any("ddp" in s.lower() for s in args.only))
    ddp = collectives_section() if run_ddp else []
    load_end = os.getloadavg()
    check_end = thread_check(args.threads)
    changed = [k for k, v in machine_info().items() if k in ("git", "kernels sha256") and v != machine[k]]
    if changed:
        notes.append(f"{' and '.join(changed)} changed during the run: the figures may mix two versions")
    elapsed = time.perf_counter() - started
    header = {
        "date": date,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "mode": "quick" if args.quick else "full",
        **machine,
        "NetsPresso Trainer": ns if isinstance(ns, str) else f"{ns.version} (vendored in benchmarks/_vendor)",
        "torch threads": str(args.threads),
        "load average (1/5/15 min) at start": " / ".join(f"{v:.2f}" for v in load_start),
        "load average during": "; ".join(loads),
        "load average at end": " / ".join(f"{v:.2f}" for v in load_end),
        "contention check (BCE fwd+bwd, 20k×80) at start": check_start,
        "contention check at end": check_end,
        "total runtime": f"{elapsed / 60:.1f} min",
    }
    rounds = "Rounds: 3–5, ≈ 2 s per workload (--quick)." if args.quick else "Rounds: 5–15 per workload size."
    if args.rounds is not None:
        rounds = f"Rounds: {max(1, args.rounds)} per workload size (--rounds)."
    text = render(
        header,
        rows,
        stages,
        notes,
        METHOD.format(threads=args.threads, rounds=rounds, wait_policy=os.environ["OMP_WAIT_POLICY"]),
    )
    if dense:
        text = text.rstrip("\n") + "\n\n" + "\n".join(render_dense(dense))
    if ddp:
        text = text.rstrip("\n") + "\n\n" + "\n".join(ddp)
    args.out.write_text(text)
    print(text)
    _log(f"wrote {args.out} in {elapsed / 60:.1f} min")
    if any(math.isnan(r.candidate_ms) for r in rows) or any(math.isnan(r.ms["package"]) for r in dense):
        sys.exit(1)


if __name__ == "__main__":
    main()

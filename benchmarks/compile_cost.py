"""What compiling the fused kernels costs and from which size it pays: the basis of ``COMPILE_MIN_ELEMENTS``.

Three fresh processes time the first forward + backward of the fused sigmoid focal loss (80 classes, class
labels, a per-row weight, the mean over an ``avg_factor``) with compilation forced on:

- ``cold``: an empty ``TORCHINDUCTOR_CACHE_DIR``: dynamo traces, inductor generates and builds C++.
- ``warm``: the same cache directory again: dynamo traces, inductor loads the built code.
- ``eager``: compilation off, for the first call's own cost.

The compile cost is the first call's time minus the eager first call's. The cold process then times eager
against compiled calls at sizes around the threshold (medians of alternating rounds) and prints, per size,
the saving per call and the calls that repay a cold / warm compilation. Writes ``benchmarks/COMPILE_COST.md``.

    .venv/bin/python -m benchmarks.compile_cost
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = 80
SIZES = (1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 22)  # elements of the (N, 80) logits
FIRST_ROWS = (1 << 18) // CLASSES
ROUNDS = 7


def _loss_step(rows: int):
    import torch

    from lightning_losses import functional as LF

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, CLASSES, generator=g).requires_grad_()
    labels = torch.randint(0, CLASSES + 1, (rows,), generator=g)
    weight = torch.rand(rows, generator=g)
    avg = torch.tensor(float(rows) / 100)

    def step() -> None:
        LF.sigmoid_focal_loss(logits, labels, weight, avg_factor=avg).backward()
        logits.grad = None

    return step


def child(mode: str) -> dict[str, object]:
    """One fresh process: the first call's time, and (cold) eager vs compiled per size."""
    import torch

    from lightning_losses.functional.kernels import set_compile

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    set_compile(mode != "eager")
    step = _loss_step(FIRST_ROWS)
    start = time.perf_counter()
    step()
    result: dict[str, object] = {"first_s": time.perf_counter() - start}
    if mode != "cold":
        return result
    per_size = {}
    for numel in SIZES:
        step = _loss_step(numel // CLASSES)
        times: dict[bool, list[float]] = {False: [], True: []}
        for compiled in (True, False):  # once each to compile (or re-trace a new size class) before timing
            set_compile(compiled)
            step()
        for _ in range(ROUNDS):
            for compiled in (False, True):
                set_compile(compiled)
                start = time.perf_counter()
                step()
                times[compiled].append(time.perf_counter() - start)
        per_size[numel] = {k: statistics.median(v) for k, v in (("eager", times[False]), ("compiled", times[True]))}
    result["per_size"] = per_size
    return result


def _run(mode: str, cache: str) -> dict[str, object]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.compile_cost", "--child", mode],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _repay(cost: float, saving: float) -> str:
    return f"{cost / saving:.0f}" if saving > 0 else "never"


def main() -> None:
    from lightning_losses.functional.kernels import runtime

    with tempfile.TemporaryDirectory() as cache:
        eager = _run("eager", cache)
        cold = _run("cold", cache)
        warm = _run("warm", cache)
    cold_cost = cold["first_s"] - eager["first_s"]
    warm_cost = warm["first_s"] - eager["first_s"]
    lines = [
        "# Compile cost of the fused kernels",
        "",
        "Written by `python -m benchmarks.compile_cost` (CPU, "
        f"{os.environ.get('OMP_NUM_THREADS', '2')} threads): fused sigmoid focal loss, {CLASSES} classes, "
        "forward + backward (one training kernel compiled: the loss and its gradient in one pass).",
        "",
        f"- load average while it ran: {os.getloadavg()[0]:.1f} (other jobs share the cores: compare ratios)",
        f"- first call, eager: {eager['first_s']:.2f} s",
        f"- compile cost, cold inductor cache: {cold_cost:.1f} s",
        f"- compile cost, warm `TORCHINDUCTOR_CACHE_DIR`: {warm_cost:.1f} s",
        f"- cold / warm: {cold_cost / warm_cost:.1f}",
        f"- threshold in use: `COMPILE_MIN_ELEMENTS` = 2^{runtime.COMPILE_MIN_ELEMENTS.bit_length() - 1} elements "
        "(`lightning_losses.functional.kernels.runtime`): where compiled is several times faster than eager and a "
        "cold compilation is repaid within the first few thousand steps of a training run",
        "",
        "| elements | eager ms | compiled ms | compiled / eager | calls to repay cold | calls to repay warm |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for numel, t in cold["per_size"].items():
        saving = t["eager"] - t["compiled"]
        lines.append(
            f"| 2^{int(numel).bit_length() - 1} | {1e3 * t['eager']:.1f} | {1e3 * t['compiled']:.1f} | "
            f"{t['compiled'] / t['eager']:.2f} | {_repay(cold_cost, saving)} | {_repay(warm_cost, saving)} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(__file__).with_name("COMPILE_COST.md").write_text(text)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
    else:
        main()

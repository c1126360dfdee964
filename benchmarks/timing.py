"""Interleaved timing: candidates of one workload alternate within each round, ratios are taken per round.

On a shared, noisy machine the load drifts on the scale of seconds. Timing candidate A for a minute and
then baseline B for a minute compares two different machines; running them back to back in every
round and taking the median of the per-round ratios ``t_A / t_B`` cancels most of that drift. The
order rotates every round (A B, B A, …) so neither candidate always runs on a warm cache after the other.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.workloads import Case, run_step

__all__ = ["Timing", "quartiles", "thread_check", "time_interleaved"]


@dataclass
class Timing:
    """Seconds per round for each candidate (same rounds for all) and the first call of each in this process."""

    rounds: dict[str, list[float]]
    first_call_s: dict[str, float]

    def median(self, name: str) -> float:
        return statistics.median(self.rounds[name])

    def ratios(self, candidate: str, baseline: str) -> list[float]:
        """Per-round ratios ``t_candidate / t_baseline``."""
        return [a / b for a, b in zip(self.rounds[candidate], self.rounds[baseline], strict=True)]


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` (all equal for one value)."""
    if len(values) < 2:
        return (values[0],) * 3
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _timer(case: Case, name: str, sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    run_step(case, name)
    sync()
    return time.perf_counter() - start


def time_interleaved(
    case: Case,
    names: Sequence[str],
    device: torch.device,
    max_rounds: int,
    min_rounds: int,
    budget_s: float,
    warmup: int = 2,
) -> Timing:
    """Warm every candidate up (``warmup`` steps; compilation happens here), then time rounds.

    Rounds stop after ``max_rounds``, or once ``min_rounds`` are done and ``budget_s`` seconds of rounds
    have passed.
    """
    names = list(names)
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    first: dict[str, float] = {}
    for name in names:
        first[name] = _timer(case, name, sync)
        for _ in range(warmup - 1):
            _timer(case, name, sync)
    rounds: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(max_rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            rounds[name].append(_timer(case, name, sync))
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return Timing(rounds, first)


def thread_check(threads: int, repeats: int = 7) -> str:
    """How contended the CPU is: one BCE-with-logits forward + backward on 20k×80 with 1 and ``threads`` threads.

    On an idle machine ``threads`` threads are faster; when other processes hold the cores, every
    parallel region waits for its second thread to be scheduled and the multi-threaded time balloons,
    which inflates every op-heavy candidate (composites, eager kernels) more than a compiled one.
    """
    x = torch.randn(20_000, 80, requires_grad=True)
    target = torch.zeros_like(x)
    medians = []
    for n in (1, threads):
        torch.set_num_threads(n)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.autograd.grad(F.binary_cross_entropy_with_logits(x, target), [x])
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    torch.set_num_threads(threads)
    return f"{1e3 * medians[0]:.1f} ms with 1 thread, {1e3 * medians[1]:.1f} ms with {threads}"

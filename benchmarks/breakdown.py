"""Where a criterion's time goes: forward stages (assignment, each loss term, the rest) and the backward.

The workload's probes name methods (``assigner.assign``, each term's ``forward``, NetsPresso's
``get_assignments`` …); each is wrapped with a timer on the instance, and a stage adds up all of its
calls within one forward (NetsPresso assigns image by image). The probed stages do not nest, so "rest of
forward" (decoding, target building, concatenations) is the forward minus their sum. Run it after the
workload was timed, so compilation is not in these numbers.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.workloads import Case

__all__ = ["Breakdown", "breakdown"]


@dataclass
class Breakdown:
    """Median milliseconds per stage over the calls, in probe order, plus forward, rest and backward."""

    stages: dict[str, float]
    forward_ms: float
    backward_ms: float

    @property
    def rest_ms(self) -> float:
        return self.forward_ms - sum(self.stages.values())


def _wrap(owner: Any, method: str, sink: list[float], sync: Callable[[], None]) -> None:
    original = getattr(owner, method)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        sync()
        start = time.perf_counter()
        result = original(*args, **kwargs)
        sync()
        sink.append(time.perf_counter() - start)
        return result

    setattr(owner, method, timed)


def breakdown(case: Case, name: str, device: torch.device, calls: int) -> Breakdown | None:
    """Time ``calls`` steps of candidate ``name`` of a freshly built ``case`` (its methods get wrapped)."""
    probes = case.probes.get(name)
    if not probes or name not in case.candidates:
        return None
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sinks: dict[str, list[float]] = {}
    for label, owner, method in probes:
        sinks[label] = []
        _wrap(owner, method, sinks[label], sync)
    per_call: dict[str, list[float]] = {label: [] for label in sinks}
    forward, backward = [], []
    fn = case.candidates[name]
    for _ in range(calls):
        for sink in sinks.values():
            sink.clear()
        sync()
        start = time.perf_counter()
        loss = fn()
        sync()
        middle = time.perf_counter()
        torch.autograd.grad(loss, case.leaves, allow_unused=True)
        sync()
        forward.append(middle - start)
        backward.append(time.perf_counter() - middle)
        for label, sink in sinks.items():
            per_call[label].append(sum(sink))
    return Breakdown(
        {label: 1e3 * statistics.median(v) for label, v in per_call.items()},
        1e3 * statistics.median(forward),
        1e3 * statistics.median(backward),
    )

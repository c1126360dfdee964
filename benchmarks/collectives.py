"""Collectives of a real 2-rank CPU fit: per training step and at the epoch-end metric sync.

Runs ``tests/scripts/ddp_fit.py`` (tiny YOLOX, ``ddp_spawn`` on gloo, ranks on different data), which
wraps every ``torch.distributed`` collective and records what each rank called during each training
step and after the last one, and turns its per-rank JSON into a Markdown section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

__all__ = ["collectives_section"]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "tests.scripts.ddp_fit"  # run with -m from the repository root
LOGGED_METRICS = 5  # loss_bbox, loss_obj, loss_cls, loss_l1 and the total
STATES = 2  # loss_sum and num_calls


def _format(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "none"


def collectives_section(timeout: float = 600.0) -> list[str]:
    """Markdown lines: a table per rank and the verdict against the targets."""
    lines = ["## Collectives under DDP: a 2-rank CPU fit (gloo, ranks on different data)", ""]
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as out:
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": pythonpath}
        proc = subprocess.run(
            [sys.executable, "-m", SCRIPT, out], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
        )
        if proc.returncode != 0:
            return [*lines, f"The fit failed (exit {proc.returncode}): `{proc.stderr.strip().splitlines()[-1]}`", ""]
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]
    lines += [
        "| rank | training steps | collectives per step (distinct patterns) | epoch-end sync | target | met |",
        "|---|--:|---|---|---|---|",
    ]
    for r, rank in enumerate(ranks):
        patterns = Counter(_format(step) for step in rank["collectives"])
        per_step = "; ".join(f"{p} ×{n}" for p, n in patterns.items())
        epoch_end = rank["epoch_end"]
        met = set(patterns) == {"1 all_reduce"} and epoch_end.get("all_gather") == LOGGED_METRICS * STATES
        lines.append(
            f"| {r} | {len(rank['collectives'])} | {per_step} | {_format(epoch_end)} | "
            f"per step: 1 all_reduce (the criterion), 0 from logging; epoch end: "
            f"{LOGGED_METRICS * STATES} gathers ({LOGGED_METRICS} logged metrics × {STATES} states) | "
            f"{'yes' if met else '**no**'} |"
        )
    lines += [
        "",
        "Every `torch.distributed` collective is wrapped during the fit (`tests/scripts/ddp_fit.py`). The one "
        "all-reduce per step is the YOLOX criterion's stacked normaliser; logging the terms through their "
        "`LossMetric` objects makes none. At the epoch end Lightning computes each logged metric once; "
        "torchmetrics' `gather_all_tensors` puts a barrier before each gather.",
        "",
    ]
    return lines

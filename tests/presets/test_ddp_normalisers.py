"""Normalisers averaged over 2 real gloo ranks: the rank mean of each term equals one process on the union.

Each rank sees two images (5 boxes against 1), so per-rank counts differ; a loss normalised by a
rank-averaged count N̄ gives rank values S_r / N̄ whose mean is (S_0 + S_1) / (2 N̄) = S / N, the
single-process value on all four images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_criteria.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_criteria")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads((out / "single.json").read_text())
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return single, ranks


CASES = [
    ("retinanet", "loss_cls"),
    ("retinanet", "loss_bbox"),
    ("fcos", "loss_cls"),
    ("fcos", "loss_bbox"),
    ("fcos", "loss_centerness"),
    ("atss", "loss_cls"),
    ("atss", "loss_bbox"),
    ("atss", "loss_centerness"),
    ("gfl", "loss_cls"),
    ("gfl", "loss_bbox"),
    ("gfl", "loss_dfl"),
    ("yolox", "loss_bbox"),
    ("yolox", "loss_obj"),
    ("yolox", "loss_cls"),
    ("yolox", "loss_l1"),
]


@pytest.mark.parametrize(("criterion", "term"), CASES)
def test_rank_mean_equals_single_process_on_the_union(results, criterion, term):
    single, ranks = results
    rank_mean = (ranks[0][criterion][term] + ranks[1][criterion][term]) / 2
    assert rank_mean == pytest.approx(single[criterion][term], rel=2e-5, abs=1e-6)


def test_ranks_disagree_locally(results):
    """The ranks really see different data: their own values differ (the test above could fail)."""
    _, ranks = results
    assert ranks[0]["retinanet"]["loss_cls"] != pytest.approx(ranks[1]["retinanet"]["loss_cls"])


def test_one_all_reduce_per_criterion_call(results):
    """Each criterion stacks its normalisers into a single all-reduce per step (5 criteria → 5 calls)."""
    _, ranks = results
    assert ranks[0]["_all_reduce_calls"] == 5
    assert ranks[1]["_all_reduce_calls"] == 5

"""A real 2-process CPU fit (ddp_spawn, gloo, spawned from a script so pytest is not re-run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_fit.py"
TERMS = ("loss_bbox", "loss_obj", "loss_cls", "loss_l1", "loss")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_fit")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("term", TERMS)
def test_logged_epoch_term_is_the_global_mean_over_both_ranks(ranks, term):
    """Hand reference: the plain mean of every step's value on both ranks."""
    values = [row[term] for rank in ranks for row in rank["returned"]]
    expected = sum(values) / len(values)
    for rank in ranks:
        assert rank["logged"][f"train/{term}_epoch"] == pytest.approx(expected, rel=1e-5)


def test_ranks_saw_different_data(ranks):
    local = [sum(r["loss"] for r in rank["returned"]) / len(rank["returned"]) for rank in ranks]
    assert local[0] != pytest.approx(local[1], rel=1e-3)


def test_logging_adds_no_collective_and_the_criterion_exactly_one(ranks):
    """Per training step: one all-reduce (the criterion's stacked normalisers), nothing from logging."""
    for rank in ranks:
        assert rank["collectives"], "no step recorded"
        for step in rank["collectives"]:
            assert step == {"all_reduce": 1}


def test_epoch_end_sync_is_one_gather_per_state_of_each_logged_metric(ranks):
    """After the last step Lightning computes the 5 logged metrics (4 terms and the total): one all_gather for each
    of their 2 states (torchmetrics puts a barrier before each gather), no all-reduce and nothing else."""
    for rank in ranks:
        assert rank["epoch_end"].get("all_gather") == 2 * len(TERMS)
        assert set(rank["epoch_end"]) <= {"all_gather", "barrier"}

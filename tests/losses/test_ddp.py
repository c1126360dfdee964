"""LossMetric.compute() across 2 real gloo ranks equals the global mean computed by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_loss_metric.py"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_compute_is_the_global_mean_over_calls_not_the_mean_of_rank_means(ranks):
    """Rank 0 returns 1, 2, 3 and rank 1 returns 10: the exact mean is 16 / 4 = 4 (rank means give 6)."""
    for result in ranks:
        assert result["l1_compute"] == pytest.approx(4.0)


def test_compute_restores_local_state(ranks):
    """After the synchronised compute each rank keeps accumulating its own sums."""
    assert ranks[0]["l1_local_sum_after_compute"] == pytest.approx(6.0)
    assert ranks[1]["l1_local_sum_after_compute"] == pytest.approx(10.0)
    for result in ranks:
        assert result["l1_local_sum_after_compute"] == result["l1_local_sum_before_compute"]


def test_focal_compute_matches_hand_mean_of_all_ranks_values(ranks):
    values = ranks[0]["focal_values"] + ranks[1]["focal_values"]
    assert len(ranks[0]["focal_values"]) != len(ranks[1]["focal_values"])
    expected = sum(values) / len(values)
    for result in ranks:
        assert result["focal_compute"] == pytest.approx(expected, rel=1e-6)

"""YOLOv8Criterion under real 2-rank DDP (gloo): the gradient DDP averages equals one process's on the whole batch.

Rank 0 holds 11 boxes and rank 1 one box, so their normalisers differ; averaged over ranks (one all-reduce),
each rank's loss is S_r / N̄ and DDP's mean of the gradients is ∇(S_0 + S_1) / (2 N̄) = ∇S / N.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_yolov8.py"
STYLES = ("ultralytics", "netspresso")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_yolov8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads((out / "single.json").read_text())
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return single, ranks


@pytest.mark.parametrize("style", STYLES)
def test_ddp_averaged_gradient_equals_the_full_batch_gradient(results, style):
    single, ranks = results
    for got_0, got_1, want in zip(
        ranks[0][style]["grads"], ranks[1][style]["grads"], single[style]["grads"], strict=True
    ):
        torch.testing.assert_close(torch.tensor(got_0), torch.tensor(want), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(got_1), torch.tensor(want), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("style", STYLES)
def test_rank_mean_of_each_term_equals_the_full_batch_term(results, style):
    single, ranks = results
    for term, want in single[style]["terms"].items():
        assert (ranks[0][style]["terms"][term] + ranks[1][style]["terms"][term]) / 2 == pytest.approx(want, rel=1e-5)


def test_ranks_disagree_locally_and_the_criterion_makes_one_all_reduce(results):
    _, ranks = results
    assert ranks[0]["ultralytics"]["terms"]["loss_bbox"] != pytest.approx(ranks[1]["ultralytics"]["terms"]["loss_bbox"])
    assert all(rank[style]["all_reduce"] == 1 for rank in ranks for style in STYLES)

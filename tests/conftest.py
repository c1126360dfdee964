"""Fixtures shared by the tests, and the hypothesis profiles.

Hypothesis: the ``ci`` profile (the default, so ``make test`` and CI use it) is derandomized: every run
draws the same 25 examples per property, and a failure reproduces. ``HYPOTHESIS_PROFILE=dev`` draws 200
fresh examples per property, for exploring. Neither has a deadline (a loss's first call may warm caches).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", derandomize=True, max_examples=25, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=200, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def single_intra_op_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids oversubscription slowdowns on a busy machine.

    Use it for a whole module with ``pytestmark = pytest.mark.usefixtures("single_intra_op_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ddp_loss_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of 2 real gloo ranks wrote from ``tests/scripts/ddp_loss_metric.py``: one run for the session.

    One subprocess (its two ranks import torch and the package once each): every registered loss is called a
    different number of times per rank, then ``compute()`` synchronises.
    """
    out = tmp_path_factory.mktemp("ddp_loss_metric")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tests.scripts.ddp_loss_metric", str(out)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]

"""Fixtures shared by the tests, and the hypothesis profiles.

Hypothesis: the ``ci`` profile (the default, so ``make test`` and CI use it) is derandomized: every run
draws the same 25 examples per property, and a failure reproduces. ``HYPOTHESIS_PROFILE=dev`` draws 200
fresh examples per property, for exploring. Neither has a deadline (a loss's first call may warm caches).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

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

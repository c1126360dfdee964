"""LossMetric.compute() across 2 real gloo ranks, hand-worked (every loss's exact mean: test_contract.py)."""

from __future__ import annotations

import pytest


def test_compute_is_the_global_mean_over_calls_not_the_mean_of_rank_means(ddp_loss_ranks):
    """Rank 0 returns 1, 2, 3 and rank 1 returns 10: the exact mean is 16 / 4 = 4 (rank means give 6)."""
    for result in ddp_loss_ranks:
        assert result["l1_compute"] == pytest.approx(4.0)


def test_compute_restores_local_state(ddp_loss_ranks):
    """After the synchronised compute each rank keeps accumulating its own sums."""
    assert ddp_loss_ranks[0]["l1_local_sum_after_compute"] == pytest.approx(6.0)
    assert ddp_loss_ranks[1]["l1_local_sum_after_compute"] == pytest.approx(10.0)
    for result in ddp_loss_ranks:
        assert result["l1_local_sum_after_compute"] == result["l1_local_sum_before_compute"]

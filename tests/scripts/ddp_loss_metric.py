"""Two gloo ranks on CPU call loss modules a different number of times; each writes compute() to JSON.

Run: python ddp_loss_metric.py OUT_DIR. Used by tests/losses/test_ddp.py.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_losses import FocalLoss, L1Loss

# Rank 0 makes three calls, rank 1 one call: the global mean differs from the mean of rank means.
L1_VALUES = {0: [1.0, 2.0, 3.0], 1: [10.0]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    l1 = L1Loss()
    for value in L1_VALUES[rank]:
        l1(torch.tensor([value]), torch.zeros(1))
    local_before = l1.loss_sum.item()

    torch.manual_seed(rank)
    focal = FocalLoss()
    focal_values = []
    for _ in range(2 + 3 * rank):
        pred, labels = torch.randn(6, 3), torch.randint(0, 4, (6,))
        focal_values.append(focal(pred, labels).item())

    result = {
        "l1_compute": l1.compute().item(),
        "l1_local_sum_after_compute": l1.loss_sum.item(),
        "l1_local_sum_before_compute": local_before,
        "focal_compute": focal.compute().item(),
        "focal_values": focal_values,
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_worker, args=(2, _free_port(), sys.argv[1]), nprocs=2, join=True)

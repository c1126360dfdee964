"""Two gloo ranks on CPU call every registered loss a different number of times; each writes its values and compute().

Rank ``r`` calls each loss ``2 + 3·r`` times (2 and 5 calls) on inputs from the contract table
(``tests/losses/loss_cases.py``), seeded per rank and call, then calls ``compute()``, the synchronised mean.
Beside them, ``L1Loss`` on hand-picked values: rank 0 returns 1, 2, 3 and rank 1 returns 10, whose exact
mean 16 / 4 = 4 differs from the mean of the rank means (6).

Run from the repository root: ``python -m tests.scripts.ddp_loss_metric OUT_DIR``; it writes ``rank{0,1}.json``.
Used by the ``ddp_loss_ranks`` fixture (``tests/conftest.py``) of tests/losses/test_contract.py and test_ddp.py.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_losses import L1Loss
from lightning_losses.registry import LOSSES
from tests.losses.loss_cases import CASES, TorchDraw, loss_class, registered_names

CALLS = {0: 2, 1: 5}
L1_VALUES = {0: [1.0, 2.0, 3.0], 1: [10.0]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _every_loss(rank: int) -> dict[str, dict[str, Any]]:
    out = {}
    for name in registered_names():
        case = CASES[loss_class(name).__name__]
        loss = LOSSES[name](**case.init)
        values = []
        for call in range(CALLS[rank]):
            pred, target, weight = case.inputs(TorchDraw(1000 * rank + call))
            values.append(float(loss(pred, target, weight)))
        before = [float(loss.loss_sum), float(loss.num_calls)]
        out[name] = {
            "values": values,
            "compute": float(loss.compute()),
            "local_before_compute": before,
            "local_after_compute": [float(loss.loss_sum), float(loss.num_calls)],
        }
    return out


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    l1 = L1Loss()
    for value in L1_VALUES[rank]:
        l1(torch.tensor([value]), torch.zeros(1))
    local_before = l1.loss_sum.item()
    result = {
        "l1_compute": l1.compute().item(),
        "l1_local_sum_after_compute": l1.loss_sum.item(),
        "l1_local_sum_before_compute": local_before,
        "losses": _every_loss(rank),
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(_worker, args=(2, _free_port(), sys.argv[1]), nprocs=2, join=True)

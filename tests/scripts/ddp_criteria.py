"""Two gloo ranks each compute a criterion on half of a batch; rank outputs go to JSON.

Normalisers (num_pos & co.) are averaged over ranks, so the mean over ranks of each rank's loss
equals one process's loss on the whole batch (for terms normalised by a batch-wide count).
Run: python ddp_criteria.py OUT_DIR. Used by tests/presets/test_ddp_normalisers.py.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_losses import ATSSCriterion, FCOSCriterion, GFLCriterion, RetinaNetCriterion, YOLOXCriterion

NUM_CLASSES = 3
SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def make_batch(seed: int = 0):
    """Four images: the first two go to rank 0 (5 boxes), the last two to rank 1 (1 box)."""
    gen = torch.Generator().manual_seed(seed)

    def boxes(n):
        xy = torch.rand(n, 2, generator=gen) * 80
        wh = 16 + torch.rand(n, 2, generator=gen) * 40
        return {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, NUM_CLASSES, (n,), generator=gen)}

    targets = [boxes(3), boxes(2), boxes(1), boxes(0)]

    def maps(channels, sizes=SIZES):
        return [torch.randn(4, channels, h, w, generator=gen) for h, w in sizes]

    return targets, {
        "retinanet": (maps(9 * NUM_CLASSES), maps(36)),
        "fcos": (maps(NUM_CLASSES), [m.exp() for m in maps(4)], maps(1)),
        "atss": (maps(NUM_CLASSES), maps(4), maps(1)),
        "gfl": (maps(NUM_CLASSES), maps(68)),
        "yolox": ([torch.randn(4, 5 + NUM_CLASSES, h, h, generator=gen) for h in (16, 8, 4)],),
    }


def criteria():
    return {
        "retinanet": RetinaNetCriterion(NUM_CLASSES),
        "fcos": FCOSCriterion(NUM_CLASSES),
        "atss": ATSSCriterion(NUM_CLASSES),
        "gfl": GFLCriterion(NUM_CLASSES),
        "yolox": YOLOXCriterion(NUM_CLASSES),
    }


def run(targets, inputs, part: slice) -> dict[str, dict[str, float]]:
    results = {}
    for name, criterion in criteria().items():
        args = []
        for arg in inputs[name]:
            args.append([m[part] for m in arg])
        out = criterion(*args, targets[part], image_size=(128, 128))
        results[name] = {term: value.item() for term, value in out.items()}
    return results


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    targets, inputs = make_batch()
    calls = []
    original = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    dist.all_reduce = counting_all_reduce
    results = run(targets, inputs, slice(2 * rank, 2 * rank + 2))
    dist.all_reduce = original
    results["_all_reduce_calls"] = len(calls)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    out = sys.argv[1]
    targets, inputs = make_batch()
    Path(out, "single.json").write_text(json.dumps(run(targets, inputs, slice(0, 4))))
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)

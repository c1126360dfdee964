"""Two gloo ranks train one step of a shared 1×1 head with YOLOv8Criterion under DDP, each on half a batch.

Rank 0 sees 11 boxes, rank 1 sees 1 (uneven normalisers). DDP averages the head's gradients over the
ranks; because the criterion averages its normaliser over ranks, that average equals the gradient of one
process on the whole batch. Both styles; the head's gradients and the criterion's all-reduce count go to JSON.
Run: python ddp_yolov8.py OUT_DIR. Used by tests/presets/test_yolov8_ddp.py.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_losses.presets.yolov8 import YOLOv8Criterion

NUM_CLASSES, REG_MAX, FEATURES = 3, 8, 6
STRIDES = (8, 16, 32)
SIDE = 128
STYLES = ("ultralytics", "netspresso")


def make_batch(seed: int = 0):
    """Four images' features and targets: images 0-1 (rank 0) hold 5 + 6 boxes, images 2-3 (rank 1) 1 + 0."""
    gen = torch.Generator().manual_seed(seed)
    features = [torch.randn(4, FEATURES, SIDE // s, SIDE // s, generator=gen) for s in STRIDES]
    targets = []
    for n in (5, 6, 1, 0):
        wh = 12 + torch.rand(n, 2, generator=gen) * 60
        xy = torch.rand(n, 2, generator=gen) * (SIDE - wh)
        targets.append(
            {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, NUM_CLASSES, (n,), generator=gen)}
        )
    return features, targets


def make_head() -> nn.Module:
    torch.manual_seed(1)
    return nn.Conv2d(FEATURES, 4 * REG_MAX + NUM_CLASSES, 1)


def step(head: nn.Module, style: str, features, targets, part: slice) -> dict[str, object]:
    criterion = YOLOv8Criterion(NUM_CLASSES, STRIDES, reg_max=REG_MAX, style=style)
    out = criterion([head(f[part]) for f in features], targets[part])
    head.zero_grad()
    sum(out.values()).backward()
    return {
        "terms": {k: v.item() for k, v in out.items()},
        "grads": [p.grad.flatten().tolist() for p in head.parameters()],
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    features, targets = make_batch()
    results: dict[str, object] = {}
    for style in STYLES:
        head = nn.parallel.DistributedDataParallel(make_head())
        calls = []
        original = dist.all_reduce

        def counting(*args, calls=calls, original=original, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        criterion = YOLOv8Criterion(NUM_CLASSES, STRIDES, reg_max=REG_MAX, style=style)
        dist.all_reduce = counting
        criterion([head.module(f[2 * rank : 2 * rank + 2]) for f in features], targets[2 * rank : 2 * rank + 2])
        dist.all_reduce = original
        results[style] = {
            **step(head, style, features, targets, slice(2 * rank, 2 * rank + 2)),
            "all_reduce": len(calls),
        }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    out = sys.argv[1]
    features, targets = make_batch()
    single = {style: step(make_head(), style, features, targets, slice(0, 4)) for style in STYLES}
    Path(out, "single.json").write_text(json.dumps(single))
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)

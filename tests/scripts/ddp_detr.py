"""Two gloo ranks train one step of a toy query model under DistributedDataParallel with DETRCriterion; the
averaged parameter gradients go to JSON beside one process's gradients on the whole batch.

Rank 0 sees images with 3 and 2 boxes, rank 1 images with 1 and 0 boxes. The number of boxes is averaged over
the ranks (one all-reduce per criterion call), so the gradient DDP averages equals the single-process gradient
on the union. Run: python ddp_detr.py OUT_DIR. Used by tests/presets/test_detr.py.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lightning_losses.presets.detr import DETRCriterion

CLASSES, QUERIES, GROUPS, LAYERS = 3, 6, 2, 2
SIZE = (64, 96)
COUNTS = (3, 2, 1, 0)
CLASSIFICATIONS = ("vfl", "focal", "ce")


class ToyQueries(nn.Module):
    """Fixed per-image query features moved by shared parameters: each set = (features @ W + b, sigmoid boxes)."""

    def __init__(self, columns: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.cls = nn.Linear(8, columns)
        self.box = nn.Linear(8, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, features: Tensor, dn_features: Tensor) -> tuple[list[tuple[Tensor, Tensor]], ...]:
        def sets(x: Tensor) -> list[tuple[Tensor, Tensor]]:
            return [(self.cls(f), self.box(f).sigmoid()) for f in x.unbind(0)]

        return sets(features), sets(dn_features)


def make_batch():
    gen = torch.Generator().manual_seed(0)
    targets = []
    for n in COUNTS:
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([60.0, 40.0])
        wh = torch.rand(n, 2, generator=gen) * 25 + 6
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, CLASSES, (n,), generator=gen)})
    biggest = max(COUNTS)
    dn_queries = 2 * biggest * GROUPS
    # sets: final, LAYERS - 1 auxiliary, encoder, LAYERS denoising; features (sets, B, Q, 8)
    features = torch.randn(1 + (LAYERS - 1) + 1, len(COUNTS), QUERIES, 8, generator=gen)
    dn_features = torch.randn(LAYERS, len(COUNTS), dn_queries, 8, generator=gen)
    index = [torch.cat([torch.arange(n) + 2 * biggest * g for g in range(GROUPS)]) for n in COUNTS]
    return targets, features, dn_features, index


def step(model: nn.Module, criterion: DETRCriterion, targets, features, dn_features, index) -> dict[str, float]:
    sets, dn = model(features, dn_features)
    meta = {"dn_positive_idx": index, "dn_num_group": GROUPS}
    out = criterion(
        *sets[0], targets, image_size=SIZE, aux_outputs=sets[1:-1], enc_outputs=sets[-1], dn_outputs=dn, dn_meta=meta
    )
    sum(out.values()).backward()
    return {term: value.item() for term, value in out.items()}


def build(classification: str) -> tuple[nn.Module, DETRCriterion]:
    columns = CLASSES + (classification == "ce")
    criterion = DETRCriterion(
        CLASSES, classification=classification, num_aux_layers=LAYERS - 1, encoder=True, num_dn_layers=LAYERS
    )
    return ToyQueries(columns), criterion


def grads(model: nn.Module) -> dict[str, list[float]]:
    return {name: p.grad.reshape(-1).tolist() for name, p in model.named_parameters()}


def single(out_dir: str) -> None:
    targets, features, dn_features, index = make_batch()
    results = {}
    for classification in CLASSIFICATIONS:
        model, criterion = build(classification)
        terms = step(model, criterion, targets, features, dn_features, index)
        results[classification] = {"terms": terms, "grads": grads(model)}
    Path(out_dir, "single.json").write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    targets, features, dn_features, index = make_batch()
    part = slice(2 * rank, 2 * rank + 2)
    results = {}
    for classification in CLASSIFICATIONS:
        model, criterion = build(classification)
        ddp = DistributedDataParallel(model)
        calls = []
        original = dist.all_reduce

        def counting(*args, _calls=calls, _original=original, **kwargs):
            _calls.append(1)
            return _original(*args, **kwargs)

        sets, dn = ddp(features[:, part], dn_features[:, part])
        meta = {"dn_positive_idx": index[part], "dn_num_group": GROUPS}
        dist.all_reduce = counting
        out = criterion(
            *sets[0],
            targets[part],
            image_size=SIZE,
            aux_outputs=sets[1:-1],
            enc_outputs=sets[-1],
            dn_outputs=dn,
            dn_meta=meta,
        )
        dist.all_reduce = original
        sum(out.values()).backward()
        results[classification] = {
            "terms": {term: value.item() for term, value in out.items()},
            "grads": grads(model),
            "all_reduce_calls": len(calls),
        }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    out = sys.argv[1]
    single(out)
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)

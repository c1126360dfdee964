"""No host sync inside a criterion's forward and backward (issue 13, item 3), counted on CPU.

Reference: the operations a CUDA stream would stall on (``tests/sync_counter.py``): reads of device values,
tensors built from host data, and ops whose output size depends on values. Every preset runs forward +
backward twice on a small realistic batch (two images, one of them without boxes); the first call may fill
per-device caches, the second must count nothing. DETR's matcher is the documented exception: its cost blocks
travel to the host once for scipy and the matches come back once.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses import (
    ATSSCriterion,
    DETRCriterion,
    FCOSCriterion,
    GFLCriterion,
    PIDNetCriterion,
    RetinaNetCriterion,
    YOLOFastestCriterion,
    YOLOv8Criterion,
    YOLOXCriterion,
)
from tests.references.scenes import featmap_sizes, random_maps, random_targets
from tests.sync_counter import SyncCounter

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

SIDE = 128
C = 3
DENSE_STRIDES = (8, 16, 32, 64, 128)


def _targets(seed: int) -> list[dict[str, torch.Tensor]]:
    return random_targets(torch.Generator().manual_seed(seed), (4, 0), C, (SIDE, SIDE), min_size=8.0, max_size=100.0)


def _dense(name: str, style: str | None):
    """Criterion, positional maps and keyword arguments of a dense preset on a 128² batch of two images."""
    gen = torch.Generator().manual_seed(1)
    sizes = featmap_sizes(SIDE, DENSE_STRIDES)
    if name == "retinanet":
        crit = RetinaNetCriterion(C, style=style)
        maps = [random_maps(gen, 2, 9 * C, sizes), random_maps(gen, 2, 9 * 4, sizes, scale=0.3)]
    elif name in ("fcos", "atss"):
        crit = FCOSCriterion(C) if name == "fcos" else ATSSCriterion(C)
        box = random_maps(gen, 2, 4, sizes, scale=0.3, positive=name == "fcos")
        maps = [random_maps(gen, 2, C, sizes), box, random_maps(gen, 2, 1, sizes)]
    else:
        crit = GFLCriterion(C)
        maps = [random_maps(gen, 2, C, sizes), random_maps(gen, 2, 4 * 17, sizes)]
    return crit, maps, {"image_size": (SIDE, SIDE)}


def _yolo(name: str, style: str | None):
    gen = torch.Generator().manual_seed(2)
    if name == "yolox":
        crit = YOLOXCriterion(C, style=style)
        sizes = featmap_sizes(SIDE, (8, 16, 32))
        if style == "mmdet":
            levels = zip(*(random_maps(gen, 2, ch, sizes) for ch in (C, 4, 1)), strict=True)
            return crit, [list(levels)], {"image_size": (SIDE, SIDE)}
        return crit, [random_maps(gen, 2, 5 + C, sizes, scale=0.5)], {"image_size": (SIDE, SIDE)}
    if name == "yolofastest":
        anchors = [[10.0, 14.0, 24.0, 30.0, 40.0, 60.0], [50.0, 40.0, 70.0, 90.0, 110.0, 100.0]]
        crit = YOLOFastestCriterion(C, anchors, strides=(16, 32))
        return crit, [random_maps(gen, 2, 3 * (5 + C), featmap_sizes(SIDE, (16, 32)), scale=0.5)], {}
    crit = YOLOv8Criterion(C, style=style)
    return crit, [random_maps(gen, 2, 4 * 16 + C, featmap_sizes(SIDE, (8, 16, 32)))], {"image_size": (SIDE, SIDE)}


def _pidnet(_: str, __: str | None):
    gen = torch.Generator().manual_seed(3)
    aux, logits = (torch.randn(2, C, 16, 16, generator=gen).requires_grad_() for _ in range(2))
    boundary = (torch.randn(2, 1, 16, 16, generator=gen) * 3).requires_grad_()
    target = torch.randint(0, C, (2, 64, 64), generator=gen)
    target[0, :8] = 255
    return PIDNetCriterion(C), [aux, logits, boundary], {"_target": target}


def _detr(_: str, classification: str | None):
    gen = torch.Generator().manual_seed(4)
    queries, groups = 10, 2

    def pair(q: int) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = torch.cat(
            [torch.rand(2, q, 2, generator=gen) * 0.6 + 0.2, torch.rand(2, q, 2, generator=gen) * 0.3], -1
        )
        return torch.randn(2, q, C, generator=gen).requires_grad_(), boxes.requires_grad_()

    width = 4  # the most boxes of an image
    crit = DETRCriterion(C, classification=classification, num_aux_layers=2, encoder=True, num_dn_layers=1)
    positive = [torch.cat([torch.arange(n) + 2 * width * g for g in range(groups)]) for n in (4, 0)]
    meta = {"dn_positive_idx": positive, "dn_num_group": groups}
    kwargs = {
        "image_size": (SIDE, SIDE),
        "aux_outputs": [pair(queries) for _ in range(2)],
        "enc_outputs": pair(queries),
        "dn_outputs": [pair(2 * width * groups)],
        "dn_meta": meta,
    }
    return crit, list(pair(queries)), kwargs


CASES = {
    "retinanet-mmdet": (_dense, "retinanet", "mmdet"),
    "retinanet-netspresso": (_dense, "retinanet", "netspresso"),
    "fcos": (_dense, "fcos", None),
    "atss": (_dense, "atss", None),
    "gfl": (_dense, "gfl", None),
    "yolox-netspresso": (_yolo, "yolox", "netspresso"),
    "yolox-mmdet": (_yolo, "yolox", "mmdet"),
    "yolofastest": (_yolo, "yolofastest", None),
    "yolov8-ultralytics": (_yolo, "yolov8", "ultralytics"),
    "yolov8-netspresso": (_yolo, "yolov8", "netspresso"),
    "pidnet": (_pidnet, "pidnet", None),
    "detr-vfl": (_detr, "detr", "vfl"),
    "detr-focal": (_detr, "detr", "focal"),
}
# The matcher's one documented round trip: the stacked cost blocks to the host, the matches back.
DETR_ROUND_TRIP = ["Tensor.cpu", "Tensor.numpy", "aten.lift_fresh.default"]


def _step(crit, maps, kwargs, targets) -> SyncCounter:
    kwargs = dict(kwargs)
    target = kwargs.pop("_target", targets)
    leaves = [t for t in _leaves(maps) + _leaves(kwargs) if t.requires_grad]
    with SyncCounter(watch=crit) as counter:
        terms = crit(*maps, target, **kwargs)
        sum(terms.values()).backward()
    assert all(leaf.grad is not None for leaf in leaves)
    assert all(math.isfinite(v.item()) for v in terms.values())
    return counter


def _leaves(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _leaves(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _leaves(v)]
    return []


@pytest.mark.parametrize("case", list(CASES))
def test_second_step_makes_no_host_sync(case):
    build, name, style = CASES[case]
    crit, maps, kwargs = build(name, style)
    if isinstance(crit, YOLOXCriterion):
        crit.set_epoch(None)  # L1 on: every term runs
    _step(crit, maps, kwargs, _targets(0))  # may fill per-device caches
    counter = _step(crit, maps, kwargs, _targets(5))
    syncs = counter.outside("assigners/hungarian.py")
    assert syncs == [], counter.report(syncs)
    if name == "detr":
        assert [s.op for s in counter.syncs] == DETR_ROUND_TRIP, counter.report()


def _no_grad_leaf() -> torch.Tensor:
    return torch.arange(6.0)


SYNCING = {
    "item": (lambda x: x.sum().item(), "Tensor.item"),
    "bool": (lambda x: bool(x.any()), "Tensor.__bool__"),
    "int": (lambda x: int(x[0]), "Tensor.__int__"),
    "tolist": (lambda x: x.tolist(), "Tensor.tolist"),
    "cpu": (lambda x: x.cpu(), "Tensor.cpu"),
    "nonzero": (lambda x: x.nonzero(), "aten.nonzero.default"),
    "where-one-argument": (lambda x: torch.where(x > 2), "aten.nonzero.default"),
    "bool-mask": (lambda x: x[x > 2], "aten.index.Tensor (boolean mask)"),
    "masked-select": (lambda x: x.masked_select(x > 2), "aten.masked_select.default"),
    "python-list": (lambda x: x + torch.tensor([1.0] * 6), "torch.tensor without device="),
    "new-tensor": (lambda x: x.new_tensor([1.0]), "aten.lift_fresh.default"),
    "no-device": (lambda x: x + torch.arange(6), "torch.arange without device="),
    "repeat-interleave": (
        lambda x: torch.arange(6, device=x.device).repeat_interleave(x.long()),
        "aten.repeat_interleave.Tensor (no output_size)",
    ),
    "unique": (lambda x: x.unique(), "aten._unique2.default"),
}
SYNC_FREE = {
    "where": lambda x: torch.where(x > 2, x, 0.0),
    "masked-fill": lambda x: x.masked_fill(x > 2, 0.0),
    "topk": lambda x: x.topk(2),
    "index": lambda x: x[torch.arange(2, device=x.device)],
    "fill-one-value": lambda x: x.clone().index_put_((x > 2,), x.new_zeros(())),
    "sized-repeat": lambda x: torch.arange(6, device=x.device).repeat_interleave(x.long(), output_size=15),
    "shape": lambda x: torch.zeros(len(x), x.shape[0], device=x.device),
}


@pytest.mark.parametrize("name", list(SYNCING))
def test_the_counter_sees_each_kind_of_sync_once_at_its_line(name):
    """Hand-made: each op a GPU would stall on is counted once, at this test's line."""
    step, op = SYNCING[name]
    x = _no_grad_leaf()
    with SyncCounter() as counter:
        step(x)
    assert [s.op for s in counter.syncs] == [op], counter.report()
    assert counter.syncs[0].site.startswith("test_host_syncs.py:")


@pytest.mark.parametrize("name", list(SYNC_FREE))
def test_the_counter_passes_sync_free_ops(name):
    x = _no_grad_leaf()
    with SyncCounter() as counter:
        SYNC_FREE[name](x)
    assert counter.syncs == [], counter.report()


def test_the_counter_names_the_package_line_and_host_held_tensors():
    """A sync inside the package is reported at its file and line; with ``watch``, a tensor a criterion keeps
    outside its parameters and buffers (``Module.to`` leaves it on the host) counts wherever it is used."""

    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = {"scales": torch.tensor([1.0, 2.0])}
            self.register_buffer("moved", torch.ones(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.moved + self.table["scales"].to(x.device)

    holder, x = Holder(), torch.ones(2)
    with SyncCounter(watch=holder) as counter:
        holder(x)
    assert [s.op for s in counter.syncs] == ["aten.add.Tensor of host-held Holder.table['scales']"], counter.report()

    from lightning_losses.assigners.hungarian import HungarianMatcher

    cost = torch.zeros(1, 2, 1)
    with SyncCounter() as counter:
        HungarianMatcher.solve(cost, [1])
    assert [s.op for s in counter.syncs] == DETR_ROUND_TRIP, counter.report()
    assert {s.site.split(":")[0] for s in counter.syncs} == {"assigners/hungarian.py"}, counter.report()

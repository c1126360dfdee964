"""Chunk budgets from the available memory: ``assigners.base.memory_budget`` against its closed form
``min(max(⌊f·A/b⌋, MIN_BUDGET), max(⌊MAX_CHUNK_BYTES/b⌋, MIN_BUDGET))`` (the reading ``A`` patched), its readers,
its argument checks, and every assigner: the chunk count follows the budget, and no budget changes an assignment
(bitwise)."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_losses.assigners import (
    ATSSAssigner,
    MaxIoUAssigner,
    PointAssigner,
    TaskAlignedAssigner,
    atss,
    base,
    max_iou,
    points,
    simota,
    task_aligned,
)
from lightning_losses.assigners.simota import SimOTAAssigner
from lightning_losses.boxes.targets import pad_targets
from lightning_losses.functional.kernels.runtime import set_compile
from tests.references.scenes import random_targets

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

GIB = 1 << 30


def _reading(monkeypatch: pytest.MonkeyPatch, available: int) -> list[torch.device]:
    """Patch the reader to ``available`` bytes; returns the devices it is asked about."""
    asked: list[torch.device] = []

    def fake(device: torch.device) -> int:
        asked.append(device)
        return available

    monkeypatch.setattr(base, "_available_bytes", fake)
    return asked


# --- memory_budget: closed form, clamps, arguments -------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "per_element", "fraction", "expected"),
    [
        (GIB, 32, 1 / 8, 1 << 22),  # 2^30 / 2^3 / 2^5 (ceiling 2^28 / 2^5 = 2^23)
        (GIB, 64, None, 1 << 21),  # the default fraction is 1/8: 2^30 / 2^3 / 2^6
        (10**9, 48, 0.25, 10**9 // 4 // 48),  # 5 208 333, not a power of two (ceiling 5 592 405)
        (10**9, 40.5, 0.2, 4938271),  # ⌊2e8 / 40.5⌋ = ⌊4 938 271.6⌋
        (10**9, 40.5, 0.5, 6628035),  # ⌊5e8 / 40.5⌋ = 12 345 679: cut to 256 MiB / 40.5 B = ⌊6 628 035.96⌋
        (1 << 20, 64, 1 / 8, 1 << 18),  # 2048 elements: raised to the floor, 2^18
        (1 << 50, 1, 1.0, 1 << 28),  # 2^50 elements: cut to the ceiling, 256 MiB of 1 B
        (1 << 50, 2048, 1.0, 1 << 18),  # a ceiling under the floor (2^28 / 2^11 = 2^17): the floor wins
        (0, 8, 1 / 8, 1 << 18),  # nothing available: the floor
    ],
)
def test_budget_is_the_closed_form(monkeypatch, available, per_element, fraction, expected):
    asked = _reading(monkeypatch, available)
    kwargs = {} if fraction is None else {"fraction": fraction}
    assert base.memory_budget("cpu", per_element, **kwargs) == expected
    assert asked == [torch.device("cpu")]


def test_budget_follows_the_reading(monkeypatch):
    """Between the clamps the budget is proportional to the available bytes."""
    budgets = []
    for quarters in (1, 2, 4, 8):  # 1/4 to 2 GiB: 2^19 to 2^22 elements, under the 2^22 ceiling (256 MiB / 64 B)
        _reading(monkeypatch, quarters * GIB // 4)
        budgets.append(base.memory_budget(torch.device("cpu"), 64))
    assert budgets == [GIB // 4 // 8 // 64 * quarters for quarters in (1, 2, 4, 8)]


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, math.nan, math.inf])
def test_bad_fraction_raises(fraction):
    with pytest.raises(ValueError, match="fraction"):
        base.memory_budget("cpu", 8, fraction=fraction)


@pytest.mark.parametrize("per_element", [0, -4, math.nan, math.inf])
def test_bad_bytes_raise(per_element):
    with pytest.raises(ValueError, match="bytes_per_element"):
        base.memory_budget("cpu", per_element)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("bytes_per_element", {"bytes_per_element": True}), ("fraction", {"fraction": "1/8"})]
)
def test_non_numbers_raise_type_error(name, kwargs):
    arguments = {"device": "cpu", "bytes_per_element": 8, **kwargs}
    with pytest.raises(TypeError, match=name):
        base.memory_budget(**arguments)


def test_bad_device_raises():
    with pytest.raises(ValueError, match="device"):
        base.memory_budget("no-such-device", 8)
    with pytest.raises(TypeError, match="device"):
        base.memory_budget(0, 8)


# --- the readers ------------------------------------------------------------------------------------------


def test_cuda_reading_adds_the_allocators_unused_blocks(monkeypatch):
    """free + reserved - allocated, from patched driver and allocator queries (no GPU needed)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 5 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 9 * GIB // 2)
    assert base._available_bytes(torch.device("cuda", 0)) == 3 * GIB // 2
    assert base.memory_budget("cuda:0", 48) == 3 * GIB // 2 // 8 // 48  # 4 194 304, under the ceiling 5 592 405


def test_other_devices_use_the_fallback():
    assert base._available_bytes(torch.device("meta")) == base.FALLBACK_AVAILABLE_BYTES == 2 * GIB
    assert base.memory_budget("meta", 16) == 2 * GIB // 8 // 16


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="no /proc/meminfo")
def test_meminfo_reading_is_memavailable():
    """Parsed independently here: the ``MemAvailable:`` line's kB times 1024 (it moves, so within 10%)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    value, unit = fields["MemAvailable"].split()
    assert unit == "kB"
    got = base._meminfo_available()
    assert got is not None
    assert abs(got - int(value) * 1024) <= 0.1 * int(value) * 1024


def test_host_reading_falls_back_in_order(monkeypatch):
    monkeypatch.setattr(base, "_host_reading", (-math.inf, 0))
    monkeypatch.setattr(base, "_meminfo_available", lambda: None)
    monkeypatch.setattr(base, "_psutil_available", lambda: 7 * GIB)
    assert base._host_available_bytes() == 7 * GIB
    monkeypatch.setattr(base, "_host_reading", (-math.inf, 0))
    monkeypatch.setattr(base, "_psutil_available", lambda: None)
    assert base._host_available_bytes() == base.FALLBACK_AVAILABLE_BYTES


def test_host_reading_is_reused_for_a_second(monkeypatch):
    clock = [100.0]
    reads = []
    monkeypatch.setattr(base, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(base, "_host_reading", (-math.inf, 0))

    def meminfo() -> int:
        reads.append(clock[0])
        return (len(reads) + 1) * GIB

    monkeypatch.setattr(base, "_meminfo_available", meminfo)
    assert base._host_available_bytes() == 2 * GIB
    clock[0] = 100.9
    assert base._host_available_bytes() == 2 * GIB  # reused
    clock[0] = 101.0
    assert base._host_available_bytes() == 3 * GIB  # a second later: read again
    assert reads == [100.0, 101.0]


def test_fixed_budget_is_todays_chunking():
    """An int counts ``per_pair`` elements a triple: ``chunk_budget // (B·G)`` priors == ``chunk_size``'s."""
    for budget in (1, 7, 97, 1 << 24):
        for per_pair in (1, 3, 4, 8):
            for batch, gts in ((1, 1), (2, 5), (3, 0)):
                want = base.chunk_size(batch, gts, 10**6, budget, per_pair)
                got = base.chunk_size(batch, gts, 10**6, base.chunk_budget(budget, torch.device("cpu"), 1, per_pair))
                assert got == want


# --- every assigner: chunk counts follow the budget, assignments do not ----------------------------------


class _OpCount(TorchDispatchMode):
    """Calls of one aten overload packet (``"topk"``, ``"min"``) inside the block."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.calls = name, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == self.name:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _boxes(gen: torch.Generator, count: int, side: float = 128.0) -> torch.Tensor:
    centers = torch.rand(count, 2, generator=gen) * side
    sizes = torch.rand(count, 2, generator=gen) * 40 + 4
    return torch.cat([centers - sizes / 2, centers + sizes / 2], -1)


def _budget_reading(monkeypatch, per_triple: float, triples: int) -> None:
    """Patch the floor to 1 and the reading to the bytes that give exactly ``triples`` at the default fraction."""
    monkeypatch.setattr(base, "MIN_BUDGET", 1)
    _reading(monkeypatch, round(8 * per_triple * triples))


@pytest.fixture
def eager_kernels():
    previous = set_compile(False)
    yield
    set_compile(previous)


def _assert_identical(got, want) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)


def _max_iou_scene():
    gen = torch.Generator().manual_seed(11)
    priors = _boxes(gen, 100)
    targets = random_targets(gen, (5, 2), 3, (128, 128), min_size=8.0, max_size=60.0)
    return priors, pad_targets(targets)


@pytest.mark.parametrize(("triples", "chunks"), [(2 * 5 * 25, 4), (2 * 5 * 30, 4), (2 * 5 * 50, 2), (2 * 5 * 100, 1)])
def test_max_iou_chunks_follow_the_budget(monkeypatch, triples, chunks):
    """B = 2, G = 5, P = 100: ⌊T / (B·G)⌋ priors a chunk, each chunk visited by both passes."""
    priors, gts = _max_iou_scene()
    _budget_reading(monkeypatch, max_iou._BYTES_PER_TRIPLE, triples)
    calls = []
    original = MaxIoUAssigner._overlaps
    monkeypatch.setattr(MaxIoUAssigner, "_overlaps", lambda self, *a: calls.append(a[-2:]) or original(self, *a))
    MaxIoUAssigner().assign(priors, gts)
    assert len(calls) == 2 * chunks
    assert calls[0] == (0, min(100, triples // 10))


def _points_scene():
    gen = torch.Generator().manual_seed(12)
    sizes, strides = ((16, 16), (8, 8), (4, 4)), (8, 16, 32)
    pts, lvls = [], []
    for level, ((h, w), s) in enumerate(zip(sizes, strides, strict=True)):
        ys, xs = torch.meshgrid(torch.arange(h) * s + s // 2, torch.arange(w) * s + s // 2, indexing="ij")
        pts.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float())
        lvls.append(torch.full((h * w,), level))
    targets = random_targets(gen, (6, 0, 3), 3, (128, 128), min_size=8.0, max_size=100.0)
    ranges = ((-1.0, 32.0), (32.0, 64.0), (64.0, 1e8))
    return torch.cat(pts), torch.cat(lvls), strides, pad_targets(targets), ranges  # 336 points, B = 3, G = 6


@pytest.mark.parametrize("center_sampling", [False, True])
@pytest.mark.parametrize(("points_per_chunk", "chunks"), [(100, 4), (168, 2), (336, 1)])
def test_points_chunks_follow_the_budget(monkeypatch, center_sampling, points_per_chunk, chunks):
    pts, lvls, strides, gts, ranges = _points_scene()
    per_triple = points._BYTES_PER_TRIPLE if center_sampling else points._BYTES_PER_TRIPLE_WHOLE_BOX
    _budget_reading(monkeypatch, per_triple, 3 * 6 * points_per_chunk)
    with _OpCount("min") as count:  # one min over boxes a chunk
        PointAssigner(ranges, center_sampling).assign(pts, lvls, strides, gts)
    assert count.calls == chunks


def _atss_scene():
    gen = torch.Generator().manual_seed(13)
    counts = [64, 16, 4]
    priors = torch.cat([_boxes(gen, n) for n in counts])
    targets = random_targets(gen, (7, 3), 3, (128, 128), min_size=8.0, max_size=60.0)
    return priors, counts, pad_targets(targets)  # B = 2, G = 7


@pytest.mark.parametrize("triples", [1, 2 * 64 * 2, 2 * 64 * 7, 2 * 16 * 3])
def test_atss_chunks_follow_the_budget(monkeypatch, triples):
    """Per level of n priors: ⌊T / (B·n)⌋ boxes a chunk (one at least), one top-k a chunk."""
    priors, counts, gts = _atss_scene()
    _budget_reading(monkeypatch, atss._BYTES_PER_TRIPLE, triples)
    with _OpCount("topk") as count:
        ATSSAssigner().assign(priors, counts, gts)
    steps = [max(1, min(7, triples // (2 * n))) for n in counts]
    assert count.calls == sum(math.ceil(7 / step) for step in steps)


def _simota_scene(batch: int = 5):
    gen = torch.Generator().manual_seed(14)
    num_priors, num_classes = 50, 4
    centers = torch.rand(num_priors, 2, generator=gen) * 128
    strides = torch.full((num_priors,), 16.0)
    half = torch.rand(batch, num_priors, 2, generator=gen) * 20 + 4
    pred = torch.cat([centers - half, centers + half], -1)
    cls = torch.randn(batch, num_priors, num_classes, generator=gen) * 2
    obj = torch.randn(batch, num_priors, generator=gen) * 2
    targets = random_targets(gen, (4, 1, 0, 3, 4), num_classes, (128, 128), min_size=16.0, max_size=80.0)
    return pred, cls, obj, centers, strides, pad_targets(targets)  # B = 5, G = 4, P = 50, C = 4


@pytest.mark.parametrize(("images_per_group", "groups"), [(1, 5), (2, 3), (4, 2), (5, 1)])
def test_simota_groups_follow_the_budget(monkeypatch, images_per_group, groups):
    """Bytes a triple 40 + (20·C + 128) / G = 40 + 208 / 4 = 92; ⌊T / (G·P)⌋ images a group."""
    scene = _simota_scene()
    per_triple = simota._BYTES_PER_TRIPLE + (simota._BYTES_PER_PRIOR_CLASS * 4 + simota._BYTES_PER_PRIOR) / 4
    _budget_reading(monkeypatch, per_triple, images_per_group * 4 * 50)
    calls = []
    original = SimOTAAssigner._assign
    monkeypatch.setattr(SimOTAAssigner, "_assign", lambda self, *a: calls.append(a[0].shape[0]) or original(self, *a))
    SimOTAAssigner().assign(*scene)
    assert len(calls) == groups
    assert calls[0] == images_per_group


def _task_aligned_scene():
    gen = torch.Generator().manual_seed(15)
    num_priors = 64
    pts = torch.rand(num_priors, 2, generator=gen) * 128
    half = torch.rand(2, num_priors, 2, generator=gen) * 24 + 4
    pred = torch.cat([pts - half, pts + half], -1)
    logits = torch.randn(2, num_priors, 3, generator=gen) * 2
    targets = random_targets(gen, (9, 4), 3, (128, 128), min_size=16.0, max_size=90.0)
    return logits, pred, pts, pad_targets(targets)  # B = 2, G = 9, P = 64


@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize(("boxes_per_chunk", "chunks"), [(1, 9), (2, 5), (4, 3), (9, 1)])
def test_task_aligned_chunks_follow_the_budget(monkeypatch, boxes_per_chunk, chunks):
    scene = _task_aligned_scene()
    _budget_reading(monkeypatch, task_aligned._BYTES_PER_TRIPLE, boxes_per_chunk * 2 * 64)
    with _OpCount("topk") as count:  # one top-k a chunk
        TaskAlignedAssigner().assign(*scene)
    assert count.calls == chunks


def _assigners():
    """(name, build(max_elements), call(assigner)) for every chunked assigner, on its small scene."""
    mi, pt, at, so, ta = _max_iou_scene(), _points_scene(), _atss_scene(), _simota_scene(), _task_aligned_scene()
    return [
        ("max_iou", lambda m: MaxIoUAssigner(max_elements=m), lambda a: a.assign(*mi)),
        ("max_iou_first", lambda m: MaxIoUAssigner(gt_max_assign_all=False, max_elements=m), lambda a: a.assign(*mi)),
        ("points", lambda m: PointAssigner(pt[4], max_elements=m), lambda a: a.assign(*pt[:4])),
        ("points_center", lambda m: PointAssigner(pt[4], True, max_elements=m), lambda a: a.assign(*pt[:4])),
        ("atss", lambda m: ATSSAssigner(max_elements=m), lambda a: a.assign(*at)),
        ("simota", lambda m: SimOTAAssigner(max_elements=m), lambda a: a.assign(*so)),
        ("simota_mmdet", lambda m: SimOTAAssigner("mmdet", max_elements=m), lambda a: a.assign(*so)),
        ("task_aligned", lambda m: TaskAlignedAssigner(max_elements=m), lambda a: a.assign(*ta)),
        ("task_aligned_ns", lambda m: TaskAlignedAssigner(style="netspresso", max_elements=m), lambda a: a.assign(*ta)),
    ]


@pytest.mark.usefixtures("eager_kernels")
@pytest.mark.parametrize("index", range(9))
def test_no_budget_changes_an_assignment(monkeypatch, index):
    """The default (automatic, one chunk here), a budget of 1 (one prior, box or image a chunk), a few chunks and
    a huge fixed budget give bitwise the same assignment; so does the automatic budget at its smallest."""
    name, build, call = _assigners()[index]
    whole = call(build(None))
    assert int(whole[0].gt(0).sum()) > 0, name
    for budget in (1, 97, 1 << 40):
        _assert_identical(call(build(budget)), whole)
    _budget_reading(monkeypatch, 1, 1)  # automatic, one triple a chunk: the most chunks
    _assert_identical(call(build(None)), whole)


def test_defaults_are_automatic():
    assert MaxIoUAssigner().max_elements is None
    assert PointAssigner().max_elements is None
    assert ATSSAssigner().max_elements is None
    assert SimOTAAssigner().max_elements is None
    assert TaskAlignedAssigner().max_elements is None
    assert MaxIoUAssigner(max_elements=1 << 24).max_elements == 1 << 24


def test_the_budget_is_taken_on_the_inputs_device(monkeypatch):
    """The assigner asks about the device its inputs live on (here the CPU), once per call."""
    asked = _reading(monkeypatch, 4 * GIB)
    MaxIoUAssigner().assign(*_max_iou_scene())
    ATSSAssigner().assign(*_atss_scene())
    assert asked == [torch.device("cpu")] * 2


def test_automatic_chunk_budget_is_the_default_cut_to_free_memory(monkeypatch):
    """``chunk_budget(None, …)``: the assigner's old fixed default (``default // per_pair`` triples) on a roomy
    device, the memory budget where memory is scarcer; an int is the fixed budget whatever the reading."""
    _reading(monkeypatch, 1 << 50)
    assert base.chunk_budget(None, torch.device("cpu"), 40, per_pair=4, default=1 << 24) == 1 << 22
    _reading(monkeypatch, 64 << 20)  # 64 MiB: 1/8 of it at 40 B a triple is 209,715, raised to the floor 2^18
    assert base.chunk_budget(None, torch.device("cpu"), 40, per_pair=4, default=1 << 24) == base.MIN_BUDGET
    _reading(monkeypatch, 1 << 30)  # 1 GiB: 3,355,443 triples, under the default's 2^22
    assert base.chunk_budget(None, torch.device("cpu"), 40, per_pair=4, default=1 << 24) == (1 << 30) // 8 // 40
    assert base.chunk_budget(1000, torch.device("cpu"), 40, per_pair=4, default=1 << 24) == 250

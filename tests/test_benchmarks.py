"""The benchmark package runs: ``python -m benchmarks.run --quick`` gives every workload and dense preset its row.

One subprocess (≈ 30–60 s on 2 cores): quick sizes, one timed round, compile off, the DDP fit left out (the
DDP tests run that script), and an empty ``--vendor`` folder, so the NetsPresso baselines are absent as on a
fresh clone and their rows must say so instead of failing. No assertion on any time: only that every
workload ran, measured, and agreed with its baseline's value where it has one.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import GROUP_TITLES
from benchmarks.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "RESULTS.md"
    env = {**os.environ, "LIGHTNING_LOSSES_COMPILE": "0", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--rounds", "1", "--no-ddp"]
    command += ["--vendor", str(tmp / "no_vendor"), "--jobs", "2", "--out", str(out)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out.read_text(), proc.stderr


def _tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Rows of the result tables (the four workload groups), as ``{header: cell}``, by workload name."""
    rows: dict[str, list[dict[str, str]]] = {}
    for section in re.split(r"^## ", text, flags=re.MULTILINE):
        if not any(section.startswith(title) for title in GROUP_TITLES.values()):
            continue
        lines = [line for line in section.splitlines() if line.startswith("|")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        for line in lines[2:]:
            cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            rows.setdefault(cells[header[0]], []).append(cells)
    return rows


def _package_ms(cells: dict[str, str]) -> float:
    value = cells.get("package ms") or next(v for k, v in cells.items() if k.startswith("median ms"))
    return float(value.split()[0].replace(",", ""))


def test_every_workload_has_its_rows_with_a_measured_time(report):
    text, _ = report
    rows = _tables(text)
    assert set(rows) == {w.name for w in WORKLOADS}
    for workload in WORKLOADS:
        assert len(rows[workload.name]) == len(workload.comparisons), workload.name
        for cells in rows[workload.name]:
            assert 0 < _package_ms(cells) < math.inf, cells


def test_value_checks_agree_with_the_composite_baselines(report):
    """Δ value of every package-vs-composite row: the same loss, to float32 round-off."""
    text, _ = report
    composite = [cells for rows in _tables(text).values() for cells in rows if cells.get("vs") == "composite"]
    assert len(composite) == sum(c.baseline == "composite" for w in WORKLOADS for c in w.comparisons)
    for cells in composite:
        assert float(cells["Δ value"]) < 1e-4, cells


def test_missing_netspresso_vendor_skips_its_baselines_with_a_note(report):
    text, _ = report
    assert re.search(r"NetsPresso rows skipped: NetsPresso Trainer not found in \S*no_vendor", text)
    netspresso = [w.name for w in WORKLOADS if any(c.baseline == "netspresso" for c in w.comparisons)]
    assert netspresso
    for cells in (c for name in netspresso for c in _tables(text)[name]):
        assert cells["baseline ms"] == "–", cells
    notes = text[text.index("## Notes") :]
    for name in netspresso:
        assert re.search(rf"- {re.escape(name)} .*: row vs netspresso skipped \(netspresso unavailable\)", notes)
    assert "## Collectives under DDP" not in text  # --no-ddp


def _dense_rows(text: str) -> list[dict[str, str]]:
    from benchmarks.dense_sizes import TITLE

    section = text[text.index(f"## {TITLE}") :].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def test_dense_presets_have_rows_with_ops_and_the_mmdet_baselines_value(report):
    """Every dense preset gets its row; where MMDetection's head path is the baseline, the loss agrees with it."""
    from benchmarks.dense_inputs import DENSE, MMDET

    text, _ = report
    rows = {cells["preset"]: cells for cells in _dense_rows(text)}
    assert set(rows) == {w.name for w in DENSE}
    for workload in DENSE:
        cells = rows[workload.name]
        assert 0 < float(cells["package ms"].replace(",", "")) < math.inf, cells
        ops = [int(v.replace(",", "")) for v in cells["aten ops pkg / mmdet"].split(" / ")]
        has_baseline = workload.comparisons[0].baseline == MMDET
        assert len(ops) == (2 if has_baseline else 1), cells
        assert min(ops) > 0, cells
        if has_baseline:
            assert float(cells["Δ value"]) < 1e-5, cells
            assert float(cells["MMDetection ms"].replace(",", "")) > 0, cells
    assert "## Where the dense presets' time goes (cpu)" in text


def _scene(classes: int = 5) -> tuple[list, list[dict], int, int]:
    import torch

    g = torch.Generator().manual_seed(0)
    batch, height, width = 2, 96, 128
    sizes = [(-(-height // s), -(-width // s)) for s in (8, 16, 32, 64, 128)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(4, 2, generator=g) * torch.tensor([width - 40, height - 40])
        wh = torch.rand(4, 2, generator=g) * 30 + 8
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, classes, (4,), generator=g)})
    return sizes, targets, height, width


def test_mmdet_head_baselines_equal_the_literal_references_term_by_term():
    """benchmarks.mmdet_heads (vectorised per image) against tests/references/mmdet_* (per-box loops), every term."""
    import torch

    from benchmarks import mmdet_heads
    from tests.references.mmdet_atss_gfl import atss_loss_by_feat, gfl_loss_by_feat
    from tests.references.mmdet_dense_heads import retinanet_loss_by_feat, total
    from tests.references.mmdet_fcos import fcos_loss_by_feat

    classes = 5
    sizes, targets, height, width = _scene(classes)
    g = torch.Generator().manual_seed(1)

    def maps(channels: int, scale: float = 1.0, shift: float = 0.0) -> list:
        return [torch.randn(2, channels, h, w, generator=g) * scale + shift for h, w in sizes]

    pads = [(height, width)] * 2
    cls, ctr, box4, box68 = maps(classes, 1.0, -2.0), maps(1), maps(4, 0.1), maps(68)
    cls9, box36 = maps(9 * classes, 1.0, -2.0), maps(36, 0.1)
    dist = [
        (torch.rand(2, 4, h, w, generator=g) * 7 + 1) * s for (h, w), s in zip(sizes, (8, 16, 32, 64, 128), strict=True)
    ]
    pairs = [
        (
            mmdet_heads.RetinaHead(classes)(cls9, box36, targets, (height, width)),
            total(retinanet_loss_by_feat(cls9, box36, targets, classes, pad_shapes=pads)),
        ),
        (mmdet_heads.FCOSHead(classes)(cls, dist, ctr, targets), fcos_loss_by_feat(cls, dist, ctr, targets, classes)),
        (
            mmdet_heads.ATSSHead(classes)(cls, box4, ctr, targets, (height, width)),
            total(atss_loss_by_feat(cls, box4, ctr, targets, classes, pad_shapes=pads)),
        ),
        (
            mmdet_heads.GFLHead(classes)(cls, box68, targets, (height, width)),
            total(gfl_loss_by_feat(cls, box68, targets, classes, pad_shapes=pads)),
        ),
    ]
    for ours, reference in pairs:
        assert set(ours) == set(reference)
        for term, value in ours.items():
            assert float(reference[term]) > 0, term
            torch.testing.assert_close(value, reference[term], rtol=1e-5, atol=1e-7, msg=term)

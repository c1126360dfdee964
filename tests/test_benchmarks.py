"""The benchmark package runs: ``python -m benchmarks.run --quick`` gives every workload its row.

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

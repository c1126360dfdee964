"""Time a ``lightning-losses fit`` of every preset config and tabulate its validation metrics.

For each preset ``configs/<name>.yaml`` the script runs ``lightning-losses fit --config …`` in a subprocess
from a fresh temporary working directory (W&B offline, silent, with every W&B directory in that temporary
directory; ``OMP_NUM_THREADS`` set from ``--threads``), measures the wall time of the whole process and reads
the run's CSV metrics (``logs/<name>/csv/version_*/metrics.csv``) and ``summary.json``. The table reports the
final ``val/loss`` and the detection ``val/map_50`` (``val/miou`` for PIDNet) after the first and the last
epoch, so a working preset shows its metric rising.

    python -m benchmarks.preset_fits                               # all six presets, the configs' epochs
    python -m benchmarks.preset_fits --presets retinanet,fcos --epochs 2 --threads 2 --out /tmp/PRESETS.md

The Markdown file gets a header with the machine (CPU model, cores, load average before and after),
torch/lightning versions, the date and the exact command; the table is printed too.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
PRESETS = ("retinanet", "fcos", "atss", "gfl", "yolox", "pidnet")
METRIC = {"pidnet": "val/miou"}  # every other preset is a detector and reports val/map_50
DEFAULT_METRIC = "val/map_50"


@dataclass
class Result:
    """One preset's fit: timings, metrics and, when it failed, why."""

    preset: str
    epochs: int
    wall_s: float
    metric: str
    val_loss: float = math.nan
    first: float = math.nan
    final: float = math.nan
    error: str = ""


def config_epochs(config: Path) -> int:
    """``trainer.max_epochs`` of a preset config (read with a regex: the configs are flat and stable)."""
    match = re.search(r"^\s+max_epochs:\s*(\d+)\s*$", config.read_text(), flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"{config}: no trainer.max_epochs")
    return int(match.group(1))


def cli_command(config: Path, epochs: int | None) -> list[str]:
    """The ``lightning-losses fit`` command line: the console script beside this interpreter, else ``-m``."""
    script = Path(sys.executable).parent / "lightning-losses"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lightning_losses"]
    command += ["fit", "--config", str(config)]
    if epochs is not None:
        command.append(f"--trainer.max_epochs={epochs}")
    return command


def run_env(tmp: Path, threads: int) -> dict[str, str]:
    """The process environment: W&B offline and silent inside ``tmp``, no API key, ``threads`` OpenMP threads."""
    env = dict(os.environ)
    env.pop("WANDB_API_KEY", None)
    wandb_dir = tmp / "wandb-home"
    wandb_dir.mkdir(exist_ok=True)
    env.update(
        {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_CONSOLE": "off",
            "WANDB_X_DISABLE_STATS": "true",
            "WANDB_DISABLE_GIT": "true",
            "WANDB_DISABLE_CODE": "true",
            "WANDB_ERROR_REPORTING": "false",
            "WANDB_DIR": str(wandb_dir),
            "WANDB_CACHE_DIR": str(wandb_dir / "cache"),
            "WANDB_CONFIG_DIR": str(wandb_dir / "config"),
            "WANDB_DATA_DIR": str(wandb_dir / "data"),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def epoch_metrics(log_root: Path) -> dict[int, dict[str, float]]:
    """``{epoch: {key: value}}`` from the newest ``csv/version_*/metrics.csv`` under ``log_root`` (rows merged)."""
    files = sorted(log_root.glob("csv/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {}
    epochs: dict[int, dict[str, float]] = {}
    with files[-1].open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("epoch"):
                continue
            values = epochs.setdefault(int(float(row["epoch"])), {})
            values.update({key: float(value) for key, value in row.items() if key != "epoch" and value != ""})
    return epochs


def read_summary(log_root: Path) -> dict[str, float]:
    """The ``FitSummary`` callback's ``summary.json`` (anywhere under ``log_root``), or ``{}``."""
    files = sorted(log_root.rglob("summary.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text()) if files else {}


def run_preset(preset: str, epochs: int | None, threads: int, keep_logs: Path | None) -> Result:
    """Fit one preset in a temporary directory and collect its timings and metrics."""
    config = CONFIGS / f"{preset}.yaml"
    n_epochs = epochs if epochs is not None else config_epochs(config)
    metric = METRIC.get(preset, DEFAULT_METRIC)
    with tempfile.TemporaryDirectory(prefix=f"presets-{preset}-") as name:
        tmp = Path(name)
        start = time.perf_counter()
        proc = subprocess.run(
            cli_command(config, epochs),
            cwd=tmp,
            env=run_env(tmp, threads),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - start
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            (keep_logs / f"{preset}.log").write_text(proc.stdout)
        result = Result(preset=preset, epochs=n_epochs, wall_s=wall, metric=metric)
        if proc.returncode != 0:
            tail = proc.stdout.strip().splitlines()[-1:] or [""]
            result.error = f"exit {proc.returncode}: {tail[0][:200]}"
            return result
        log_root = tmp / "logs" / preset
        per_epoch = epoch_metrics(log_root)
        summary = read_summary(log_root)
        with_metric = [epoch for epoch in sorted(per_epoch) if metric in per_epoch[epoch]]
        if with_metric:
            result.first = per_epoch[with_metric[0]][metric]
            result.final = per_epoch[with_metric[-1]][metric]
        with_loss = [epoch for epoch in sorted(per_epoch) if "val/loss" in per_epoch[epoch]]
        if with_loss:
            result.val_loss = per_epoch[with_loss[-1]]["val/loss"]
        # summary.json holds the trainer's last callback metrics: prefer it for the final values.
        result.val_loss = summary.get("val/loss", result.val_loss)
        result.final = summary.get(metric, result.final)
        if not per_epoch and not summary:
            result.error = "no metrics.csv or summary.json"
    return result


def fmt(value: float, digits: int = 4) -> str:
    """A number with ``digits`` decimals, or ``n/a``."""
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_time(seconds: float) -> str:
    """``1m 23.4s`` / ``12.3s``."""
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m {rest:04.1f}s" if minutes else f"{rest:.1f}s"


def table(results: list[Result]) -> str:
    """The Markdown results table."""
    lines = [
        "| preset | epochs | wall time | final val loss | metric (first → final) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results:
        metric = f"{r.metric} {fmt(r.first)} → {fmt(r.final)}"
        if r.error:
            metric += f" (**failed**: {r.error})"
        lines.append(f"| {r.preset} | {r.epochs} | {fmt_time(r.wall_s)} | {fmt(r.val_loss)} | {metric} |")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1/5/15-minute load averages."""
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def versions() -> str:
    """Python, torch, lightning and torchmetrics versions (imported here, not in the timed subprocesses)."""
    import lightning
    import torch
    import torchmetrics

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}, "
        f"torchmetrics {torchmetrics.__version__}"
    )


def display_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (symlinks kept), else as given."""
    try:
        return str(path.absolute().relative_to(REPO))
    except ValueError:
        return str(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs (default: config's)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for each fit (default: 2)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "PRESETS.md", help="Markdown output")
    parser.add_argument("--keep-logs", type=Path, default=None, help="save each fit's console output here")
    args = parser.parse_args(argv)
    args.presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in args.presets if not (CONFIGS / f"{name}.yaml").exists()]
    if unknown:
        parser.error(f"no config for {', '.join(unknown)} in {CONFIGS}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the presets, print the table and write the Markdown file; exit 1 when a fit failed."""
    args = parse_args(argv)
    command = shlex.join([display_path(Path(sys.executable)), *(sys.argv if argv is None else [__file__, *argv])])
    load_start = load_average()
    started = dt.datetime.now().astimezone()
    total_start = time.perf_counter()
    results: list[Result] = []
    for preset in args.presets:
        print(f"[{dt.datetime.now():%H:%M:%S}] {preset} …", flush=True)
        result = run_preset(preset, args.epochs, args.threads, args.keep_logs)
        print(
            f"  {fmt_time(result.wall_s)}, val/loss {fmt(result.val_loss)}, {result.metric} "
            f"{fmt(result.first)} → {fmt(result.final)} {result.error}".rstrip(),
            flush=True,
        )
        results.append(result)
    total = time.perf_counter() - total_start
    header = [
        "# Preset fits: wall time and validation metrics",
        "",
        "Each preset is `lightning-losses fit --config configs/<preset>.yaml` in a fresh temporary directory "
        "(W&B offline, CSV logger), on the embedded synthetic shapes data, CPU only. Wall time is the whole "
        "process (imports, data generation, sanity check, training and validation). The metric is "
        "`val/map_50` for detectors and `val/miou` for PIDNet, after the first and the last epoch.",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- Software: {versions()}",
        f"- Date: {started:%Y-%m-%d %H:%M %Z}; total {fmt_time(total)}",
        f"- Threads: OMP_NUM_THREADS={args.threads}",
        f"- Load average (1/5/15 min): {load_start} at start, {load_average()} at end",
        f"- Command: `{command}`",
        "",
        "",
    ]
    text = "\n".join(header) + table(results) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print()
    print(table(results))
    print(f"\ntotal {fmt_time(total)}; written to {args.out}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

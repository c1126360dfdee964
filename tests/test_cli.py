"""LightningCLI: every shipped config fits through `lightning-losses`, logs every term, round-trips, dialects agree."""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_losses.cli import LossesCLI

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"
TERMS = {
    "retinanet": ["loss_cls", "loss_bbox"],
    "fcos": ["loss_cls", "loss_bbox", "loss_centerness"],
    "atss": ["loss_cls", "loss_bbox", "loss_centerness"],
    "gfl": ["loss_cls", "loss_bbox", "loss_dfl"],
    "yolox": ["loss_bbox", "loss_obj", "loss_cls", "loss_l1"],
    "yolov8": ["loss_cls", "loss_bbox", "loss_dfl"],
    "pidnet": ["loss_aux", "loss_sem", "loss_boundary", "loss_bas"],
    "detr": [f"loss_{t}{s}" for s in ("", "_aux_0", "_enc") for t in ("vfl", "bbox", "giou")],
}
METRIC = {"pidnet": "val/miou"}


def offline_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI subprocess: W&B offline under ``tmp_path``, no API key, one thread."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    wandb_dir = tmp_path / "wandb_home"
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_CONSOLE="off",
        WANDB_X_DISABLE_STATS="true",
        WANDB_DISABLE_GIT="true",
        WANDB_DISABLE_CODE="true",
        WANDB_ERROR_REPORTING="false",
        WANDB_DIR=str(wandb_dir),
        WANDB_CACHE_DIR=str(wandb_dir / "cache"),
        WANDB_CONFIG_DIR=str(wandb_dir / "config"),
        WANDB_DATA_DIR=str(wandb_dir / "data"),
        OMP_NUM_THREADS="1",
    )
    return env


def run_cli(subcommand: str, config: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """``lightning-losses <subcommand> --config <config> <extra>`` run in ``tmp_path`` with W&B offline."""
    cli = Path(sys.executable).with_name("lightning-losses")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "lightning_losses"]
    command += [subcommand, "--config", str(config), *extra]
    return subprocess.run(command, cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)


def _fit(name: str, tmp_path: Path, *extra: str, config: Path | None = None) -> subprocess.CompletedProcess:
    return run_cli(
        "fit",
        config or CONFIGS / f"{name}.yaml",
        tmp_path,
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
        "--data.init_args.num_train=48",
        "--data.init_args.num_val=32",
        *extra,
    )


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (LevelDB log format: 32 KiB blocks of crc32 / length / type chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            pos += block - pos % block if pos % block else 0
        elif kind in (1, 2):  # full, first
            pending = payload
        else:  # middle, last
            pending += payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def final_summary(path: Path) -> dict[str, object]:
    summary: dict[str, object] = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


@pytest.mark.parametrize("name", sorted(TERMS))
def test_config_fits_and_logs_every_term(name, tmp_path):
    """Exit 0, a W&B offline run on disk, and the CSV log holds every term per stage plus the metric."""
    proc = _fit(name, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log_dir = tmp_path / "logs" / name
    assert list(log_dir.glob("wandb/offline-run-*/run-*.wandb")), "no W&B offline run written"
    assert (log_dir / "config.yaml").exists()
    with open(next(log_dir.glob("csv/version_*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    keys = set(rows[0])
    for term in [*TERMS[name], "loss"]:
        assert f"train/{term}_step" in keys
        assert f"train/{term}_epoch" in keys
        assert f"val/{term}" in keys
    assert METRIC.get(name, "val/map_50") in keys
    assert "summary: epoch=1" in proc.stdout
    summary = final_summary(next(log_dir.glob("wandb/offline-run-*/run-*.wandb")))
    losses = {k: v for k, v in summary.items() if "/loss" in k}
    assert len(losses) == 3 * len([*TERMS[name], "loss"])  # train _step and _epoch, val (no test stage ran)
    for key, value in losses.items():
        assert isinstance(value, dict), f"{key}: summary {value!r} is not its minimum and last value"
        assert set(value) == {"min", "last"}, key
        logged = [float(row[key]) for row in rows if row.get(key)]  # the CSV logger saw the same values
        assert value["min"] == pytest.approx(min(logged), rel=1e-6), key
        assert value["last"] == pytest.approx(logged[-1], rel=1e-6), key
    assert not isinstance(summary[METRIC.get(name, "val/map_50")], dict)  # other metrics keep their last value


@pytest.mark.parametrize("name", sorted(TERMS))
def test_config_fits_in_bf16_true(name, tmp_path):
    """``--trainer.precision=bf16-true`` (the model, its inputs and the default dtype in bf16) fits every preset's
    demo config: two steps and a validation batch on tiny images, every logged validation loss finite."""
    proc = run_cli(
        "fit",
        CONFIGS / f"{name}.yaml",
        tmp_path,
        "--trainer.precision=bf16-true",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false",
        "--data.init_args.num_train=8",
        "--data.init_args.num_val=4",
        "--data.init_args.batch_size=4",
        "--data.init_args.image_size=64",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("summary:"))
    losses = dict(field.split("=") for field in summary.split()[1:] if "/loss" in field)
    assert {f"val/{term}" for term in [*TERMS[name], "loss"]} <= set(losses), summary
    assert all(math.isfinite(float(value)) for value in losses.values()), summary


def test_rerun_into_the_same_directory_and_override(tmp_path):
    """A second run overwrites config.yaml; a nested loss override reaches the saved config."""
    for gamma in ("1.5", "1.25"):
        proc = _fit("retinanet", tmp_path, f"--model.criterion.loss_cls.init_args.gamma={gamma}")
        assert proc.returncode == 0, proc.stderr[-4000:]
        saved = yaml.safe_load((tmp_path / "logs" / "retinanet" / "config.yaml").read_text())
        assert saved["model"]["init_args"]["criterion"]["init_args"]["loss_cls"]["init_args"]["gamma"] == float(gamma)


def _print_config(config: Path, *extra: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "lightning_losses", "fit", "--config", str(config), *extra, "--print_config"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_print_config_round_trips_and_lists_only_loss_parameters(tmp_path):
    first = _print_config(CONFIGS / "yolox.yaml")
    (tmp_path / "printed.yaml").write_text(first)
    assert _print_config(tmp_path / "printed.yaml") == first
    loss_obj = yaml.safe_load(first)["model"]["init_args"]["criterion"]["init_args"]["loss_obj"]["init_args"]
    assert "dist_sync_on_step" not in loss_obj
    assert "compute_on_cpu" not in loss_obj
    assert set(loss_obj) == {
        "use_sigmoid",
        "use_mask",
        "reduction",
        "class_weight",
        "ignore_index",
        "loss_weight",
        "avg_non_ignore",
        "label_smoothing",
        "validate_args",
    }


def _criterion(config: Path):
    cli = LossesCLI(args=["--config", str(config), "--trainer.logger=false"], run=False)
    return cli.model.criterion


@pytest.mark.parametrize("dialect", ["visdet_retinanet", "netspresso_retinanet"])
def test_seed_dialects_build_the_same_criterion_as_class_path(dialect, monkeypatch, tmp_path):
    """`{type: FocalLoss}` and `{criterion: focal_loss}` terms equal their class_path forms."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    built = _criterion(CONFIGS / "compat" / f"{dialect}.yaml")
    reference = _criterion(CONFIGS / "retinanet.yaml")
    expected_cls = "SigmoidFocalLoss" if dialect.startswith("netspresso") else "FocalLoss"
    assert type(built.loss_cls).__name__ == expected_cls
    assert type(built.loss_bbox) is type(reference.loss_bbox)
    for attr in ("gamma", "alpha", "loss_weight", "reduction"):
        assert getattr(built.loss_cls, attr) == getattr(reference.loss_cls, attr)
    assert built.loss_bbox.beta == reference.loss_bbox.beta
    import torch

    torch.manual_seed(0)
    pred, target = torch.randn(6, 3), torch.nn.functional.one_hot(torch.randint(0, 3, (6,)), 3).float()
    torch.testing.assert_close(built.loss_cls(pred, target), reference.loss_cls(pred, target))


def _built(*args: str) -> LossesCLI:
    return LossesCLI(args=[*args, "--trainer.logger=false"], run=False)


def test_num_classes_is_set_once_by_the_data(monkeypatch, tmp_path):
    """The data's class count reaches the model, its head and its criterion; a null criterion takes it too."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    for extra, count in (([], 3), (["--data.init_args.num_shape_classes=2"], 2)):
        cli = _built("--config", str(CONFIGS / "retinanet.yaml"), *extra)
        assert cli.model.num_classes == cli.model.criterion.num_classes == count
        assert cli.model.head.cls_out.out_channels == 9 * count  # A anchors x C classes
        assert cli.config["model"]["init_args"]["criterion"]["init_args"]["num_classes"] == count  # the run config
    cli = _built(
        "--config", str(CONFIGS / "fcos.yaml"), "--model.criterion=null", "--data.init_args.num_shape_classes=1"
    )
    assert cli.model.num_classes == cli.model.criterion.num_classes == 1
    segmenter = _built("--config", str(CONFIGS / "pidnet.yaml")).model
    assert segmenter.num_classes == segmenter.criterion.num_classes == 4  # background + 3 shapes


@pytest.mark.parametrize(
    "override",
    ["--model.init_args.num_classes=5", "--model.criterion.init_args.num_classes=2"],
)
def test_a_config_giving_another_count_than_the_data_is_refused(override, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"num_classes` is \d in the config, but the data module .* has num_classes=3"):
        _built("--config", str(CONFIGS / "yolox.yaml"), override)
    # The same count as the data is accepted (configs written before the link keep working).
    assert _built("--config", str(CONFIGS / "yolox.yaml"), "--model.init_args.num_classes=3").model.num_classes == 3

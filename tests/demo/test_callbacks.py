"""FitSummary: the printed line and summary.json hold every val/ metric of the fit."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_losses.demo import FitSummary, RetinaNetDetector, SyntheticShapesDataModule

pytestmark = pytest.mark.filterwarnings("ignore:The number of training batches")


def test_fit_summary_prints_and_saves_val_metrics(tmp_path, capsys):
    torch.manual_seed(0)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FitSummary()],
    )
    data = SyntheticShapesDataModule(image_size=64, num_train=2, num_val=2, batch_size=2)
    trainer.fit(RetinaNetDetector(channels=16), data)
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("summary:"))
    fields = dict(item.split("=") for item in line.removeprefix("summary: ").split())
    assert fields["epoch"] == "1"
    keys = [k for k in fields if k != "epoch"]
    assert keys == sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
    assert {"val/loss", "val/loss_cls", "val/loss_bbox", "val/map_50", "val/map"} <= set(keys)
    assert all(len(fields[k].split(".")[1]) == 4 for k in keys)
    saved = json.loads((tmp_path / "lightning_logs" / "version_0" / "summary.json").read_text())
    assert saved["epoch"] == 1
    assert saved["val/loss"] == float(trainer.callback_metrics["val/loss"])


def test_fit_summary_without_logger_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FitSummary()],
    )
    data = SyntheticShapesDataModule(image_size=64, num_train=2, num_val=2, batch_size=2)
    trainer.fit(RetinaNetDetector(channels=16), data)
    assert "summary: epoch=1 val/loss=" in capsys.readouterr().out
    assert not list(tmp_path.rglob("summary.json"))

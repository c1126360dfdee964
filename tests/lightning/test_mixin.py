"""DetectionLossModule in a real Trainer: per-stage keys, exact epoch means, epochs, checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_losses import DetectionLossModule, FocalLoss, YOLOXCriterion
from tests.lightning.tiny import NUM_CLASSES, TinyYOLOX, loader, returned_terms

TERMS = ("loss_bbox", "loss_obj", "loss_cls", "loss_l1")


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**defaults, **kwargs})


def _mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


def test_each_term_logged_per_stage_with_exact_epoch_means(tmp_path):
    """train/{term}_epoch and val/{term} equal the hand mean of that stage's per-step values."""
    torch.manual_seed(0)
    model = TinyYOLOX()
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, loader(6), loader(4, offset=1))
    metrics = trainer.callback_metrics
    for term in (*TERMS, "loss"):
        assert metrics[f"train/{term}_epoch"].item() == pytest.approx(_mean(model.returned["train"], term), rel=1e-5)
        assert metrics[f"train/{term}_step"].item() == pytest.approx(model.returned["train"][-1][term], rel=1e-5)
        assert metrics[f"val/{term}"].item() == pytest.approx(_mean(model.returned["val"], term), rel=1e-5)
    assert "val/loss_step" not in metrics


def test_stages_use_separate_criterion_copies():
    model = TinyYOLOX()
    train, val = model.stage_criteria("train")["criterion"], model.stage_criteria("val")["criterion"]
    assert train is not val
    assert train.loss_cls is not val.loss_cls
    assert model.criterion is train


def test_l1_activate_epoch_switches_inside_a_trainer_run(tmp_path):
    """l1_activate_epoch=2 (1-based): loss_l1 is 0 through epoch 1 and positive from epoch 2."""
    torch.manual_seed(0)
    model = TinyYOLOX(criterion=YOLOXCriterion(NUM_CLASSES, strides=(8, 16), l1_activate_epoch=2))
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, loader(4))
    first, second = model.returned["train"][:2], model.returned["train"][2:]
    assert all(row["loss_l1"] == 0.0 for row in first)
    assert all(row["loss_l1"] > 0.0 for row in second)
    assert model.stage_criteria("train")["criterion"].epoch == 2


def test_checkpoint_reload_and_resumed_fit(tmp_path):
    """load_from_checkpoint restores weights and the criterion; a resumed fit continues to max_epochs."""
    torch.manual_seed(0)
    model = TinyYOLOX(criterion=YOLOXCriterion(NUM_CLASSES, strides=(8, 16), l1_activate_epoch=3, loss_cls=FocalLoss()))
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    trainer.fit(model, loader(4))
    ckpt = Path(trainer.checkpoint_callback.best_model_path)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert not any("loss_sum" in key or "num_calls" in key for key in state)

    reloaded = TinyYOLOX.load_from_checkpoint(ckpt)
    assert isinstance(reloaded.criterion, YOLOXCriterion)
    assert reloaded.criterion.l1_activate_epoch == 3
    assert isinstance(reloaded.criterion.loss_cls, FocalLoss)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value)

    resumed = TinyYOLOX.load_from_checkpoint(ckpt)
    trainer2 = _trainer(tmp_path, max_epochs=2)
    trainer2.fit(resumed, loader(4), ckpt_path=ckpt)
    assert trainer2.current_epoch == 2
    assert len(resumed.returned["train"]) == 2


class _TwoHeads(DetectionLossModule, L.LightningModule):
    """Named criteria: logs {stage}/{name}/{term} and a weighted total."""

    def __init__(self) -> None:
        crit_a = YOLOXCriterion(NUM_CLASSES, strides=(8, 16))
        crit_b = YOLOXCriterion(NUM_CLASSES, strides=(8, 16))
        super().__init__(criterion={"det": crit_a, "aux": crit_b}, criterion_weights={"aux": 0.5})
        self.conv = nn.Conv2d(3, 5 + NUM_CLASSES, 1)
        self.totals: list[float] = []
        self.subtotals: list[tuple[float, float]] = []

    def training_step(self, batch, batch_idx):
        images, targets = batch
        maps = [self.conv(images[:, :, ::8, ::8]), self.conv(images[:, :, ::16, ::16])]
        criteria = self.stage_criteria("train")
        with returned_terms(criteria["det"]) as det, returned_terms(criteria["aux"]) as aux:
            loss = self.compute_losses({"det": (maps,), "aux": (maps,)}, targets)
        self.subtotals.append((sum(det.values()), sum(aux.values())))
        self.totals.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_several_named_criteria_log_by_name_with_weights(tmp_path):
    torch.manual_seed(0)
    model = _TwoHeads()
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, loader(4))
    metrics = trainer.callback_metrics
    for term in TERMS:
        assert f"train/det/{term}_epoch" in metrics
        assert f"train/aux/{term}_epoch" in metrics
    for total, (det, aux) in zip(model.totals, model.subtotals, strict=True):
        assert total == pytest.approx(det + 0.5 * aux, rel=1e-5)
    assert metrics["train/loss_epoch"].item() == pytest.approx(sum(model.totals) / len(model.totals), rel=1e-5)


def test_compute_losses_without_trainer_uses_given_stage():
    model = TinyYOLOX()
    model.log = lambda *args, **kwargs: None
    images = torch.rand(2, 3, 32, 32)
    targets = [{"boxes": torch.tensor([[2.0, 2, 14, 14]]), "labels": torch.tensor([1])}] * 2
    loss = model.compute_losses((model(images),), targets, stage="val")
    assert loss.requires_grad
    assert model.stage_criteria("val")["criterion"].loss_obj.num_calls.item() == 1
    assert model.stage_criteria("train")["criterion"].loss_obj.num_calls.item() == 0
    with pytest.raises(ValueError, match="stage"):
        model.compute_losses((model(images),), targets, stage="predict")


def test_bad_criterion_arguments():
    with pytest.raises(TypeError, match="criterion"):
        TinyYOLOX(criterion="yolox")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="criterion_weights"):
        DetectionLossModule.set_criterion(TinyYOLOX(), {"a": YOLOXCriterion(NUM_CLASSES)}, {"b": 1.0})
    with pytest.raises(ValueError, match=r"cannot contain '\.'.*det\.a"):
        DetectionLossModule.set_criterion(TinyYOLOX(), {"det.a": YOLOXCriterion(NUM_CLASSES)})


def test_loss_log_keys_are_exactly_the_keys_a_fit_logs(tmp_path):
    """The keys the CLI hands W&B up front equal what Lightning records for the train and val stages."""
    torch.manual_seed(0)
    model = _TwoHeadsWithValidation()
    keys = model.loss_log_keys()
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=1)
    trainer.fit(model, loader(4), loader(2))
    logged = {k for k in trainer.logged_metrics if "loss" in k}
    assert logged == {k for k in keys if not k.startswith("test/")}
    assert {k for k in keys if k.startswith("test/")} == {f"test/{n}" for n in ("loss", *_named_terms())}
    assert TinyYOLOX(criterion=_Untermed()).loss_log_keys() is None


class _TwoHeadsWithValidation(_TwoHeads):
    validation_step = _TwoHeads.training_step


def _named_terms():
    return [f"{name}/{term}" for name in ("det", "aux") for term in TERMS]


class _Untermed(nn.Module):
    def forward(self, *args, **kwargs):
        return {"loss_x": torch.zeros(())}


class _Bare(DetectionLossModule, nn.Module):
    pass


@pytest.mark.parametrize("log_prog_bar", [None, False, True])
def test_total_reaches_the_progress_bar_only_when_asked(tmp_path, log_prog_bar):
    """Lightning reads progress-bar values back to the host every step (two syncs on a GPU), so ``{stage}/loss``
    is shown there only with ``log_prog_bar=True`` (the mixin's argument or attribute); it is logged either way."""
    assert _Bare(log_prog_bar=log_prog_bar).log_prog_bar is bool(log_prog_bar)
    torch.manual_seed(0)
    model = TinyYOLOX()
    assert model.log_prog_bar is False
    if log_prog_bar is not None:
        model.log_prog_bar = log_prog_bar
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=1)
    trainer.fit(model, loader(4), loader(2))
    shown = {k for k in trainer.progress_bar_metrics if "loss" in k}
    assert shown == ({"train/loss_step", "train/loss_epoch", "val/loss"} if log_prog_bar else set())
    assert {"train/loss_step", "train/loss_epoch", "val/loss"} <= set(trainer.logged_metrics)

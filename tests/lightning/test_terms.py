"""How each term is logged in a real Trainer: through the criterion's LossMetric when it names one, through a
running mean of the mixin's otherwise. Reference: the values the criterion returned at each step (recorded by
a forward hook or computed by hand in the step), averaged per epoch by hand."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import DetectionLossModule, L1Loss, YOLOXCriterion
from lightning_losses.presets import Criterion
from tests.lightning.tiny import NUM_CLASSES, Recorder, TinyYOLOX, loader, returned_terms, trainer

PLAIN_TERMS = ("loss_mse", "reg/l2", "a.b")


class _Plain(nn.Module):
    """A user's criterion: plain tensor terms, names with '/' and '.', no LossMetric anywhere."""

    terms = PLAIN_TERMS

    def forward(self, pred, target, weight):
        return {
            "loss_mse": ((pred - target) ** 2).mean(),
            "reg/l2": weight.pow(2).sum() * 1e-2,
            "a.b": (pred - target).abs().max(),
        }


def _plain_by_hand(diff: torch.Tensor, weight: torch.Tensor) -> dict[str, float]:
    return {
        "loss_mse": diff.pow(2).mean().item(),
        "reg/l2": weight.pow(2).sum().item() * 1e-2,
        "a.b": diff.abs().max().item(),
    }


class _Regressor(DetectionLossModule, L.LightningModule):
    """Records, per stage, the terms ``by_hand`` computes in float64 from the same predictions."""

    def __init__(self, criterion: nn.Module, by_hand=_plain_by_hand) -> None:
        super().__init__(criterion=criterion)
        self.linear = nn.Linear(3, 1)
        self.terms_by_hand = by_hand
        self.by_hand: dict[str, list[dict[str, float]]] = {"train": [], "val": []}

    def _step(self, batch, stage):
        x, y = batch
        pred = self.linear(x)
        with returned_terms(self.stage_criteria(stage)["criterion"]) as returned:
            loss = self.compute_losses((pred, y), self.linear.weight)
        by_hand = self.terms_by_hand((pred - y).detach().double(), self.linear.weight.detach().double())
        assert returned == pytest.approx(by_hand, rel=1e-5)
        self.by_hand[stage].append({**by_hand, "loss": loss.item()})
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(n: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True) + torch.randn(n, 1, generator=gen)), batch_size=2)


def _epochs(rows: list[dict[str, float]], per_epoch: int, key: str) -> list[float]:
    values = [row[key] for row in rows]
    return [sum(values[i : i + per_epoch]) / per_epoch for i in range(0, len(values), per_epoch)]


def test_plain_tensor_terms_log_their_exact_running_means(tmp_path):
    """Issue 12, bug 1: a criterion returning plain tensors crashed (``KeyError: module name can't contain "."``)."""
    torch.manual_seed(0)
    model = _Regressor(_Plain())
    recorder = Recorder()
    trainer(tmp_path, max_epochs=2, logger=recorder).fit(model, _data(6, 0), _data(4, 1))
    train, val = model.by_hand["train"], model.by_hand["val"]
    for term in (*PLAIN_TERMS, "loss"):
        assert recorder.values(f"train/{term}_step") == pytest.approx([row[term] for row in train], rel=1e-6)
        assert recorder.values(f"train/{term}_epoch") == pytest.approx(_epochs(train, 3, term), rel=1e-6)
        assert recorder.values(f"val/{term}") == pytest.approx(_epochs(val, 2, term), rel=1e-6)
    assert set(model.loss_stages["fit"].term_slots) == {f"train/{term}" for term in PLAIN_TERMS}
    logged = {key for row in recorder.rows for key in row if "loss" in key or "/" in key}
    assert logged == set(model.loss_log_keys()) - {key for key in model.loss_log_keys() if key.startswith("test/")}


class _Mixed(Criterion):
    """loss_l1 is its LossMetric's output; loss_half is not any metric's."""

    terms = ("loss_l1", "loss_half")

    def __init__(self) -> None:
        super().__init__()
        self.loss_l1 = L1Loss()

    def forward(self, pred, target, weight):
        loss = self.loss_l1(pred, target)
        return {"loss_l1": loss, "loss_half": loss / 2}


def test_a_criterion_metric_term_is_logged_through_it_and_the_rest_through_running_means(tmp_path):
    torch.manual_seed(0)
    model = _Regressor(
        _Mixed(),
        by_hand=lambda diff, weight: {"loss_l1": diff.abs().mean().item(), "loss_half": diff.abs().mean().item() / 2},
    )
    recorder = Recorder()
    trainer(tmp_path, max_epochs=1, logger=recorder).fit(model, _data(6, 0))
    assert set(model.loss_stages["fit"].term_slots) == {"train/loss_half"}
    rows = model.by_hand["train"]
    for term in ("loss_l1", "loss_half"):
        assert recorder.values(f"train/{term}_step") == pytest.approx([row[term] for row in rows], rel=1e-6)
        assert recorder.values(f"train/{term}_epoch") == pytest.approx(_epochs(rows, 3, term), rel=1e-6)


def test_term_that_is_not_a_tensor_is_refused_with_its_name():
    class _Floaty(nn.Module):
        def forward(self, pred, target):
            return {"loss_x": 1.0}

    model = TinyYOLOX(criterion=_Floaty())
    model.log = lambda *args, **kwargs: None
    with pytest.raises(TypeError, match="_Floaty returned float for term 'loss_x'"):
        model.compute_losses((torch.zeros(1),), None)


class _ReportsTermMetrics(TinyYOLOX):
    """Also records, per step, which terms the train criterion reported a metric for."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.reported = [*getattr(self, "reported", []), set(self.criterion.term_metrics())]
        return loss


def test_yolox_loss_l1_logs_zero_before_activation_and_its_mean_after(tmp_path):
    """As before term_metrics: 0 on every step and epoch before l1_activate_epoch (the mixin's running mean of the
    returned zero; the L1 module is not called), then the L1 module's own mean."""
    torch.manual_seed(0)
    model = _ReportsTermMetrics(criterion=YOLOXCriterion(NUM_CLASSES, strides=(8, 16), l1_activate_epoch=2))
    recorder = Recorder()
    trainer(tmp_path, max_epochs=2, logger=recorder).fit(model, loader(4), loader(4, offset=1))
    train, val = model.returned["train"], model.returned["val"]
    assert [row["loss_l1"] for row in train[:2]] == [0.0, 0.0]
    assert all(row["loss_l1"] > 0 for row in train[2:])
    assert recorder.values("train/loss_l1_step") == pytest.approx([row["loss_l1"] for row in train], rel=1e-6)
    assert recorder.values("train/loss_l1_epoch") == pytest.approx([0.0, _epochs(train, 2, "loss_l1")[1]], rel=1e-6)
    assert recorder.values("val/loss_l1") == pytest.approx([0.0, _epochs(val, 2, "loss_l1")[1]], rel=1e-6)
    assert model.reported == [{"loss_bbox", "loss_obj", "loss_cls"}] * 2 + [set(YOLOXCriterion.terms)] * 2
    for term in ("loss_bbox", "loss_obj", "loss_cls", "loss"):
        assert recorder.values(f"train/{term}_epoch") == pytest.approx(_epochs(train, 2, term), rel=1e-6)


def test_loss_log_keys_of_one_yolox_criterion():
    terms = ["loss", "loss_bbox", "loss_obj", "loss_cls", "loss_l1"]
    assert TinyYOLOX().loss_log_keys() == (
        [f"train/{t}{s}" for t in terms for s in ("_step", "_epoch")]
        + [f"val/{t}" for t in terms]
        + [f"test/{t}" for t in terms]
    )

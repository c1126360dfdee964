"""Which stage copy a real Trainer run uses (fit with its sanity check, validate, test, predict), and loading of
``state_dict`` keys in the layout before per-stage containers (old key names written out by hand)."""

from __future__ import annotations

from contextlib import ExitStack

import lightning as L
import pytest
import torch
from torch import nn

from lightning_losses import DetectionLossModule
from lightning_losses.lightning import STAGES
from lightning_losses.lightning.stages import STAGE_SLOTS
from tests.lightning.tiny import Recorder, TinyYOLOX, loader, returned_terms, trainer


class _Staged(TinyYOLOX):
    """Every step calls compute_losses without a stage and records which stage copy ran."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, list[str], str]] = []  # (sanity check, copies called, current_stage())
        self.totals: list[float] = []  # returned total of each step, in order

    def _called(self, batch) -> torch.Tensor:
        images, targets = batch
        with ExitStack() as stack:
            got = {s: stack.enter_context(returned_terms(self.stage_criteria(s)["criterion"])) for s in STAGES}
            loss = self.compute_losses((self(images),), targets)
        called = [stage for stage, terms in got.items() if terms]
        self.seen.append((self.trainer.sanity_checking, called, self.current_stage()))
        assert loss.item() == pytest.approx(sum(got[called[0]].values()), rel=1e-6)
        self.totals.append(loss.item())
        return loss

    def training_step(self, batch, batch_idx):
        return self._called(batch)

    def validation_step(self, batch, batch_idx):
        return self._called(batch)

    def test_step(self, batch, batch_idx):
        return self._called(batch)

    def predict_step(self, batch, batch_idx):
        return self._called(batch)


def _calls(model: _Staged, stage: str) -> list[int]:
    criterion = model.stage_criteria(stage)["criterion"]
    return [int(getattr(criterion, term).num_calls) for term in criterion.terms]


def test_fit_trains_on_train_and_validates_and_sanity_checks_on_val(tmp_path):
    """The sanity-check step uses the val copy, and the logged val mean covers only the real val epoch."""
    torch.manual_seed(0)
    model = _Staged()
    recorder = Recorder()
    trainer(tmp_path, max_epochs=1, num_sanity_val_steps=1, logger=recorder).fit(model, loader(4), loader(4, 1))
    assert model.seen == [(True, ["val"], "val")] + [(False, ["train"], "train")] * 2 + [(False, ["val"], "val")] * 2
    assert recorder.values("val/loss") == [pytest.approx(sum(model.totals[-2:]) / 2, rel=1e-6)]
    assert recorder.values("train/loss_step") == [pytest.approx(t, rel=1e-6) for t in model.totals[1:3]]
    assert not any(key.startswith("test/") for row in recorder.rows for key in row)


@pytest.mark.parametrize(("run", "stage"), [("validate", "val"), ("test", "test")])
def test_validate_and_test_runs_use_their_copy(tmp_path, run, stage):
    torch.manual_seed(0)
    model = _Staged()
    recorder = Recorder()
    getattr(trainer(tmp_path, logger=recorder), run)(model, loader(4, 2), verbose=False)
    assert model.seen == [(False, [stage], stage)] * 2
    assert recorder.values(f"{stage}/loss") == [pytest.approx(sum(model.totals) / 2, rel=1e-6)]


def test_predict_computes_with_the_test_copy_logs_nothing_and_leaves_no_state(tmp_path):
    """Lightning allows no logging in predict_step: the totals come back, the test copy's sums are reset."""
    torch.manual_seed(0)
    model = _Staged()
    recorder = Recorder()
    predictions = trainer(tmp_path, logger=recorder).predict(model, loader(4, 2))
    assert model.seen == [(False, ["test"], "test")] * 2
    assert [p.item() for p in predictions] == pytest.approx(model.totals, rel=1e-6)
    assert not any("loss" in key for row in recorder.rows for key in row)
    for stage in STAGES:
        assert _calls(model, stage) == [0, 0, 0, 0]
        assert model.loss_stages[STAGE_SLOTS[stage]].total.num_calls.item() == 0


def test_without_a_trainer_the_stage_is_train():
    model = TinyYOLOX()
    model.log = lambda *args, **kwargs: None
    assert model.current_stage() == "train"
    targets = [{"boxes": torch.tensor([[2.0, 2, 14, 14]]), "labels": torch.tensor([1])}] * 2
    model.compute_losses((model(torch.rand(2, 3, 32, 32)),), targets)
    assert _calls(model, "train") == [1, 1, 1, 1]
    assert _calls(model, "val") == _calls(model, "test") == [0, 0, 0, 0]


class _Learned(nn.Module):
    """A criterion with a parameter and a buffer, the state a checkpoint keeps of criteria."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("steps", torch.tensor(0))

    def forward(self, pred, target):
        return {"loss_mse": ((pred - target) ** 2).mean() * self.log_scale.exp()}


class _Regressor(DetectionLossModule, L.LightningModule):
    def __init__(self, named: bool = False) -> None:
        super().__init__(criterion={"det": _Learned()} if named else _Learned())
        self.linear = nn.Linear(3, 1)


def _old_layout(model: _Regressor, name: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The keys the mixin wrote before per-stage containers: criteria.{fit,val,test}.{name}.{tensor}."""
    state = {f"{prefix}linear.weight": torch.full((1, 3), 0.25), f"{prefix}linear.bias": torch.tensor([0.5])}
    for value, slot in enumerate(("fit", "val", "test"), start=1):
        state[f"{prefix}criteria.{slot}.{name}.log_scale"] = torch.tensor(value + 0.5)
        state[f"{prefix}criteria.{slot}.{name}.steps"] = torch.tensor(10 * value)
    return state


def _assert_loaded(model: _Regressor, name: str) -> None:
    assert model.linear.bias.item() == 0.5
    for value, stage in enumerate(STAGES, start=1):
        criterion = model.stage_criteria(stage)[name]
        assert criterion.log_scale.item() == value + 0.5
        assert criterion.steps.item() == 10 * value


def test_state_dict_keys_of_the_new_layout():
    keys = set(_Regressor().state_dict())
    criteria = {
        f"loss_stages.{slot}.criteria.criterion.{t}" for slot in ("fit", "val", "test") for t in ("log_scale", "steps")
    }
    assert keys == {"linear.weight", "linear.bias"} | criteria


@pytest.mark.parametrize("named", [False, True])
def test_old_layout_state_dict_loads_strictly(named):
    name = "det" if named else "criterion"
    model = _Regressor(named)
    model.load_state_dict(_old_layout(model, name))
    _assert_loaded(model, name)
    model.load_state_dict(_Regressor(named).state_dict())  # the new layout still loads as it is
    assert model.stage_criteria("val")[name].log_scale.item() == 0.0


def test_old_layout_loads_inside_a_parent_module_and_other_keys_stay_unexpected():
    parent = nn.ModuleDict({"model": _Regressor()})
    parent.load_state_dict(_old_layout(parent["model"], "criterion", prefix="model."))
    _assert_loaded(parent["model"], "criterion")
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*criteria\.train\.criterion\.log_scale"):
        _Regressor().load_state_dict(
            {**_Regressor().state_dict(), "criteria.train.criterion.log_scale": torch.ones(())}
        )

"""A user's criterion survives a checkpoint round trip with torch's default ``weights_only=True``.

Reference: the constructor arguments the test passed; Lightning's own nn.Module warning is checked by its text."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from lightning_losses import YOLOXCriterion
from tests.lightning.tiny import NUM_CLASSES, TinyYOLOX, loader
from tests.lightning.user_criterion import Opaque, WithRegulariser


def _fit_and_save(tmp_path, model):
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader(2))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_user_criterion_round_trips_with_weights_only(tmp_path):
    criterion = WithRegulariser(YOLOXCriterion(NUM_CLASSES, strides=(8, 16), l1_activate_epoch=3), reg=0.25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = TinyYOLOX(criterion=criterion)
    assert not [w for w in caught if "is an instance of `nn.Module`" in str(w.message)]
    path = _fit_and_save(tmp_path, model)
    stored = torch.load(path, weights_only=True)["hyper_parameters"]["criterion"]
    assert stored["class_path"] == "tests.lightning.user_criterion.WithRegulariser"
    assert stored["init_args"]["reg"] == 0.25
    reloaded = TinyYOLOX.load_from_checkpoint(path)  # torch's default: weights_only=True
    rebuilt = reloaded.criterion
    assert type(rebuilt) is WithRegulariser
    assert rebuilt.reg == 0.25
    assert type(rebuilt.inner) is YOLOXCriterion
    assert rebuilt.inner.l1_activate_epoch == 3
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value)


def test_undescribable_criterion_gets_a_warning_that_says_how_to_fix_it():
    with pytest.warns(UserWarning, match="cannot be stored as a class_path config") as record:
        TinyYOLOX(criterion=Opaque(YOLOXCriterion(NUM_CLASSES, strides=(8, 16)), strength=0.5))
    assert not [w for w in record if "is an instance of `nn.Module`" in str(w.message)]

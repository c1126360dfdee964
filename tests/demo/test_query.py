"""The query-based demo detector: the DETRCriterion's input layout, gradients, decoding, a 1-epoch fit, checkpoints."""

import lightning as L
import pytest
import torch

from lightning_losses.demo import SyntheticShapesDataModule
from lightning_losses.demo.query import QueryDetector
from lightning_losses.presets import DETRCriterion

pytestmark = [
    pytest.mark.filterwarnings("ignore:Attribute 'criterion' is an instance of `nn.Module`"),
    pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)` but the `self.trainer`"),
]

C, B, SIZE = 3, 2, 64
TINY = {"image_size": SIZE, "num_train": 4, "num_val": 2, "batch_size": B}
QUERIES = (SIZE // 16) ** 2


def _trainer() -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_forward_gives_every_set_the_criterion_scores():
    torch.manual_seed(0)
    model = QueryDetector(num_classes=C, channels=16, num_layers=3)
    logits, boxes, aux, enc = model(torch.rand(B, 3, SIZE, SIZE))
    assert logits.shape == (B, QUERIES, C)
    assert boxes.shape == (B, QUERIES, 4)
    assert len(aux) == 2
    for a_logits, a_boxes in [*aux, enc]:
        assert a_logits.shape == (B, QUERIES, C)
        assert a_boxes.shape == (B, QUERIES, 4)
    assert ((boxes > 0) & (boxes < 1)).all()  # sigmoid: normalised cxcywh
    assert model.criterion.terms[-3:] == ("loss_vfl_enc", "loss_bbox_enc", "loss_giou_enc")


def test_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = QueryDetector(num_classes=C, channels=16)
    images, targets = next(iter(SyntheticShapesDataModule(**TINY).train_dataloader()))
    loss = model.training_step((images, targets), 0)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_decode_turns_normalised_boxes_into_pixels():
    model = QueryDetector(num_classes=C, channels=16)
    logits = torch.zeros(1, 2, C)
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.25], [0.25, 0.75, 0.1, 0.1]]])
    pixels, scores = model.decode((logits, boxes, [], (logits, boxes)), (64, 128))
    torch.testing.assert_close(pixels[0, 0], torch.tensor([32.0, 24.0, 96.0, 40.0]))
    torch.testing.assert_close(scores, torch.full((1, 2, C), 0.5))


def test_one_epoch_fit_logs_every_term_and_map():
    torch.manual_seed(0)
    model = QueryDetector(num_classes=C, channels=16)
    trainer = _trainer()
    trainer.fit(model, SyntheticShapesDataModule(**TINY))
    metrics = trainer.callback_metrics
    for term in model.criterion.terms:
        assert f"val/{term}" in metrics
        assert f"train/{term}_epoch" in metrics
    assert torch.isfinite(metrics["val/loss"])
    assert 0 <= float(metrics["val/map_50"]) <= 1


def test_checkpoint_rebuilds_a_configured_criterion(tmp_path):
    torch.manual_seed(0)
    criterion = DETRCriterion(C, classification="focal", num_aux_layers=1, encoder=True)
    model = QueryDetector(num_classes=C, criterion=criterion, channels=16)
    trainer = _trainer()
    trainer.fit(model, SyntheticShapesDataModule(**TINY))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = QueryDetector.load_from_checkpoint(path, weights_only=False)
    assert reloaded.criterion.classification == "focal"
    images = torch.rand(1, 3, SIZE, SIZE)
    torch.testing.assert_close(model.eval()(images)[1], reloaded.eval()(images)[1])


def test_rejects_a_criterion_that_does_not_fit_the_model():
    with pytest.raises(ValueError, match="num_aux_layers=1"):
        QueryDetector(num_classes=C, criterion=DETRCriterion(C, num_aux_layers=2, encoder=True))
    with pytest.raises(ValueError, match="encoder=True"):
        QueryDetector(num_classes=C, criterion=DETRCriterion(C, num_aux_layers=1))
    with pytest.raises(ValueError, match="classification"):
        QueryDetector(num_classes=C, criterion=DETRCriterion(C, "ce", num_aux_layers=1, encoder=True))
    with pytest.raises(ValueError, match="num_classes"):
        QueryDetector(num_classes=C, criterion=DETRCriterion(2, num_aux_layers=1, encoder=True))
    with pytest.raises(TypeError, match="DETRCriterion"):
        QueryDetector(num_classes=C, criterion=torch.nn.Identity())

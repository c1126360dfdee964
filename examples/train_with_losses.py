"""Train a tiny single-object detector with FocalLoss + GIoULoss under Lightning, on CPU, in seconds.

Each 32×32 image holds one filled rectangle whose brightness encodes its class (3 classes). The
model predicts class logits and an ``xyxy`` box; the losses are ``LossMetric`` objects logged as
they are, so Lightning reports their step values and exact epoch means.

    python examples/train_with_losses.py
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import FocalLoss, GIoULoss

SIZE, NUM_CLASSES = 32, 3


def make_data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    xy1 = torch.randint(0, SIZE // 2, (n, 2), generator=gen)
    wh = torch.randint(6, SIZE // 2, (n, 2), generator=gen)
    boxes = torch.cat([xy1, xy1 + wh], 1).float()
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    images = 0.1 * torch.randn(n, 1, SIZE, SIZE, generator=gen)
    ys, xs = torch.arange(SIZE).view(1, -1, 1), torch.arange(SIZE).view(1, 1, -1)
    inside = (xs >= boxes[:, 0, None, None]) & (xs < boxes[:, 2, None, None])
    inside = inside & (ys >= boxes[:, 1, None, None]) & (ys < boxes[:, 3, None, None])
    images[:, 0] += inside * (labels.float() + 1).view(-1, 1, 1) / NUM_CLASSES
    return TensorDataset(images, labels, boxes)


class TinyDetector(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(),
        )  # fmt: skip
        self.cls_head = nn.Linear(64, NUM_CLASSES)
        self.box_head = nn.Linear(64, 4)
        self.loss_cls = FocalLoss()
        self.loss_bbox = GIoULoss(loss_weight=2.0)

    def training_step(self, batch, batch_idx):
        images, labels, boxes = batch
        features = self.body(images)
        raw = self.box_head(features)
        # Predict the top-left corner and a positive size, so boxes stay well-formed.
        pred_boxes = torch.cat([raw[:, :2], raw[:, :2] + raw[:, 2:].exp()], 1) * SIZE / 4
        loss = self.loss_cls(self.cls_head(features), labels) + self.loss_bbox(pred_boxes, boxes)
        self.log("train/loss_cls", self.loss_cls, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/loss_bbox", self.loss_bbox, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class PrintEpochLosses(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        m = trainer.callback_metrics
        print(f"epoch {trainer.current_epoch}: loss_cls={m['train/loss_cls']:.4f} loss_bbox={m['train/loss_bbox']:.4f}")


def main() -> None:
    L.seed_everything(0, verbose=False)
    loader = DataLoader(make_data(512, seed=0), batch_size=32, shuffle=True)
    trainer = L.Trainer(
        max_epochs=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[PrintEpochLosses()],
    )
    trainer.fit(TinyDetector(), loader)


if __name__ == "__main__":
    main()

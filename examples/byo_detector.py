"""Bring your own detector: a tiny RetinaNet-style LightningModule trained by ``RetinaNetCriterion``.

Your model keeps its own layers, steps and optimizer; ``DetectionLossModule`` adds one call,
``self.compute_losses(outputs, targets, image_size=...)``, that runs the criterion, logs every term as
``{stage}/{term}`` (plus the total ``{stage}/loss``) and returns the total to backpropagate. Trains
2 epochs on the embedded synthetic shapes (64-pixel images) on CPU in a few seconds:

    python examples/byo_detector.py
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor, nn

from lightning_losses import DetectionLossModule, FocalLoss, L1Loss, RetinaNetCriterion
from lightning_losses.demo import SyntheticShapesDataModule

NUM_CLASSES, STRIDES = 3, (8, 16)


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.ReLU())


class TinyRetinaNet(DetectionLossModule, L.LightningModule):
    """Two levels (strides 8 and 16) and a head shared across them, MMDetection's output layout."""

    def __init__(self, criterion: RetinaNetCriterion, lr: float = 3e-3, channels: int = 32) -> None:
        super().__init__(criterion=criterion)  # the mixin keeps one copy per stage: train / val / test
        self.lr = lr
        anchors = criterion.anchor_generator.num_base_priors  # A = 3 scales x 3 ratios
        self.stem = nn.Sequential(conv(3, 16, 2), conv(16, channels, 2), conv(channels, channels, 2))  # stride 8
        self.down = conv(channels, channels, 2)  # stride 16
        self.tower = conv(channels, channels)
        self.cls_out = nn.Conv2d(channels, anchors * NUM_CLASSES, 3, padding=1)
        self.reg_out = nn.Conv2d(channels, anchors * 4, 3, padding=1)
        nn.init.constant_(self.cls_out.bias, -math.log(99.0))  # prior probability 0.01, as RetinaNet does

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        p8 = self.stem(images)
        levels = [self.tower(p8), self.tower(self.down(p8))]
        return [self.cls_out(f) for f in levels], [self.reg_out(f) for f in levels]

    def _step(self, batch: tuple[Tensor, list[dict[str, Tensor]]]) -> Tensor:
        images, targets = batch  # targets: one {"boxes": (M, 4) xyxy pixels, "labels": (M,)} per image
        cls_scores, bbox_preds = self(images)
        return self.compute_losses((cls_scores, bbox_preds), targets, image_size=tuple(images.shape[-2:]))

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch)  # logs train/loss_cls, train/loss_bbox, train/loss (step and epoch)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch)  # logs val/loss_cls, val/loss_bbox, val/loss (epoch means)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


# Several criteria (a multi-task model) go in a dict; terms are logged as {stage}/{name}/{term} and
# the total is their weighted sum (here det + 0.5 * aux); targets shared by all are passed once:
#   det, aux = RetinaNetCriterion(3, strides=(8, 16)), FCOSCriterion(3, strides=(8, 16))
#   super().__init__(criterion={"det": det, "aux": aux}, criterion_weights={"aux": 0.5})
#   self.compute_losses({"det": (cls_scores, bbox_preds), "aux": (fcos_cls, fcos_box, centerness)}, targets)


class PrintEpoch(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        print(
            f"epoch {trainer.current_epoch}: train/loss_cls_epoch={m['train/loss_cls_epoch']:.4f} "
            f"train/loss_bbox_epoch={m['train/loss_bbox_epoch']:.4f} train/loss_epoch={m['train/loss_epoch']:.4f} | "
            f"val/loss_cls={m['val/loss_cls']:.4f} val/loss_bbox={m['val/loss_bbox']:.4f} val/loss={m['val/loss']:.4f}"
        )


def main() -> None:
    L.seed_everything(0, verbose=False)
    # Swap a term by passing a loss module (or a config dict in any dialect). RetinaNet regresses
    # anchor *deltas*, so the box term must be an element-wise loss (L1Loss, SmoothL1Loss, BalancedL1Loss);
    # IoU losses such as GIoULoss need decoded xyxy boxes and belong to FCOS / ATSS / GFL.
    criterion = RetinaNetCriterion(
        NUM_CLASSES,
        strides=STRIDES,
        octave_base_scale=2.0,  # anchors of 16-50 pixels for 64-pixel images
        loss_cls=FocalLoss(gamma=2.0, alpha=0.25),
        loss_bbox=L1Loss(loss_weight=1.0),  # instead of the default SmoothL1Loss(beta=1.0)
    )
    model = TinyRetinaNet(criterion)
    print(f"criterion terms: loss_cls={model.criterion.loss_cls}, loss_bbox={model.criterion.loss_bbox}")
    data = SyntheticShapesDataModule(image_size=64, num_train=32, num_val=16, batch_size=8)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[PrintEpoch()],
    )
    trainer.fit(model, data)
    logged = sorted(k for k in trainer.callback_metrics if k.startswith(("train/", "val/")))
    print("logged keys:", ", ".join(logged))


if __name__ == "__main__":
    main()

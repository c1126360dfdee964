"""torchvision's RetinaNet and FCOS trained by this package's criteria, through ``DetectionLossModule``.

``TorchvisionDenseDetector`` runs the torchvision model's backbone, FPN and head and hands the head outputs
(as per-level maps) and torchvision's anchors to the criterion: ``RetinaNetCriterion(style="netspresso")``
reproduces torchvision's RetinaNet loss, ``FCOSCriterion`` with torchvision's settings its FCOS loss except
the box term (centerness-weighted here). Each model is compared with torchvision's own ``compute_loss`` on
one batch, then trains a few steps on the synthetic shapes (128-pixel images, untrained weights: nothing is
downloaded; the ResNet body is frozen to keep it quick) with COCO mAP in validation:

    python examples/torchvision_detector.py
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn

from lightning_losses import DetectionLossModule
from lightning_losses.adapters import TorchvisionDenseDetector
from lightning_losses.demo import SyntheticShapesDataModule
from lightning_losses.demo.dense import mean_average_precision

NUM_CLASSES = 3


class TorchvisionDetector(DetectionLossModule, L.LightningModule):
    """A torchvision dense detector whose loss is this package's criterion (one copy per stage, every term logged)."""

    def __init__(self, detector: TorchvisionDenseDetector, lr: float = 1e-4) -> None:
        super().__init__(criterion=detector.default_criterion())
        self.detector = detector
        self.lr = lr
        self.val_map = mean_average_precision()

    def _losses(self, batch: tuple[Tensor, list[dict[str, Tensor]]]) -> tuple[Tensor, object]:
        images, targets = batch
        outputs = self.detector(images)
        inputs, kwargs = self.detector.criterion_inputs(outputs), self.detector.criterion_kwargs(outputs)
        return self.compute_losses(inputs, targets, **kwargs), outputs  # kwargs: priors=torchvision's anchors

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._losses(batch)[0]

    def validation_step(self, batch, batch_idx: int) -> None:
        _, outputs = self._losses(batch)
        self.val_map.update(self.detector.postprocess(outputs), batch[1])  # torchvision's own decoding and NMS

    def on_validation_epoch_end(self) -> None:
        self.log("val/map_50", self.val_map.compute()["map_50"])
        self.val_map.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def compare_on_one_batch(detector: TorchvisionDenseDetector, batch: tuple[Tensor, list]) -> None:
    images, targets = batch
    with torch.no_grad():
        outputs = detector(images)
        ours = detector.default_criterion()(
            *detector.criterion_inputs(outputs), targets, **detector.criterion_kwargs(outputs)
        )
        theirs = detector.torchvision_loss(outputs, targets)
    for (term, value), (name, reference) in zip(ours.items(), theirs.items(), strict=True):
        print(f"  {term}={float(value):.6f} torchvision {name}={float(reference):.6f}")


def main() -> None:
    torch.manual_seed(0)
    data = SyntheticShapesDataModule(
        image_size=128, num_shape_classes=NUM_CLASSES, num_train=8, num_val=4, batch_size=4
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    for build in (retinanet_resnet50_fpn, fcos_resnet50_fpn):
        model = build(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
        model.backbone.body.requires_grad_(False)  # frozen ResNet: trains FPN and head (quick on a CPU)
        detector = TorchvisionDenseDetector(model)
        print(f"{build.__name__}: criterion vs torchvision's compute_loss on one batch")
        compare_on_one_batch(detector, batch)
        module = TorchvisionDetector(detector)
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=2,
            limit_val_batches=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, data)
        metrics = trainer.callback_metrics
        logged = " ".join(f"{k}={float(v):.4f}" for k, v in sorted(metrics.items()) if k.startswith(("train/", "val/")))
        print(f"  after {trainer.global_step} steps: {logged}")


if __name__ == "__main__":
    main()

"""One loss, three config dialects: visdet ``type=``, NetsPresso ``criterion:`` and jsonargparse ``class_path``.

1. ``build_loss`` on each dialect; "equal" means same class and same constructor arguments.
2. ``compat.netspresso.build_losses`` on NetsPresso Trainer ``model.losses`` lists, fed its ``out`` / ``target`` dicts.
3. ``configs/compat/visdet_retinanet.yaml`` loaded through the ``lightning-losses`` CLI resolves to the
   same criterion as ``configs/retinanet.yaml``.

    python examples/config_dialects.py
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses import build_loss
from lightning_losses.cli import LossesCLI
from lightning_losses.compat.netspresso import build_losses
from lightning_losses.serialization import to_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def equal(a: nn.Module, b: nn.Module) -> bool:
    """Same class and the same constructor arguments (defaults filled in)."""
    return to_config(a) == to_config(b)


def element_losses() -> None:
    visdet = build_loss({"type": "FocalLoss", "gamma": 2.0, "alpha": 0.25, "loss_weight": 1.0})
    jsonarg = build_loss({"class_path": "lightning_losses.FocalLoss", "init_args": {"gamma": 2.0, "alpha": 0.25}})
    print(f"type=FocalLoss        -> {visdet}")
    print(f"class_path FocalLoss  -> {jsonarg}   equal: {equal(visdet, jsonarg)}")
    # NetsPresso's focal_loss is torchvision's sigmoid_focal_loss: its own class, with `weight` as loss_weight.
    netspresso = build_loss({"criterion": "focal_loss", "alpha": 0.25, "gamma": 2.0, "weight": None})
    reference = build_loss({"class_path": "lightning_losses.SigmoidFocalLoss", "init_args": {"alpha": 0.25}})
    print(f"criterion: focal_loss -> {netspresso}   equal to its class_path form: {equal(netspresso, reference)}")
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(8, 3, generator=generator), torch.randint(0, 4, (8,), generator=generator)
    onehot = F.one_hot(labels, 4)[:, :3].float()  # label 3 = background
    values = [float(loss(logits, onehot)) for loss in (visdet, jsonarg, netspresso)]
    print("same value on one-hot targets:", ", ".join(f"{v:.6f}" for v in values))


def netspresso_lists() -> None:
    generator = torch.Generator().manual_seed(0)
    classification = build_losses(
        [
            {"criterion": "cross_entropy", "label_smoothing": 0.1, "weight": None},
            {"criterion": "focal_loss", "alpha": 0.25, "gamma": 2.0, "weight": 2.0},
        ]
    )
    logits, labels = torch.randn(8, 3, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    got = classification({"pred": logits}, {"target": F.one_hot(labels, 3).float()})
    print(
        f"NetsPresso classification list: cross_entropy={got['cross_entropy']:.4f} focal_loss={got['focal_loss']:.4f} "
        f"loss={got['loss']:.4f} (= ce + 2.0 * focal: {got['cross_entropy'] + 2 * got['focal_loss']:.4f})"
    )
    # yolox_loss reads out["pred"]: one (B, 5 + C, H, W) map per level; strides come from target["img_size"].
    detection = build_losses([{"criterion": "yolox_loss", "l1_activate_epoch": 2, "weight": None}])
    out = {"pred": [0.5 * torch.randn(2, 5 + 3, 64 // s, 64 // s, generator=generator) for s in (8, 16, 32)]}
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]])
    gt = [{"boxes": boxes, "labels": torch.tensor([0, 2])}, {"boxes": boxes[:1] + 2, "labels": torch.tensor([1])}]
    for epoch in (1, 2):
        detection.set_epoch(epoch)  # NetsPresso's epoch counter (1-based); L1 joins at l1_activate_epoch
        got = detection(out, {"gt": gt, "img_size": 64})
        terms = " ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in got.items() if k.startswith("yolox_loss/"))
        print(f"NetsPresso yolox_loss, epoch {epoch}: {terms} loss={got['loss']:.4f}")


def cli_criterion(config: Path) -> nn.Module:
    cli = LossesCLI(args=["--config", str(config), "--trainer.logger=false"], run=False)
    return cli.model.criterion


def cli_configs() -> None:
    visdet = cli_criterion(CONFIGS / "compat" / "visdet_retinanet.yaml")
    reference = cli_criterion(CONFIGS / "retinanet.yaml")
    same_terms = all(equal(getattr(visdet, t), getattr(reference, t)) for t in ("loss_cls", "loss_bbox"))
    print(f"visdet_retinanet.yaml terms: {visdet.loss_cls} + {visdet.loss_bbox}")
    print(
        f"CLI: visdet dialect criterion == retinanet.yaml criterion: {same_terms and repr(visdet) == repr(reference)}"
    )
    generator = torch.Generator().manual_seed(0)
    levels = [(16, 16), (8, 8), (4, 4)]  # strides 8, 16, 32 on 128-pixel images; A = 9 anchors
    cls_scores = [torch.randn(2, 9 * 3, h, w, generator=generator) - 4.0 for h, w in levels]
    bbox_preds = [0.1 * torch.randn(2, 9 * 4, h, w, generator=generator) for h, w in levels]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 30.0, 90.0, 110.0], [5.0, 5.0, 25.0, 30.0]]), "labels": torch.tensor([0, 2])},
    ]
    for name, criterion in (("visdet", visdet), ("retinanet.yaml", reference)):
        terms = criterion(cls_scores, bbox_preds, targets, image_size=(128, 128))
        print(f"{name:>14}: " + " ".join(f"{k}={v:.6f}" for k, v in terms.items()))


if __name__ == "__main__":
    element_losses()
    netspresso_lists()
    cli_configs()

"""Losses without Lightning: pure functions, the same losses as modules, and their running means.

1. ``lightning_losses.functional``: stateless functions with the shared ``weight`` / ``reduction`` /
   ``avg_factor`` rule, checked against the closed-form focal loss.
2. The module form (``FocalLoss``, ``GIoULoss``) returns the same value, takes ``reduction_override``,
   and is a ``torchmetrics.Metric``: every call joins a running mean that ``.compute()`` returns and
   ``.reset()`` clears (exact across DDP ranks; in a LightningModule ``self.log(key, loss_module)`` does this).
3. A plain PyTorch training loop of a single-object detector (class + box) using both modules.

    python examples/functional_and_metric.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses import FocalLoss, GIoULoss
from lightning_losses.functional import giou_loss, sigmoid_focal_loss

SIZE, NUM_CLASSES = 32, 3


def functional_tour() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, NUM_CLASSES, generator=g)
    labels = torch.tensor([0, 2, 3, 1, 3, 3])  # class indices; 3 == C is background (an all-zero row)
    onehot = F.one_hot(labels, NUM_CLASSES + 1)[:, :NUM_CLASSES].float()

    # Closed form (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t, alpha 0.25, gamma 2.
    p = logits.sigmoid()
    p_t = p * onehot + (1 - p) * (1 - onehot)
    alpha_t = 0.25 * onehot + 0.75 * (1 - onehot)
    reference = -alpha_t * (1 - p_t) ** 2 * p_t.log()

    elementwise = sigmoid_focal_loss(logits, labels, reduction="none")  # (N, C)
    print(f"reduction='none': shape {tuple(elementwise.shape)}, max |diff| vs closed form "
          f"{(elementwise - reference).abs().max():.2e}")  # fmt: skip
    mean = sigmoid_focal_loss(logits, labels)  # "mean" divides by N·C
    print(f"mean: functional={mean:.6f} closed form={reference.mean():.6f}")

    weight = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # per sample: drop the second one
    weighted = sigmoid_focal_loss(logits, labels, weight=weight, reduction="sum")
    print(f"weight: functional={weighted:.6f} closed form={(reference * weight[:, None]).sum():.6f}")

    num_pos = float((labels < NUM_CLASSES).sum())  # RetinaNet's normaliser: positives, not elements
    per_pos = sigmoid_focal_loss(logits, labels, avg_factor=num_pos)
    print(f"avg_factor={num_pos:.0f}: functional={per_pos:.6f} closed form={reference.sum() / num_pos:.6f}")

    # The module is a thin stateful shell over the same function.
    focal = FocalLoss(gamma=2.0, alpha=0.25)
    print(f"FocalLoss module: mean={focal(logits, labels):.6f} "
          f"sum (reduction_override)={focal(logits, labels, reduction_override='sum'):.6f} "
          f"vs functional sum={sigmoid_focal_loss(logits, labels, reduction='sum'):.6f}")  # fmt: skip
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 25.0]])
    print(f"GIoULoss module={GIoULoss()(boxes + 2, boxes):.6f} functional giou_loss={giou_loss(boxes + 2, boxes):.6f}")


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One filled rectangle per 32×32 image; its brightness encodes its class."""
    gen = torch.Generator().manual_seed(seed)
    xy1 = torch.randint(0, SIZE // 2, (n, 2), generator=gen)
    boxes = torch.cat([xy1, xy1 + torch.randint(6, SIZE // 2, (n, 2), generator=gen)], 1).float()
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    ys, xs = torch.arange(SIZE).view(1, -1, 1), torch.arange(SIZE).view(1, 1, -1)
    inside = (xs >= boxes[:, 0, None, None]) & (xs < boxes[:, 2, None, None])
    inside = inside & (ys >= boxes[:, 1, None, None]) & (ys < boxes[:, 3, None, None])
    images = 0.1 * torch.randn(n, SIZE, SIZE, generator=gen) + inside * (labels + 1).view(-1, 1, 1) / NUM_CLASSES
    return images.unsqueeze(1), labels, boxes


def train_loop() -> None:
    torch.manual_seed(0)
    images, labels, boxes = make_data(512, seed=0)
    body = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, NUM_CLASSES + 4),
    )  # fmt: skip
    loss_cls, loss_bbox = FocalLoss(), GIoULoss(loss_weight=2.0)
    optimizer = torch.optim.Adam(body.parameters(), lr=3e-3)
    for epoch in range(4):
        returned = []
        for i in range(0, len(images), 32):
            out = body(images[i : i + 32])
            # Top-left corner plus a positive size keeps predicted boxes well-formed (xyxy pixels).
            pred_boxes = torch.cat([out[:, 3:5], out[:, 3:5] + out[:, 5:].exp()], 1) * SIZE / 4
            # One object per image: normalise the focal sum by the positives, as detectors do.
            cls_value = loss_cls(out[:, :NUM_CLASSES], labels[i : i + 32], avg_factor=float(len(out)))
            box_value = loss_bbox(pred_boxes, boxes[i : i + 32])
            optimizer.zero_grad()
            (cls_value + box_value).backward()
            optimizer.step()
            returned.append(cls_value.item())
        by_hand = sum(returned) / len(returned)
        print(f"epoch {epoch}: loss_cls.compute()={loss_cls.compute():.6f} (mean of {len(returned)} returned "
              f"values {by_hand:.6f}) loss_bbox.compute()={loss_bbox.compute():.6f}")  # fmt: skip
        loss_cls.reset()
        loss_bbox.reset()
    print(f"after reset(): loss_cls holds {int(loss_cls.num_calls)} calls")


if __name__ == "__main__":
    functional_tour()
    train_loop()

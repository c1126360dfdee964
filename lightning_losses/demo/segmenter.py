"""A tiny three-branch PIDNet-style segmenter trained by :class:`~lightning_losses.PIDNetCriterion`."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex

from lightning_losses.demo.backbone import conv_bn_relu
from lightning_losses.demo.optim import adamw_cosine
from lightning_losses.lightning.mixin import DetectionLossModule
from lightning_losses.presets.pidnet import PIDNetCriterion

__all__ = ["PIDNetSegmenter", "PixelAttentionFusion", "TinyPIDNet"]


def _upsample(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class PixelAttentionFusion(nn.Module):
    r"""PIDNet's Pag: blend coarse context into the detail branch where their embeddings agree.

    .. math::
        \sigma = \mathrm{sigmoid}\bigl(\textstyle\sum_c f_p(p)_c \, f_i(\uparrow i)_c\bigr), \quad
        p' = (1 - \sigma)\,p + \sigma\, g(\uparrow i)

    Args:
        channels: channels of the detail map ``p``.
        context_channels: channels of the context map ``i``.

    Shape:
        ``p`` ``(B, channels, H, W)``, ``i`` ``(B, context_channels, h, w)`` → ``(B, channels, H, W)``.
    """

    def __init__(self, channels: int, context_channels: int) -> None:
        super().__init__()
        self.embed_p = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.embed_i = nn.Sequential(nn.Conv2d(context_channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.project_i = nn.Sequential(nn.Conv2d(context_channels, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, p: Tensor, i: Tensor) -> Tensor:
        i = _upsample(i, p)
        attention = torch.sigmoid((self.embed_p(p) * self.embed_i(i)).sum(dim=1, keepdim=True))
        return (1 - attention) * p + attention * self.project_i(i)


class TinyPIDNet(nn.Module):
    """Three branches at stride 4: P (detail, with Pag fusions), I (context down to stride 32) and D (boundary).

    The P branch gives the auxiliary logits, the D branch the boundary logits, and the Bag fusion
    :math:`\\sigma(d)\\,p + (1 - \\sigma(d))\\,i` of the three the main logits.

    Args:
        num_classes: ``K``.
        channels: P and D branch channels (the I branch runs at 2× and 4×).

    Shape:
        ``(B, 3, H, W)`` → ``(aux (B, K, H/4, W/4), logits (B, K, H/4, W/4), boundary (B, 1, H/4, W/4))``.
    """

    def __init__(self, num_classes: int, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.stem = nn.Sequential(
            conv_bn_relu(3, c // 2, stride=2), conv_bn_relu(c // 2, c, stride=2), conv_bn_relu(c, c)
        )
        self.i1 = nn.Sequential(conv_bn_relu(c, 2 * c, stride=2), conv_bn_relu(2 * c, 2 * c))
        self.i2 = nn.Sequential(conv_bn_relu(2 * c, 4 * c, stride=2), conv_bn_relu(4 * c, 4 * c))
        self.i3 = nn.Sequential(conv_bn_relu(4 * c, 4 * c, stride=2), conv_bn_relu(4 * c, 4 * c))
        self.context = conv_bn_relu(8 * c, c, kernel_size=1)
        self.p1, self.p2 = conv_bn_relu(c, c), conv_bn_relu(c, c)
        self.pag1, self.pag2 = PixelAttentionFusion(c, 2 * c), PixelAttentionFusion(c, 4 * c)
        self.d1, self.d2 = conv_bn_relu(c, c), conv_bn_relu(c, c)
        self.d_lateral1 = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.d_lateral2 = nn.Sequential(nn.Conv2d(4 * c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.bag = conv_bn_relu(c, c)
        self.aux_head = nn.Sequential(conv_bn_relu(c, c), nn.Conv2d(c, num_classes, 1))
        self.main_head = nn.Sequential(conv_bn_relu(c, c), nn.Conv2d(c, num_classes, 1))
        self.boundary_head = nn.Sequential(conv_bn_relu(c, c // 2), nn.Conv2d(c // 2, 1, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.stem(images)
        i1 = self.i1(x)
        p = self.pag1(self.p1(x), i1)
        d = self.d1(x) + _upsample(self.d_lateral1(i1), x)
        i2 = self.i2(i1)
        p = self.pag2(self.p2(p), i2)
        d = self.d2(d) + _upsample(self.d_lateral2(i2), x)
        i3 = self.i3(i2)
        pooled = i3.mean(dim=(2, 3), keepdim=True).expand_as(i3)
        i = _upsample(self.context(torch.cat([i3, pooled], dim=1)), x)
        edge = torch.sigmoid(d)
        fused = self.bag(edge * p + (1 - edge) * i)
        return self.aux_head(p), self.main_head(fused), self.boundary_head(d)


class PIDNetSegmenter(DetectionLossModule, L.LightningModule):
    """Semantic segmentation with a :class:`TinyPIDNet` and PIDNet's four loss terms; logs ``val/miou``.

    Args:
        num_classes: ``K``, background included (4 for the three shape kinds).
        criterion: ``None`` builds ``PIDNetCriterion(K, ohem=True, ohem_min_kept=4096)`` (about 1.5 % of a batch of
            sixteen 128×128 masks).
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        channels: P and D branch channels.
        ignore_index: mask label excluded from the loss and the metric.

    Shape:
        ``forward``: ``(B, 3, H, W)`` → ``(aux_logits (B, K, H/4, W/4), logits (B, K, H/4, W/4),
        boundary_logits (B, 1, H/4, W/4))``; ``predict``: ``(B, 3, H, W)`` → ``(B, H, W)`` int64 classes.
    """

    log_prog_bar = True  # the demo shows its loss (one host read a step); set False to drop it

    def __init__(
        self,
        num_classes: int = 4,
        criterion: PIDNetCriterion | None = None,
        lr: float = 5e-3,
        weight_decay: float = 1e-4,
        channels: int = 32,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(
            criterion=criterion
            if criterion is not None
            else PIDNetCriterion(num_classes, ignore_index, ohem_min_kept=4096)
        )
        if self.criterion.num_classes != num_classes:
            raise ValueError(f"`criterion` has num_classes={self.criterion.num_classes}, the model {num_classes}")
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.lr = lr
        self.weight_decay = weight_decay
        self.net = TinyPIDNet(num_classes, channels)
        self.val_miou = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=ignore_index)
        self.test_miou = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=ignore_index)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.net(images)

    def segment(self, logits: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
        """Class map ``(B, H, W)`` from main ``logits`` resized as the criterion resizes them."""
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
        return logits.argmax(dim=1)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Classes ``(B, H, W)`` of every pixel of ``images`` (the model in its current mode)."""
        return self.segment(self(images)[1], images.shape[-2:])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, masks = batch
        return self.compute_losses(self(images), masks)

    def _evaluate(self, batch: tuple[Tensor, Tensor], metric: Metric) -> Tensor:
        images, masks = batch
        outputs = self(images)
        loss = self.compute_losses(outputs, masks)
        metric.update(self.segment(outputs[1], masks.shape[-2:]), masks)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, self.val_miou)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, self.test_miou)

    def predict_step(self, batch: Tensor | tuple[Tensor, Any], batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict(images)

    def on_validation_epoch_end(self) -> None:
        self.log("val/miou", self.val_miou.compute())
        self.val_miou.reset()

    def on_test_epoch_end(self) -> None:
        self.log("test/miou", self.test_miou.compute())
        self.test_miou.reset()

    def configure_optimizers(self) -> Any:
        return adamw_cosine(self, self.lr, self.weight_decay)

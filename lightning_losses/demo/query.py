"""A tiny query-based (DETR-style) demo detector trained by :class:`~lightning_losses.DETRCriterion`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_losses.assigners.hungarian import cxcywh_to_xyxy
from lightning_losses.demo.backbone import prior_bias
from lightning_losses.demo.dense import DenseDetector, Targets
from lightning_losses.presets.detr import DETRCriterion

__all__ = ["QueryDetector"]

Outputs = tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]], tuple[Tensor, Tensor]]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """:math:`\\log(x / (1 - x))` with ``x`` clamped to ``[eps, 1 - eps]``."""
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def _mlp(channels: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, out))


class DecoderLayer(nn.Module):
    """Self-attention among the queries and a feed-forward block (post-norm), then class logits and a box update.

    The box is refined in logit space from the previous layer's box, detached (Deformable DETR's iterative
    refinement); the query position is an MLP of that box (DAB-DETR).
    """

    def __init__(self, channels: int, num_classes: int, heads: int = 4) -> None:
        super().__init__()
        self.position = nn.Sequential(nn.Linear(4, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(channels)
        self.ffn = _mlp(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        self.cls = nn.Linear(channels, num_classes)
        self.box = _mlp(channels, 4)
        nn.init.constant_(self.cls.bias, prior_bias())
        nn.init.zeros_(self.box[-1].weight)
        nn.init.zeros_(self.box[-1].bias)

    def forward(self, x: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        reference = boxes.detach()
        q = x + self.position(reference)
        x = self.norm1(x + self.attention(q, q, x, need_weights=False)[0])
        x = self.norm2(x + self.ffn(x))
        return x, self.cls(x), (inverse_sigmoid(reference) + self.box(x)).sigmoid()


class QueryDetector(DenseDetector):
    """A tiny RT-DETR-like detector: one query per stride-16 cell, encoder proposals, self-attention decoder layers.

    The FPN's three maps, summed at stride 16, give one token per cell. An encoder head predicts class logits and a
    box for every token (the encoder proposals: anchors at the cell centres, 4 strides wide, moved in logit space);
    the tokens then pass ``num_layers`` :class:`DecoderLayer` blocks, each refining the previous box. Every set —
    the proposals, each intermediate layer and the last one — is matched one-to-one to the boxes by the criterion,
    so the detections need no NMS (the shared decoding still applies one, which changes nothing for distinct boxes).

    Args:
        num_classes: ``C``.
        criterion: ``None`` builds ``DETRCriterion(C, num_aux_layers=num_layers - 1, encoder=True)`` (varifocal,
            L1 and GIoU terms, RT-DETR's weights).
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        channels: FPN, token and decoder channels.
        num_layers: decoder layers.
        score_thr: lowest detection score kept.
        nms_iou: NMS IoU threshold.
        max_det: detections per image.

    Shape:
        ``forward``: ``(B, 3, H, W)`` → ``(pred_logits (B, Q, C), pred_boxes (B, Q, 4) normalised cxcywh,
        aux_outputs [(logits, boxes)] * (num_layers - 1), enc_outputs (logits, boxes))`` with ``Q = H/16 · W/16``.
    """

    @staticmethod
    def default_criterion(num_classes: int, num_layers: int = 2) -> DETRCriterion:
        return DETRCriterion(num_classes, num_aux_layers=num_layers - 1, encoder=True)

    def __init__(
        self,
        num_classes: int = 3,
        criterion: DETRCriterion | None = None,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        channels: int = 32,
        num_layers: int = 2,
        score_thr: float = 0.05,
        nms_iou: float = 0.7,
        max_det: int = 100,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"`num_layers` must be >= 1, got {num_layers}")
        default = self.default_criterion(num_classes, num_layers) if criterion is None else None
        super().__init__(default or criterion, num_classes, lr, weight_decay, channels, score_thr, nms_iou, max_det)
        built = self.criterion  # a config (a reloaded checkpoint's hparams) is built by now
        if not isinstance(built, DETRCriterion):
            raise TypeError(f"`criterion` must be a DETRCriterion, got {type(built).__name__}")
        if built.num_aux_layers != num_layers - 1 or not built.encoder or built.classification == "ce":
            raise ValueError(
                f"`criterion` must score {num_layers - 1} auxiliary layers and the encoder proposals with sigmoid "
                f"classes (num_aux_layers={num_layers - 1}, encoder=True, classification 'vfl' or 'focal'), got "
                f"num_aux_layers={built.num_aux_layers}, encoder={built.encoder}, "
                f"classification={built.classification!r}"
            )
        self.save_hyperparameters()
        self.token = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.ReLU())
        self.enc_cls = nn.Linear(channels, num_classes)
        self.enc_box = _mlp(channels, 4)
        nn.init.constant_(self.enc_cls.bias, prior_bias())
        self.layers = nn.ModuleList(DecoderLayer(channels, num_classes) for _ in range(num_layers))

    def anchors(self, height: int, width: int, device: torch.device) -> Tensor:
        """``(h·w, 4)`` normalised ``cxcywh`` anchors: the cell centres, 4 strides wide."""
        ys, xs = torch.meshgrid(
            (torch.arange(height, device=device) + 0.5) / height,
            (torch.arange(width, device=device) + 0.5) / width,
            indexing="ij",
        )
        sizes = torch.tensor([4.0 / width, 4.0 / height], device=device).expand(height * width, 2)
        return torch.cat([torch.stack([xs, ys], -1).reshape(-1, 2), sizes], -1)

    def forward(self, images: Tensor) -> Outputs:
        finer, middle, coarser = self.features(images)
        # One token per stride-16 cell, from all three levels (the finer one pooled, the coarser one upsampled).
        merged = middle + F.avg_pool2d(finer, 2) + F.interpolate(coarser, size=middle.shape[-2:], mode="nearest")
        feature = self.token(merged)
        height, width = feature.shape[-2:]
        x = feature.flatten(2).transpose(1, 2)  # (B, Q, channels)
        anchors = inverse_sigmoid(self.anchors(height, width, images.device))
        boxes = (anchors + self.enc_box(x)).sigmoid()
        enc = (self.enc_cls(x), boxes)
        sets = []
        for layer in self.layers:
            x, logits, boxes = layer(x, boxes)
            sets.append((logits, boxes))
        logits, boxes = sets[-1]
        return logits, boxes, sets[:-1], enc

    def decode(self, outputs: Outputs, image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        logits, boxes = outputs[0], outputs[1]
        height, width = float(image_size[0]), float(image_size[1])
        scale = torch.tensor([width, height, width, height], device=boxes.device)
        return cxcywh_to_xyxy(boxes.float()) * scale, logits.float().sigmoid()

    def _losses(self, outputs: Outputs, targets: Targets, image_size: Sequence[int]) -> Tensor:
        logits, boxes, aux, enc = outputs
        return self.compute_losses(
            (logits, boxes), targets, image_size=tuple(image_size), aux_outputs=aux, enc_outputs=enc
        )

    def training_step(self, batch: tuple[Tensor, Targets], batch_idx: int) -> Tensor:
        images, targets = batch
        return self._losses(self(images), targets, images.shape[-2:])

    def _evaluate(self, batch: tuple[Tensor, Targets], metric: Any) -> Tensor:
        images, targets = batch
        outputs = self(images)
        loss = self._losses(outputs, targets, images.shape[-2:])
        metric.update(self.postprocess(outputs, images.shape[-2:]), list(targets))
        return loss

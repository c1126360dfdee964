"""What the demo detectors share: the base LightningModule, COCO mAP and NMS decoding."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_losses.boxes.priors import AnchorGenerator, PointGenerator
from lightning_losses.demo.backbone import FPN, STRIDES, TinyBackbone
from lightning_losses.demo.optim import adamw_cosine
from lightning_losses.lightning.mixin import DetectionLossModule
from lightning_losses.presets.base import DenseCriterion

__all__ = [
    "DenseDetector",
    "Detections",
    "level_priors",
    "mean_average_precision",
    "prior_strides",
    "select_detections",
]

Detections = list[dict[str, Tensor]]
Targets = Sequence[Mapping[str, Tensor]]


def mean_average_precision() -> Metric:
    """COCO box mAP (``torchmetrics``' ``MeanAveragePrecision``), on ``faster_coco_eval`` when installed."""
    from torchmetrics.detection.mean_ap import MeanAveragePrecision

    backend = "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"
    return MeanAveragePrecision(iou_type="bbox", backend=backend)


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    image_size: Sequence[int],
    score_thr: float = 0.05,
    nms_iou: float = 0.5,
    max_det: int = 100,
    pre_nms_top_k: int = 1000,
) -> Detections:
    """Final detections from dense candidates: top-k, score threshold, clipping, class-wise NMS.

    Every ``(prior, class)`` pair is a candidate: the ``pre_nms_top_k`` best of each image (over all levels)
    above ``score_thr`` are clipped to the image, boxes of zero area are dropped, and
    ``torchvision.ops.batched_nms`` keeps at most ``max_det`` per image.

    Args:
        boxes: decoded ``xyxy`` boxes of each prior.
        scores: class scores in ``[0, 1]``.
        image_size: ``(H, W)``.
        score_thr: lowest score kept.
        nms_iou: IoU above which a lower-scored box of the same class is suppressed.
        max_det: detections per image.
        pre_nms_top_k: candidates per image entering NMS.

    Shape:
        ``boxes`` ``(B, P, 4)``, ``scores`` ``(B, P, C)``.

    Returns:
        One ``{"boxes": (D, 4), "scores": (D,), "labels": (D,) int64}`` per image, by decreasing score.
    """
    from torchvision.ops import batched_nms

    batch, num_priors, num_classes = scores.shape
    top, index = scores.reshape(batch, -1).float().topk(min(pre_nms_top_k, num_priors * num_classes), dim=1)
    labels = index % num_classes
    candidates = boxes.float().gather(1, (index // num_classes)[..., None].expand(-1, -1, 4))
    height, width = float(image_size[0]), float(image_size[1])
    x = candidates[..., 0::2].clamp(0.0, width)
    y = candidates[..., 1::2].clamp(0.0, height)
    candidates = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)
    valid = (top > score_thr) & (x[..., 1] > x[..., 0]) & (y[..., 1] > y[..., 0])
    results = []
    for b in range(batch):
        keep = valid[b]
        kept_boxes, kept_scores, kept_labels = candidates[b][keep], top[b][keep], labels[b][keep]
        order = batched_nms(kept_boxes, kept_scores, kept_labels, nms_iou)[:max_det]
        results.append({"boxes": kept_boxes[order], "scores": kept_scores[order], "labels": kept_labels[order]})
    return results


def prior_strides(sizes: Sequence[tuple[int, int]], per_cell: int, device: torch.device) -> Tensor:
    """The stride of each prior, priors ordered as the generators order them (``per_cell`` per cell)."""
    counts = torch.tensor([h * w * per_cell for h, w in sizes], device=device)
    return torch.repeat_interleave(torch.tensor(STRIDES, dtype=torch.float32, device=device), counts)


def level_priors(
    maps: Sequence[Tensor], generator: AnchorGenerator | PointGenerator
) -> tuple[list[tuple[int, int]], Tensor]:
    """The feature-map sizes of one head output per level and ``generator``'s priors of all levels in one tensor.

    The one rule by which every demo dense detector's :meth:`DenseDetector.decode` finds its priors: sizes
    ``(H_l, W_l)`` are the maps' last two dimensions (the criteria's ``featmap_sizes``), and the priors are
    ``generator.grid_priors(sizes, device)`` of the first map's device, concatenated over levels (float32 rows
    ordered level, ``y``, ``x``, prior within a cell: the order of ``flatten_levels``). What differs between the
    detectors (anchors or points, their strides and cell offset) is the ``generator`` they pass.

    Args:
        maps: per-level maps ``(B, ·, H_l, W_l)``, levels in the generator's stride order.
        generator: the prior generator: a criterion's ``anchor_generator`` / ``point_generator``, or a
            ``PointGenerator`` of the backbone's strides.

    Returns:
        ``sizes`` (one ``(H_l, W_l)`` per level) and the priors ``(Σ_l H_l·W_l·A, 4)`` anchors or ``(Σ_l H_l·W_l, 2)``
        points.
    """
    if isinstance(maps, Tensor) or not isinstance(maps, Sequence):
        raise TypeError(f"`maps` must be a sequence of per-level tensors, got {type(maps).__name__}")
    if not maps:
        raise ValueError("`maps` must hold one map per level, got none")
    sizes = DenseCriterion.featmap_sizes(maps)
    return sizes, torch.cat(generator.grid_priors(sizes, maps[0].device))


class DenseDetector(DetectionLossModule, L.LightningModule):
    """What the demo detectors share: backbone, FPN, the loss / metric loops, decoding and the optimiser.

    A subclass builds ``self.head``, returns the head's outputs in its criterion's layout from
    :meth:`forward` and turns them into per-prior boxes and class scores in :meth:`decode`. Training
    calls ``compute_losses`` (which logs ``{stage}/loss_*`` and ``{stage}/loss``); validation and test also
    decode and log COCO ``{stage}/map`` and ``{stage}/map_50``.

    Args:
        criterion: the preset computing the loss terms (``None``: :meth:`default_criterion`); its strides must be
            the backbone's ``(8, 16, 32)``.
        num_classes: ``C``.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's weight decay.
        channels: FPN and head channels.
        score_thr: lowest detection score kept.
        nms_iou: NMS IoU threshold.
        max_det: detections per image.
    """

    log_prog_bar = True  # the demo shows its loss (one host read a step); set False to drop it

    def __init__(
        self,
        criterion: nn.Module | None,
        num_classes: int,
        lr: float,
        weight_decay: float,
        channels: int,
        score_thr: float,
        nms_iou: float,
        max_det: int,
    ) -> None:
        if criterion is None:
            criterion = self.default_criterion(num_classes)
        super().__init__(criterion=criterion)
        if getattr(criterion, "num_classes", num_classes) != num_classes:
            raise ValueError(f"`criterion` has num_classes={criterion.num_classes}, the model {num_classes}")
        strides = getattr(criterion, "strides", STRIDES)
        if tuple(strides) != STRIDES and not getattr(criterion, "derive_strides", False):
            raise ValueError(f"`criterion` strides must be the backbone's {STRIDES}, got {tuple(strides)}")
        self.num_classes = num_classes
        self.lr = lr
        self.weight_decay = weight_decay
        self.score_thr = score_thr
        self.nms_iou = nms_iou
        self.max_det = max_det
        self.backbone = TinyBackbone()
        self.neck = FPN(self.backbone.out_channels, channels)
        self.val_map = mean_average_precision()
        self.test_map = mean_average_precision()

    @staticmethod
    def default_criterion(num_classes: int) -> nn.Module:
        """The criterion used when none is given."""
        raise NotImplementedError

    def features(self, images: Tensor) -> list[Tensor]:
        """FPN maps at strides 8, 16 and 32."""
        return self.neck(self.backbone(images))

    def criterion_inputs(self, outputs: Any) -> tuple[Any, ...]:
        """The criterion's positional inputs before ``targets``, from :meth:`forward`'s outputs."""
        return tuple(outputs)

    def decode(self, outputs: Any, image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Per-prior ``xyxy`` boxes ``(B, P, 4)`` and class scores ``(B, P, C)`` from :meth:`forward`'s outputs."""
        raise NotImplementedError

    def postprocess(self, outputs: Any, image_size: Sequence[int]) -> Detections:
        """Detections per image from :meth:`forward`'s outputs (see :func:`select_detections`)."""
        boxes, scores = self.decode(outputs, image_size)
        return select_detections(boxes, scores, image_size, self.score_thr, self.nms_iou, self.max_det)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Detections:
        """Detect objects in ``images`` ``(B, 3, H, W)`` with the model in its current mode (call ``eval()`` first).

        Returns:
            One ``{"boxes": (D, 4) xyxy pixels, "scores": (D,), "labels": (D,) int64}`` per image.
        """
        return self.postprocess(self(images), images.shape[-2:])

    def training_step(self, batch: tuple[Tensor, Targets], batch_idx: int) -> Tensor:
        images, targets = batch
        return self.compute_losses(self.criterion_inputs(self(images)), targets, image_size=images.shape[-2:])

    def _evaluate(self, batch: tuple[Tensor, Targets], metric: Metric) -> Tensor:
        images, targets = batch
        outputs = self(images)
        loss = self.compute_losses(self.criterion_inputs(outputs), targets, image_size=images.shape[-2:])
        metric.update(self.postprocess(outputs, images.shape[-2:]), list(targets))
        return loss

    def validation_step(self, batch: tuple[Tensor, Targets], batch_idx: int) -> Tensor:
        return self._evaluate(batch, self.val_map)

    def test_step(self, batch: tuple[Tensor, Targets], batch_idx: int) -> Tensor:
        return self._evaluate(batch, self.test_map)

    def predict_step(self, batch: Tensor | tuple[Tensor, Any], batch_idx: int) -> Detections:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict(images)

    def _log_map(self, metric: Metric, stage: str) -> None:
        result = metric.compute()
        self.log(f"{stage}/map_50", result["map_50"])
        self.log(f"{stage}/map", result["map"])
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def configure_optimizers(self) -> Any:
        return adamw_cosine(self, self.lr, self.weight_decay)

"""``CocoPredictionWriter``: ``predict_step``'s detections as a COCO results JSON file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

__all__ = ["CocoPredictionWriter", "coco_results"]


def coco_results(
    detections: Sequence[Mapping[str, Tensor]],
    images: Sequence[Mapping[str, Any]],
    label_to_category_id: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """COCO results entries ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` of some images.

    Boxes are divided by each image's ``scale`` (the resize from the original image to the tensor the model
    saw) and clipped to the original ``width`` × ``height`` (a box left without area, one on the padding, is
    dropped); labels become category ids through ``label_to_category_id`` (the label itself without one).

    Args:
        detections: one ``{"boxes": (D, 4) xyxy pixels, "scores": (D,), "labels": (D,)}`` per image.
        images: one ``{"id", "width", "height", "scale": (x, y)}`` per image (``width`` / ``height`` may be
            ``None``: no clipping).
        label_to_category_id: the category id of each contiguous label.

    Example:
        >>> det = {"boxes": torch.tensor([[2.0, 4.0, 10.0, 8.0]]), "scores": torch.tensor([0.5]),
        ...        "labels": torch.tensor([1])}
        >>> coco_results([det], [{"id": 7, "width": 20, "height": 20, "scale": (2.0, 2.0)}], [3, 9])
        [{'image_id': 7, 'category_id': 9, 'bbox': [1.0, 2.0, 4.0, 2.0], 'score': 0.5}]
    """
    if len(detections) != len(images):
        raise ValueError(f"`detections` has {len(detections)} images, `images` {len(images)}")
    results = []
    for detection, image in zip(detections, images, strict=True):
        boxes = detection["boxes"].detach().float().cpu()
        scale_x, scale_y = (float(s) for s in image.get("scale", (1.0, 1.0)))
        boxes = boxes / boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
        if image.get("width") is not None and image.get("height") is not None:
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0.0, float(image["width"]))
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0.0, float(image["height"]))
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        keep = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        labels = detection["labels"].detach().cpu()[keep].tolist()
        scores = detection["scores"].detach().float().cpu()[keep].tolist()
        xywh = xywh[keep].tolist()
        for box, label, score in zip(xywh, labels, scores, strict=True):
            category = int(label_to_category_id[label]) if label_to_category_id is not None else int(label)
            results.append({"image_id": image["id"], "category_id": category, "bbox": box, "score": score})
    return results


class CocoPredictionWriter(BasePredictionWriter):
    """Write the detections of ``trainer.predict`` as one COCO results JSON (a list of entries).

    ``predict_step`` returns one ``{"boxes", "scores", "labels"}`` dict per image of the batch (as the demo
    detectors do). The data module, when it has them, supplies ``image_info(index, split="predict")`` (image
    id, original size and the resize scale of dataset item ``index``; without it the id is the index and boxes
    stay as predicted) and ``label_to_category_id`` (without it the category id is the label), as
    :class:`~lightning_losses.data.CocoDetectionDataModule` does. The file goes to ``output_dir``, or the
    trainer's log directory, as ``filename``; with several processes the entries are gathered and global
    rank 0 writes them. The path written last is :attr:`path`.

    Args:
        output_dir: folder of the file (``None``: ``trainer.log_dir``, the first logger's folder or the
            trainer's ``default_root_dir``).
        filename: the file's name.
    """

    def __init__(self, output_dir: str | None = None, filename: str = "predictions.json") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.filename = filename
        self.path: Path | None = None
        self._entries: list[dict[str, Any]] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._entries = []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, Sequence) or not all(isinstance(p, Mapping) for p in prediction):
            raise TypeError(
                "CocoPredictionWriter needs predict_step to return one {'boxes', 'scores', 'labels'} dict per "
                f"image, got {type(prediction).__name__}"
            )
        if batch_indices is None:
            raise RuntimeError("the predict loop did not track dataset indices; use a map-style dataset")
        datamodule = getattr(trainer, "datamodule", None)
        describe = getattr(datamodule, "image_info", None)
        images = [describe(int(i), "predict") if callable(describe) else {"id": int(i)} for i in batch_indices]
        self._entries += coco_results(prediction, images, getattr(datamodule, "label_to_category_id", None))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        entries = self._entries
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, entries)
            entries = [entry for part in gathered for entry in part]
        folder = self.output_dir or trainer.log_dir or "."
        self.path = Path(folder) / self.filename
        self._entries = []
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(entries) + "\n")

"""``CocoDetectionDataModule``: a user's COCO-format data set in the demo models' batch format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_losses.data.coco import CocoAnnotations, CocoDetection, read_coco
from lightning_losses.data.loaders import SplitLoaders
from lightning_losses.data.transforms import ResizePad

__all__ = ["CocoDetectionDataModule"]

STAGES = ("train", "val", "test", "predict")


class CocoDetectionDataModule(SplitLoaders, L.LightningDataModule):
    """Detection data in COCO format: one instances JSON and one image folder per split.

    Files are found under ``root`` by the patterns ``annotation_file`` and ``image_dir`` with ``{split}``
    replaced by the split's name; the defaults read ``root/annotations/instances_train.json`` with images in
    ``root/train/`` (for COCO 2017 set ``train_split: train2017``, ``val_split: val2017``). Each split is read
    by :func:`~lightning_losses.data.coco.read_coco`: category ids become contiguous labels ``0 … K − 1`` in
    ascending id order (:attr:`label_to_category_id` maps them back; every split must have the same
    categories), ``xywh`` boxes become absolute-pixel ``xyxy``, images without annotations are kept, and
    **crowd regions (``iscrowd=1``) are dropped from the targets** (the criteria here have no ignore regions; a
    detection on a crowd region then counts as a false positive in the validation mAP, where COCO's own
    evaluation would ignore it). Boxes of width or height ≤ 0 are dropped; both counts are reported per split
    in :attr:`dropped` and a warning names the degenerate ones.

    Every image is resized to ``image_size`` (keeping its aspect ratio and padding at the bottom and right
    with ``keep_ratio``), training images are flipped horizontally with probability ``flip_prob``
    (:class:`~lightning_losses.data.transforms.ResizePad`). Batches are those of
    :class:`~lightning_losses.demo.SyntheticShapesDataModule`: ``(images (B, 3, H, W) float32 in [0, 1],
    [{"boxes": (M, 4) xyxy, "labels": (M,) int64}, …])``.

    :attr:`num_classes` is read from the first configured split when the module is built, so the CLI can link
    it into the model and its criterion. The predict split (``predict_split``, else ``test_split``, else
    ``val_split``) gives the same batches, and :meth:`image_info` the image ids and scales a prediction
    writer needs to write COCO results in original pixels.

    Args:
        root: the data set's folder.
        train_split: name of the training split (``None``: none).
        val_split: name of the validation split.
        test_split: name of the test split.
        predict_split: name of the split to predict on (``None``: the test split, else the validation split).
        annotation_file: path of a split's instances JSON under ``root``, ``{split}`` replaced.
        image_dir: folder of a split's images under ``root``, ``{split}`` replaced.
        image_size: ``(H, W)`` of every batch, or one int for squares.
        keep_ratio: resize by one factor and pad (``True``) or stretch to ``image_size``.
        flip_prob: horizontal flip probability of training images.
        batch_size: images per batch.
        num_workers: dataloader workers (persistent when positive).
        pin_memory: page-locked batches, for faster copies to a GPU.
        seed: seed of the training order.
    """

    def __init__(
        self,
        root: str,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = None,
        predict_split: str | None = None,
        annotation_file: str = "annotations/instances_{split}.json",
        image_dir: str = "{split}",
        image_size: int | Sequence[int] = 512,
        keep_ratio: bool = True,
        flip_prob: float = 0.5,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need `batch_size` >= 1 and `num_workers` >= 0, got {batch_size} and {num_workers}")
        self.save_hyperparameters()
        self.root = Path(root)
        predict_split = predict_split or test_split or val_split
        self.splits = {"train": train_split, "val": val_split, "test": test_split, "predict": predict_split}
        if not any(self.splits.values()):
            raise ValueError("no split given: set at least one of `train_split`, `val_split`, `test_split`")
        self.annotation_file = annotation_file
        self.image_dir = image_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.transforms = {
            stage: ResizePad(image_size, keep_ratio, flip_prob if stage == "train" else 0.0) for stage in STAGES
        }
        self.dropped: dict[str, dict[str, int]] = {}
        self._annotations: dict[str, CocoAnnotations] = {}
        first = next(name for name in self.splits.values() if name)
        self.category_ids = self.annotations(first).category_ids

    @property
    def num_classes(self) -> int:
        """``K``, the number of categories (the CLI links it into the model and its criterion)."""
        return len(self.category_ids)

    @property
    def label_to_category_id(self) -> list[int]:
        """The COCO category id of each label ``0 … K − 1``."""
        return list(self.category_ids)

    @property
    def category_names(self) -> list[str]:
        """The category name of each label."""
        first = next(name for name in self.splits.values() if name)
        return list(self.annotations(first).category_names)

    def paths(self, split: str) -> tuple[Path, Path]:
        """The instances JSON and the image folder of split ``split`` (a split's name, e.g. ``"val2017"``)."""
        return self.root / self.annotation_file.format(split=split), self.root / self.image_dir.format(split=split)

    def annotations(self, split: str) -> CocoAnnotations:
        """The :class:`~lightning_losses.data.coco.CocoAnnotations` of split ``split``, read once."""
        if split not in self._annotations:
            path, _ = self.paths(split)
            if not path.is_file():
                raise FileNotFoundError(f"annotations of split {split!r} not found: {path}")
            known = getattr(self, "category_ids", None)
            annotations = read_coco(path, known)
            self._annotations[split] = annotations
            self.dropped[split] = {"crowd": annotations.num_crowd, "degenerate": annotations.num_degenerate}
            rank_zero_info(
                f"{path}: {len(annotations)} images, {len(annotations.labels)} boxes, "
                f"{annotations.num_crowd} crowd regions dropped"
            )
            if annotations.num_degenerate:
                rank_zero_warn(f"{path}: {annotations.num_degenerate} boxes with width or height <= 0 dropped")
        return self._annotations[split]

    def dataset(self, stage: str) -> CocoDetection:
        """The :class:`~lightning_losses.data.coco.CocoDetection` of ``stage`` (train, val, test or predict)."""
        if stage not in STAGES:
            raise ValueError(f"`stage` must be one of {STAGES}, got {stage!r}")
        split = self.splits[stage]
        if not split:
            raise ValueError(f"no split is configured for stage {stage!r}: set `{stage}_split`")
        _, folder = self.paths(split)
        return CocoDetection(self.annotations(split), folder, self.transforms[stage])

    def image_info(self, index: int, split: str = "predict") -> dict[str, Any]:
        """``{"id", "file_name", "width", "height", "scale": (x, y)}`` of item ``index`` of stage ``split``."""
        return self.dataset(split).image_info(index)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for name in wanted.get(stage or "", STAGES):
            if self.splits[name]:
                self.annotations(self.splits[name])

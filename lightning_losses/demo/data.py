"""Synthetic shapes: deterministic images of rectangles, ellipses and triangles for detection and segmentation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_losses.data.collate import DetectionTarget, collate_detection
from lightning_losses.data.loaders import SplitLoaders

__all__ = [
    "SHAPES",
    "ShapesSample",
    "SyntheticShapes",
    "SyntheticShapesDataModule",
    "collate_detection",
    "render_shapes",
    "sample_seed",
    "tight_boxes",
]

SHAPES = ("rectangle", "ellipse", "triangle")
TASKS = ("detection", "segmentation")
SPLITS = ("train", "val", "test")

# Shape extents at a 128-pixel image; they scale with the image size.
_MIN_SIZE, _MAX_SIZE, _REFERENCE_SIZE = 10.0, 60.0, 128.0
_MIN_VISIBLE = 0.3
_NOISE_STD = 0.08
_MIN_CONTRAST = 0.5
_COLOR_CANDIDATES = 8


@dataclass(frozen=True)
class ShapesSample:
    """One rendered image with everything known about its shapes, painted in order (later on top).

    Attributes:
        image: ``(3, H, W)`` float32 in ``[0, 1]``.
        mask: ``(H, W)`` int64 semantic mask: 0 background, ``1 + kind`` where a shape is on top.
        visible: ``(N, H, W)`` bool, the pixels where each painted shape is on top.
        areas: ``(N,)`` int64 pixel count of each shape before later shapes covered it.
        kinds: ``(N,)`` int64 shape kind (0 rectangle, 1 ellipse, 2 triangle).
        colors: ``(N, 3)`` float32 fill colour of each shape.
        keep: ``(N,)`` bool, shapes at least 30 % visible: the annotated objects.
        boxes: ``(M, 4)`` float32 ``xyxy`` tight boxes of the kept shapes' visible pixels, pixel edges
            (a shape covering columns ``x0..x1`` spans ``[x0, x1 + 1)``).
        labels: ``(M,)`` int64 kinds of the kept shapes.
    """

    image: Tensor
    mask: Tensor
    visible: Tensor
    areas: Tensor
    kinds: Tensor
    colors: Tensor
    keep: Tensor
    boxes: Tensor
    labels: Tensor


def sample_seed(seed: int, split: str, index: int) -> int:
    """The generator seed of image ``index`` of ``split`` for dataset seed ``seed`` (distinct per triple)."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
    return ((int(seed) * len(SPLITS) + SPLITS.index(split)) * 1_000_000_007 + int(index)) % (1 << 63)


def _uniform(generator: torch.Generator, low: float, high: float, size: int = 1) -> Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def _fill_color(background: Tensor, generator: torch.Generator) -> Tensor:
    # The first candidate far enough from the background, else the farthest one.
    candidates = torch.rand(_COLOR_CANDIDATES, 3, generator=generator)
    distance = (candidates - background).norm(dim=1)
    far = distance >= _MIN_CONTRAST
    choice = far.int().argmax() if bool(far.any()) else distance.argmax()
    return candidates[choice]


def _shape_mask(kind: int, xs: Tensor, ys: Tensor, size: float, generator: torch.Generator) -> Tensor:
    """``(H, W)`` bool mask of one filled shape lying wholly inside the image, sampled from ``generator``."""
    height, width = ys.shape[0], xs.shape[1]
    low, high = _MIN_SIZE * size, _MAX_SIZE * size
    if kind == 0:
        w, h = _uniform(generator, low, high, 2).tolist()
        cx = float(_uniform(generator, w / 2, width - w / 2))
        cy = float(_uniform(generator, h / 2, height - h / 2))
        return ((xs - cx).abs() <= w / 2) & ((ys - cy).abs() <= h / 2)
    if kind == 1:
        w, h = _uniform(generator, low, high, 2).tolist()
        angle = float(_uniform(generator, 0.0, math.pi))
        radius = max(w, h) / 2
        cx = float(_uniform(generator, radius, width - radius))
        cy = float(_uniform(generator, radius, height - radius))
        cos, sin = math.cos(angle), math.sin(angle)
        u = (xs - cx) * cos + (ys - cy) * sin
        v = -(xs - cx) * sin + (ys - cy) * cos
        return (u / (w / 2)) ** 2 + (v / (h / 2)) ** 2 <= 1.0
    radius = float(_uniform(generator, low, high)) / 2
    cx = float(_uniform(generator, radius, width - radius))
    cy = float(_uniform(generator, radius, height - radius))
    # Vertices near the three directions of an equilateral triangle keep the triangle fat.
    angles = _uniform(generator, 0.0, 2 * math.pi) + torch.arange(3) * (2 * math.pi / 3)
    angles = angles + _uniform(generator, -0.35, 0.35, 3)
    radii = radius * _uniform(generator, 0.8, 1.0, 3)
    vx = (cx + radii * torch.cos(angles)).tolist()
    vy = (cy + radii * torch.sin(angles)).tolist()
    edges = [(vx[(k + 1) % 3] - vx[k]) * (ys - vy[k]) - (vy[(k + 1) % 3] - vy[k]) * (xs - vx[k]) for k in range(3)]
    return ((edges[0] >= 0) & (edges[1] >= 0) & (edges[2] >= 0)) | ((edges[0] <= 0) & (edges[1] <= 0) & (edges[2] <= 0))


def tight_boxes(masks: Tensor) -> Tensor:
    """``(N, 4)`` ``xyxy`` boxes around the true pixels of each ``(N, H, W)`` mask (pixel edges; masks non-empty).

    Example:
        >>> m = torch.zeros(1, 4, 5, dtype=torch.bool)
        >>> m[0, 1:3, 2] = True
        >>> tight_boxes(m)
        tensor([[2., 1., 3., 3.]])
    """
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    height, width = masks.shape[-2:]
    y1 = rows.int().argmax(dim=1)
    y2 = height - rows.flip(1).int().argmax(dim=1)
    x1 = cols.int().argmax(dim=1)
    x2 = width - cols.flip(1).int().argmax(dim=1)
    return torch.stack([x1, y1, x2, y2], dim=1).float()


def render_shapes(
    generator: torch.Generator,
    image_size: int = 128,
    num_shape_classes: int = 3,
    min_objects: int = 1,
    max_objects: int = 8,
) -> ShapesSample:
    """Render one image: a noisy background, then shapes painted one over the other.

    Every random draw comes from ``generator``, so a seeded generator gives the same sample. Shapes are
    ``10–60`` pixels across at 128 pixels (scaled with ``image_size``), lie wholly inside the image and
    have a fill colour at least 0.5 (Euclidean, RGB) from the background's base colour where possible.
    A shape less than 30 % visible after later shapes is painted but not annotated.

    Args:
        generator: the source of randomness.
        image_size: ``H = W``.
        num_shape_classes: shape kinds used, the first ``num_shape_classes`` of :data:`SHAPES`.
        min_objects: fewest shapes painted.
        max_objects: most shapes painted.

    Returns:
        A :class:`ShapesSample`.
    """
    scale = image_size / _REFERENCE_SIZE
    coords = torch.arange(image_size, dtype=torch.float32) + 0.5
    xs, ys = coords[None, :], coords[:, None]
    background = torch.rand(3, generator=generator)
    noise = _NOISE_STD * torch.randn(3, image_size, image_size, generator=generator)
    count = int(torch.randint(min_objects, max_objects + 1, (1,), generator=generator))
    kinds = torch.randint(0, num_shape_classes, (count,), generator=generator)
    image = (background.view(3, 1, 1) + noise).clamp(0.0, 1.0)
    # 1 + the index of the top shape at each pixel, 0 for background.
    top = torch.zeros(image_size, image_size, dtype=torch.long)
    colors, areas = [], []
    for index, kind in enumerate(kinds.tolist()):
        color = _fill_color(background, generator)
        shape = _shape_mask(kind, xs, ys, scale, generator)
        image = torch.where(shape, color.view(3, 1, 1), image)
        top.masked_fill_(shape, index + 1)
        colors.append(color)
        areas.append(shape.sum())
    fill = torch.stack(colors) if colors else torch.zeros(0, 3)
    full_areas = torch.stack(areas) if areas else torch.zeros(0, dtype=torch.long)

    visible = top[None] == torch.arange(1, count + 1).view(-1, 1, 1)
    visible_areas = torch.bincount(top.flatten(), minlength=count + 1)[1:]
    keep = (visible_areas >= _MIN_VISIBLE * full_areas) & (full_areas > 0)
    mask = torch.cat([torch.zeros(1, dtype=torch.long), kinds + 1]).take(top)
    return ShapesSample(
        image=image,
        mask=mask,
        visible=visible,
        areas=full_areas,
        kinds=kinds,
        colors=fill,
        keep=keep,
        boxes=tight_boxes(visible[keep]),
        labels=kinds[keep],
    )


class SyntheticShapes(Dataset):
    """A split of synthetic shapes, rendered on the fly from ``(seed, split, index)``.

    Args:
        task: ``"detection"`` (items ``(image, {"boxes", "labels"})``) or ``"segmentation"`` (``(image, mask)``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        length: number of images.
        image_size: ``H = W``.
        num_shape_classes: shape kinds used.
        min_objects: fewest shapes per image.
        max_objects: most shapes per image.
        seed: dataset seed.
    """

    def __init__(
        self,
        task: str,
        split: str,
        length: int,
        image_size: int = 128,
        num_shape_classes: int = 3,
        min_objects: int = 1,
        max_objects: int = 8,
        seed: int = 0,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}, got {task!r}")
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
        self.task = task
        self.split = split
        self.length = int(length)
        self.image_size = image_size
        self.num_shape_classes = num_shape_classes
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def render(self, index: int) -> ShapesSample:
        """The full :class:`ShapesSample` of image ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"`index` {index} out of range for {self.length} images")
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.split, index))
        return render_shapes(generator, self.image_size, self.num_shape_classes, self.min_objects, self.max_objects)

    def __getitem__(self, index: int) -> tuple[Tensor, DetectionTarget | Tensor]:
        sample = self.render(index)
        if self.task == "segmentation":
            return sample.image, sample.mask
        return sample.image, {"boxes": sample.boxes, "labels": sample.labels}


class SyntheticShapesDataModule(SplitLoaders, L.LightningDataModule):
    """Synthetic rectangles, ellipses and triangles on noisy backgrounds, for detection or segmentation.

    Images are rendered on the fly and deterministically from ``(seed, split, index)``; the class of a
    shape is its kind (0 rectangle, 1 ellipse, 2 triangle), its colour is random. Detection batches are
    ``(images (B, 3, H, W) in [0, 1], [{"boxes": (M, 4) xyxy pixels, "labels": (M,)}, …])`` with boxes the
    exact tight boxes of each object's visible pixels; segmentation batches are ``(images, masks (B, H, W))``
    with background 0 and shape classes ``1..num_shape_classes`` (``K = num_shape_classes + 1``).
    :attr:`num_classes` is the class count a model predicts for the task (``num_shape_classes``, or ``K``);
    the CLI links it into the model and its criterion. The predict split is the test split's images (read
    with their targets; ``predict_step`` uses the images).

    Args:
        task: ``"detection"`` or ``"segmentation"``.
        image_size: ``H = W`` in pixels.
        num_shape_classes: shape kinds, 1 to 3.
        num_train: training images.
        num_val: validation (and test) images.
        batch_size: images per batch.
        min_objects: fewest shapes per image.
        max_objects: most shapes per image.
        seed: dataset seed (images and the training order).
        num_workers: dataloader workers.

    Example:
        >>> dm = SyntheticShapesDataModule(num_train=4, num_val=2, batch_size=2)
        >>> dm.setup("fit")
        >>> images, targets = next(iter(dm.train_dataloader()))
        >>> images.shape, sorted(targets[0])
        (torch.Size([2, 3, 128, 128]), ['boxes', 'labels'])
    """

    def __init__(
        self,
        task: str = "detection",
        image_size: int = 128,
        num_shape_classes: int = 3,
        num_train: int = 1024,
        num_val: int = 128,
        batch_size: int = 16,
        min_objects: int = 1,
        max_objects: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}, got {task!r}")
        if not 1 <= num_shape_classes <= len(SHAPES):
            raise ValueError(f"`num_shape_classes` must lie in [1, {len(SHAPES)}], got {num_shape_classes}")
        if image_size < 16:
            raise ValueError(f"`image_size` must be at least 16, got {image_size}")
        if not 0 <= min_objects <= max_objects:
            raise ValueError(f"need 0 <= `min_objects` <= `max_objects`, got {min_objects} and {max_objects}")
        if num_train < 1 or num_val < 1 or batch_size < 1:
            raise ValueError(
                f"`num_train`, `num_val` and `batch_size` must be positive, got {num_train}, {num_val}, {batch_size}"
            )
        self.save_hyperparameters()
        self.task = task
        self.image_size = image_size
        self.num_shape_classes = num_shape_classes
        self.num_train = num_train
        self.num_val = num_val
        self.batch_size = batch_size
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.seed = seed
        self.num_workers = num_workers

    @property
    def num_classes(self) -> int:
        """Classes a model predicts: ``num_shape_classes`` for detection, ``num_shape_classes + 1`` for segmentation."""
        return self.num_shape_classes + (self.task == "segmentation")

    def image_info(self, index: int, split: str = "predict") -> dict[str, Any]:
        """What a prediction writer needs of image ``index``: ``id`` (the index), ``width``, ``height`` and the
        ``scale`` ``(x, y)`` from the original image to the loaded tensor (``(1, 1)``: images are rendered at size)."""
        return {"id": int(index), "width": self.image_size, "height": self.image_size, "scale": (1.0, 1.0)}

    def dataset(self, split: str) -> SyntheticShapes:
        """The :class:`SyntheticShapes` of ``split`` (``"test"`` and ``"predict"`` have ``num_val`` images, the
        same ones)."""
        split = "test" if split == "predict" else split
        length = self.num_train if split == "train" else self.num_val
        return SyntheticShapes(
            self.task,
            split,
            length,
            self.image_size,
            self.num_shape_classes,
            self.min_objects,
            self.max_objects,
            self.seed,
        )

    def render(self, index: int, split: str = "train") -> ShapesSample:
        """The full :class:`ShapesSample` behind item ``index`` of ``split`` (per-object masks included)."""
        return self.dataset(split).render(index)

    def collate_fn(self) -> Callable[[Any], Any] | None:
        """:func:`collate_detection` for detection; PyTorch's default collation for segmentation."""
        return collate_detection if self.task == "detection" else None

"""COCO-format detection data: an instances JSON read into contiguous labels and ``xyxy`` boxes, and its images."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_losses.data.transforms import ResizePad

__all__ = ["CocoAnnotations", "CocoDetection", "read_coco"]


@dataclass(frozen=True)
class CocoAnnotations:
    """One split of an instances JSON, in this package's target convention.

    Attributes:
        images: one ``{"id", "file_name", "width", "height"}`` per image, in the file's order; images without
            annotations are kept.
        boxes: ``(N, 4)`` float32 absolute-pixel ``xyxy`` boxes of every image, concatenated.
        labels: ``(N,)`` int64 contiguous labels ``0 … K − 1``.
        offsets: ``(I + 1,)`` int64: image ``i`` owns rows ``offsets[i]:offsets[i + 1]``.
        category_ids: the COCO category id of each label, ascending.
        category_names: the name of each label.
        num_crowd: ``iscrowd=1`` annotations dropped.
        num_degenerate: annotations dropped for a width or height ≤ 0 (after clipping to the image).
    """

    images: list[dict[str, Any]]
    boxes: Tensor
    labels: Tensor
    offsets: Tensor
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]
    num_crowd: int
    num_degenerate: int

    def __len__(self) -> int:
        return len(self.images)

    def target(self, index: int) -> dict[str, Tensor]:
        """``{"boxes": (M, 4), "labels": (M,)}`` of image ``index`` (fresh tensors)."""
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return {"boxes": self.boxes[start:stop].clone(), "labels": self.labels[start:stop].clone()}


def read_coco(path: str | Path, category_ids: Sequence[int] | None = None) -> CocoAnnotations:
    """Read a COCO instances JSON: contiguous labels, ``xyxy`` boxes, crowd and degenerate boxes dropped.

    Category ids are sorted and numbered ``0 … K − 1`` (COCO's 1…90 with gaps become 0…79). An annotation
    ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]`` clipped to the image; crowd regions (``iscrowd=1``) are
    dropped, as are boxes of width or height ≤ 0, and both are counted. A file without ``annotations`` (an
    image list for prediction) gives images without boxes.

    Args:
        path: the JSON file.
        category_ids: the category ids of another split that this split must have (the same set), so that
            labels mean the same in every split.

    Raises:
        ValueError: the file lacks ``images`` or ``categories``, an annotation names an unknown image or
            category, or the categories differ from ``category_ids``.
    """
    data = json.loads(Path(path).read_text())
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: a COCO instances file needs an {key!r} list, got keys {sorted(data)}")
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    ids = tuple(int(c["id"]) for c in categories)
    if category_ids is not None and set(ids) != {int(c) for c in category_ids}:
        raise ValueError(f"{path}: category ids {list(ids)} differ from the other splits' {list(category_ids)}")
    label_of = {category: label for label, category in enumerate(ids)}
    images = [
        {"id": int(i["id"]), "file_name": str(i["file_name"]), "width": int(i["width"]), "height": int(i["height"])}
        for i in data["images"]
    ]
    row_of = {image["id"]: row for row, image in enumerate(images)}
    per_image: list[list[tuple[list[float], int]]] = [[] for _ in images]
    num_crowd = num_degenerate = 0
    for ann in data.get("annotations", []):
        if ann["image_id"] not in row_of:
            raise ValueError(f"{path}: annotation {ann.get('id')} names image {ann['image_id']}, not in 'images'")
        if ann["category_id"] not in label_of:
            raise ValueError(f"{path}: annotation {ann.get('id')} has category {ann['category_id']}, not in {ids}")
        if ann.get("iscrowd", 0):
            num_crowd += 1
            continue
        image = images[row_of[ann["image_id"]]]
        x, y, w, h = (float(v) for v in ann["bbox"])
        x1, y1 = min(max(x, 0.0), image["width"]), min(max(y, 0.0), image["height"])
        x2, y2 = min(max(x + w, 0.0), image["width"]), min(max(y + h, 0.0), image["height"])
        if w <= 0 or h <= 0 or x2 <= x1 or y2 <= y1:
            num_degenerate += 1
            continue
        per_image[row_of[ann["image_id"]]].append(([x1, y1, x2, y2], label_of[ann["category_id"]]))
    counts = torch.tensor([0] + [len(anns) for anns in per_image], dtype=torch.long)
    flat = [ann for anns in per_image for ann in anns]
    return CocoAnnotations(
        images=images,
        boxes=torch.tensor([box for box, _ in flat], dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor([label for _, label in flat], dtype=torch.long),
        offsets=counts.cumsum(0),
        category_ids=ids,
        category_names=tuple(str(c.get("name", c["id"])) for c in categories),
        num_crowd=num_crowd,
        num_degenerate=num_degenerate,
    )


class CocoDetection(Dataset):
    """Images of a folder with their :class:`CocoAnnotations` targets, through a :class:`ResizePad`.

    Items are ``(image (3, H, W) float32 in [0, 1], {"boxes": (M, 4) xyxy pixels, "labels": (M,) int64})``
    in the annotation file's image order; files are read with Pillow, grayscale and RGBA ones as RGB.

    Args:
        annotations: the split's annotations.
        image_dir: the folder holding each image's ``file_name``.
        transform: flip / resize / pad applied to every item.
    """

    def __init__(self, annotations: CocoAnnotations, image_dir: str | Path, transform: ResizePad) -> None:
        self.annotations = annotations
        self.image_dir = Path(image_dir)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.annotations)

    def image_info(self, index: int) -> dict[str, Any]:
        """``{"id", "file_name", "width", "height", "scale": (x, y)}`` of item ``index`` (original size, and the
        factors from original pixels to the item's pixels)."""
        info = dict(self.annotations.images[index])
        info["scale"] = self.transform.scale(info["height"], info["width"])
        return info

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor

        info = self.annotations.images[index]
        path = self.image_dir / info["file_name"]
        with Image.open(path) as file:
            image = pil_to_tensor(file.convert("RGB"))
        if tuple(image.shape[-2:]) != (info["height"], info["width"]):
            raise ValueError(
                f"{path} is {image.shape[-1]}x{image.shape[-2]} (w x h), its annotation says "
                f"{info['width']}x{info['height']}"
            )
        target = self.annotations.target(index)
        image, target["boxes"] = self.transform(image, target["boxes"])
        return image, target

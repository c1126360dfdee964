"""A small COCO-format data set written from the synthetic shapes, with the targets it must load as.

Every split holds square ``SIZE``-pixel images, one ``SIZE × 2·SIZE`` image (two renders side by side, the
right one's boxes shifted by ``SIZE``), one image without annotations, one crowd annotation and one box of
width 0. Category ids are neither contiguous nor in kind order: kind ``k`` is category ``CATEGORY_OF[k]``,
whose label is its rank among the sorted ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from lightning_losses.demo.data import render_shapes

SIZE = 64
CATEGORY_OF = (7, 3, 12)  # shape kind -> COCO category id
SORTED_IDS = sorted(CATEGORY_OF)
LABEL_OF_KIND = torch.tensor([SORTED_IDS.index(c) for c in CATEGORY_OF])
NAMES = ("rectangle", "ellipse", "triangle")


def _render(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(uint8 image (3, SIZE, SIZE), boxes (M, 4) xyxy, kinds (M,))`` of one synthetic render."""
    sample = render_shapes(torch.Generator().manual_seed(seed), image_size=SIZE, min_objects=2, max_objects=4)
    image = (sample.image * 255).round().to(torch.uint8)
    return image, sample.boxes, sample.labels


def write_split(root: Path, split: str, num_square: int = 4, seed: int = 0) -> list[dict]:
    """Write ``root/annotations/instances_{split}.json`` and ``root/{split}/*.png``.

    Returns one ``{"id", "file", "image" (uint8), "boxes" (M, 4) xyxy, "labels" (M,)}`` per image, in the
    file's order, with the targets the loader must give (crowd and degenerate boxes excluded).
    """
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    written = []
    for index in range(num_square):
        image, boxes, kinds = _render(1000 * seed + index)
        written.append({"image": image, "boxes": boxes, "kinds": kinds})
    left, right = _render(1000 * seed + 500), _render(1000 * seed + 501)
    wide_boxes = torch.cat([left[1], right[1] + torch.tensor([SIZE, 0, SIZE, 0])])
    written.append(
        {
            "image": torch.cat([left[0], right[0]], dim=2),
            "boxes": wide_boxes,
            "kinds": left[2].new_tensor([*left[2].tolist(), *right[2].tolist()]),
        }
    )
    empty, _, _ = _render(1000 * seed + 900)
    written.append({"image": empty, "boxes": torch.zeros(0, 4), "kinds": torch.zeros(0, dtype=torch.long)})

    images, annotations = [], []
    for index, item in enumerate(written):
        image_id = 100 + 3 * index  # ids unlike row numbers
        name = f"{index:04d}.png"
        Image.fromarray(item["image"].permute(1, 2, 0).numpy()).save(folder / name)
        height, width = item["image"].shape[-2:]
        images.append({"id": image_id, "file_name": name, "width": int(width), "height": int(height)})
        for box, kind in zip(item["boxes"].tolist(), item["kinds"].tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY_OF[kind],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        item.update(id=image_id, file=name, labels=LABEL_OF_KIND[item["kinds"]])
    annotations.append(
        {"image_id": images[0]["id"], "category_id": 3, "bbox": [1.0, 2.0, 20.0, 10.0], "area": 200.0, "iscrowd": 1}
    )
    annotations.append(
        {"image_id": images[1]["id"], "category_id": 12, "bbox": [5.0, 5.0, 0.0, 9.0], "area": 0.0, "iscrowd": 0}
    )
    for number, ann in enumerate(annotations):
        ann["id"] = number + 1
    categories = [{"id": c, "name": NAMES[k], "supercategory": "shape"} for k, c in enumerate(CATEGORY_OF)]
    payload = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))
    return written


def write_dataset(root: Path) -> dict[str, list[dict]]:
    """A ``train`` and a ``val`` split under ``root``."""
    return {"train": write_split(root, "train", 6, seed=0), "val": write_split(root, "val", 3, seed=1)}

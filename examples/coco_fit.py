"""Your own data in COCO format: fit a detector with validation mAP, then write COCO results with your ids.

Without an argument the script first writes a small COCO-format data set (PNG images of the synthetic shapes
and ``annotations/instances_{train,val}.json`` with category ids 3, 7 and 12, one crowd region, one box of
width 0) into a temporary folder; give ``--root`` to read yours instead (same layout: one instances JSON and
one image folder per split). ``CocoDetectionDataModule`` maps the category ids to labels ``0 … K − 1``, and
the model's class count comes from it (as the CLI links it: ``configs/coco_retinanet.yaml``):

    python examples/coco_fit.py
    python examples/coco_fit.py --root /path/to/data --image-size 512
    lightning-losses fit --config configs/coco_retinanet.yaml --data.init_args.root=/path/to/data
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import lightning as L
import torch
from PIL import Image

from lightning_losses.data import CocoDetectionDataModule, CocoPredictionWriter
from lightning_losses.demo import RetinaNetDetector
from lightning_losses.demo.data import render_shapes

CATEGORY_IDS = (7, 3, 12)  # shape kind -> COCO category id: not contiguous, not sorted


def write_coco_split(root: Path, split: str, count: int, seed: int) -> None:
    """``count`` 128-pixel images of shapes in ``root/split/`` and their ``root/annotations/instances_{split}.json``."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        sample = render_shapes(torch.Generator().manual_seed(seed * 10_000 + index), image_size=128)
        name = f"{index:05d}.png"
        pixels = (sample.image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(root / split / name)
        images.append({"id": index + 1, "file_name": name, "width": 128, "height": 128})
        for (x1, y1, x2, y2), kind in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": CATEGORY_IDS[kind],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],  # COCO boxes: x, y, width, height
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    crowd = {"image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 1}
    degenerate = {"image_id": 2, "category_id": 7, "bbox": [10, 10, 0, 5], "area": 0, "iscrowd": 0}
    for extra in (crowd, degenerate):
        annotations.append({"id": len(annotations) + 1, **extra})
    names = ("rectangle", "ellipse", "triangle")
    categories = [{"id": c, "name": name} for c, name in zip(CATEGORY_IDS, names, strict=True)]
    payload = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="a COCO-format data set (default: write a small one to a temporary folder)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.root or Path(scratch) / "shapes_coco")
        if not args.root:
            write_coco_split(root, "train", 24, seed=0)
            write_coco_split(root, "val", 8, seed=1)
        torch.manual_seed(0)
        data = CocoDetectionDataModule(str(root), image_size=args.image_size, batch_size=8)
        data.setup("fit")
        print(f"classes: {data.num_classes} {data.category_names}, label -> category id {data.label_to_category_id}")
        print(f"dropped: {data.dropped}")
        model = RetinaNetDetector(num_classes=data.num_classes, score_thr=0.0, max_det=5)
        writer = CocoPredictionWriter(output_dir=scratch)
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=args.steps,
            logger=False,
            callbacks=[writer],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, data)
        metrics = trainer.callback_metrics
        print(
            f"after {trainer.global_step} steps: " + " ".join(f"{k}={float(metrics[k]):.4f}" for k in sorted(metrics))
        )
        trainer.predict(model, data)  # the predict split: here the validation images
        entries = json.loads(writer.path.read_text())
        images = sorted({e["image_id"] for e in entries})
        categories = sorted({e["category_id"] for e in entries})
        print(f"predictions.json: {len(entries)} entries for images {images}, category ids {categories}")
        print(f"first entry: {entries[0]}")


if __name__ == "__main__":
    main()

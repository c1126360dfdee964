"""`lightning-losses predict` writes COCO results; the COCO-format config fits and predicts on a user's data.

References: the predict split's image count and ids (the demo's test split; the written COCO file's ids), the
written category ids, and the COCO results format (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.data.coco_files import CATEGORY_OF, write_dataset
from tests.test_cli import CONFIGS, run_cli

KEYS = {"image_id", "category_id", "bbox", "score"}


def _entries(path: Path) -> list[dict]:
    entries = json.loads(path.read_text())
    assert isinstance(entries, list)
    for entry in entries:
        assert set(entry) == KEYS
        assert len(entry["bbox"]) == 4
        assert entry["bbox"][2] > 0
        assert entry["bbox"][3] > 0
        assert 0.0 <= entry["score"] <= 1.0
    return entries


def test_predict_subcommand_writes_coco_results_of_every_image(tmp_path):
    """Five predict images, at most three detections each (score_thr=0 keeps every image's best three)."""
    proc = run_cli(
        "predict",
        CONFIGS / "retinanet.yaml",
        tmp_path,
        "--data.init_args.num_val=5",
        "--data.init_args.batch_size=2",
        "--data.init_args.image_size=64",
        "--model.init_args.score_thr=0.0",
        "--model.init_args.max_det=3",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    entries = _entries(tmp_path / "logs" / "retinanet" / "predictions.json")
    assert sorted({e["image_id"] for e in entries}) == [0, 1, 2, 3, 4]
    assert len(entries) == 5 * 3
    assert {e["category_id"] for e in entries} <= {0, 1, 2}
    for entry in entries:
        x, y, w, h = entry["bbox"]
        assert min(x, y) >= 0
        assert max(x + w, y + h) <= 64


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_coco_config_fits_with_map_and_predicts_category_ids_on_a_users_data(tmp_path):
    root = tmp_path / "my_data"
    written = write_dataset(root)
    common = [f"--data.init_args.root={root}", "--data.init_args.image_size=64", "--data.init_args.num_workers=0"]
    fit = run_cli(
        "fit",
        CONFIGS / "coco_retinanet.yaml",
        tmp_path,
        *common,
        "--data.init_args.batch_size=4",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.log_every_n_steps=1",
        "--model.init_args.score_thr=0.0",  # saved in the checkpoint, so predict keeps every image's best
        "--model.init_args.max_det=2",
    )
    assert fit.returncode == 0, fit.stderr[-4000:]
    log_dir = tmp_path / "logs" / "coco_retinanet"
    assert list(log_dir.glob("wandb/offline-run-*/run-*.wandb")), "no W&B offline run written"
    with open(next(log_dir.glob("csv/version_*/metrics.csv"))) as f:
        keys = set(next(csv.reader(f)))
    assert {"train/loss_cls_step", "val/loss", "val/map", "val/map_50"} <= keys
    checkpoint = next(log_dir.rglob("*.ckpt"))

    predict = run_cli("predict", CONFIGS / "coco_retinanet.yaml", tmp_path, *common, f"--ckpt_path={checkpoint}")
    assert predict.returncode == 0, predict.stderr[-4000:]
    entries = _entries(log_dir / "predictions.json")
    assert {e["category_id"] for e in entries} <= set(CATEGORY_OF)
    sizes = {item["id"]: tuple(item["image"].shape[-2:]) for item in written["val"]}
    per_image = {image_id: [e for e in entries if e["image_id"] == image_id] for image_id in sizes}
    assert sum(len(found) for found in per_image.values()) == len(entries)  # no other ids
    for image_id, (height, width) in sizes.items():
        # Square images are read at their size: both detections stay. The wide one (64 x 128) is resized to
        # 32 x 64 and padded: a detection on the padding has no area in the original image and is dropped.
        assert len(per_image[image_id]) == 2 if width == height else len(per_image[image_id]) <= 2
        for entry in per_image[image_id]:  # in the original image's pixels
            x, y, w, h = entry["bbox"]
            assert min(x, y) >= 0
            assert x + w <= width + 1e-3
            assert y + h <= height + 1e-3

"""COCO results: entries computed by hand (scale back, clip, xywh, category map), and the writer in a predict run."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from lightning_losses.data import CocoPredictionWriter, coco_results
from lightning_losses.demo import RetinaNetDetector, SyntheticShapesDataModule


def test_coco_results_scale_back_clip_and_map_categories_by_hand():
    detections = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [-4.0, 2.0, 50.0, 8.0], [2.0, 170.0, 8.0, 180.0]]),
            "scores": torch.tensor([0.9, 0.25, 0.5]),
            "labels": torch.tensor([0, 2, 1]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    images = [{"id": 42, "width": 20, "height": 40, "scale": (2.0, 4.0)}, {"id": 43, "scale": (1.0, 1.0)}]
    results = coco_results(detections, images, [5, 9, 11])
    # (10, 20, 30, 60) / (2, 4) = (5, 5, 15, 15) -> xywh (5, 5, 10, 10); (-4, 2, 50, 8) / (2, 4) = (-2, 0.5, 25, 2)
    # clipped to 20 x 40 -> (0, 0.5, 20, 2) -> xywh (0, 0.5, 20, 1.5); the third lies below the image (y > 40).
    assert results == [
        {"image_id": 42, "category_id": 5, "bbox": [5.0, 5.0, 10.0, 10.0], "score": pytest.approx(0.9)},
        {"image_id": 42, "category_id": 11, "bbox": [0.0, 0.5, 20.0, 1.5], "score": 0.25},
    ]
    assert coco_results(detections[:1], images[:1])[1]["category_id"] == 2  # no map: the label
    with pytest.raises(ValueError, match="`detections` has 2 images, `images` 1"):
        coco_results(detections, images[:1])


def test_writer_writes_one_entry_per_detection_with_the_data_modules_ids(tmp_path):
    torch.manual_seed(0)
    data = SyntheticShapesDataModule(image_size=64, num_train=2, num_val=5, batch_size=2)
    model = RetinaNetDetector(channels=16, score_thr=0.0, max_det=4)
    writer = CocoPredictionWriter(output_dir=str(tmp_path))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False, enable_model_summary=False
    )
    predictions = trainer.predict(model, data)
    entries = json.loads((tmp_path / "predictions.json").read_text())
    assert writer.path == tmp_path / "predictions.json"
    flat = [det for batch in predictions for det in batch]
    assert len(flat) == 5
    assert len(entries) == sum(len(det["boxes"]) for det in flat) == 5 * 4
    assert sorted({e["image_id"] for e in entries}) == [0, 1, 2, 3, 4]
    first = flat[0]
    x1, y1, x2, y2 = first["boxes"][0].tolist()
    assert entries[0] == {
        "image_id": 0,
        "category_id": int(first["labels"][0]),
        "bbox": pytest.approx([x1, y1, x2 - x1, y2 - y1]),
        "score": pytest.approx(float(first["scores"][0])),
    }


def test_writer_refuses_outputs_that_are_not_detections(tmp_path):
    writer = CocoPredictionWriter(output_dir=str(tmp_path))
    with pytest.raises(TypeError, match=r"one \{'boxes', 'scores', 'labels'\} dict per image"):
        writer.write_on_batch_end(None, None, torch.zeros(2, 3), [0, 1], None, 0, 0)


def test_writer_gathers_every_rank_into_one_file(tmp_path):
    """Two CPU processes (gloo): rank 0 writes every image's entries once (Lightning's predict sampler does not
    repeat images to even out the ranks)."""
    data = SyntheticShapesDataModule(image_size=64, num_train=2, num_val=5, batch_size=2)
    model = RetinaNetDetector(channels=16, score_thr=0.0, max_det=2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        callbacks=[CocoPredictionWriter(output_dir=str(tmp_path))],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.predict(model, data, return_predictions=False)
    entries = json.loads((tmp_path / "predictions.json").read_text())
    assert sorted(e["image_id"] for e in entries) == sorted([0, 1, 2, 3, 4] * 2)

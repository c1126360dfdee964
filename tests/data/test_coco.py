"""COCO-format data: the loaded targets equal the boxes and labels written from the synthetic shapes, exactly,
before and after flips and resizes computed by hand; crowd, degenerate and unannotated cases; bad files."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_losses.data import CocoDetectionDataModule, ResizePad, read_coco
from tests.data.coco_files import SIZE, SORTED_IDS, write_dataset, write_split

pytestmark = pytest.mark.filterwarnings("ignore:.*boxes with width or height <= 0 dropped")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return root, write_dataset(root)


def _module(root, **kwargs) -> CocoDetectionDataModule:
    options = {"image_size": (SIZE, 2 * SIZE), "flip_prob": 0.0, "batch_size": 3, **kwargs}
    return CocoDetectionDataModule(str(root), **options)


def test_read_coco_maps_categories_converts_boxes_and_counts_what_it_drops(dataset):
    root, written = dataset
    annotations = read_coco(root / "annotations" / "instances_train.json")
    assert annotations.category_ids == tuple(SORTED_IDS)
    assert annotations.category_names == ("ellipse", "rectangle", "triangle")  # ids 3, 7, 12
    assert annotations.num_crowd == 1
    assert annotations.num_degenerate == 1
    assert [image["id"] for image in annotations.images] == [item["id"] for item in written["train"]]
    for index, item in enumerate(written["train"]):
        target = annotations.target(index)
        assert target["boxes"].dtype == torch.float32
        assert target["labels"].dtype == torch.int64
        torch.testing.assert_close(target["boxes"], item["boxes"].reshape(-1, 4), rtol=0, atol=0)
        assert torch.equal(target["labels"], item["labels"])
    assert annotations.target(len(written["train"]) - 1)["boxes"].shape == (0, 4)  # no annotations: kept


def test_items_at_their_own_size_equal_the_written_pixels_and_boxes(dataset):
    root, written = dataset
    data = CocoDetectionDataModule(str(root), image_size=SIZE, flip_prob=0.0).dataset("val")
    for index, item in enumerate(written["val"]):
        if item["image"].shape[-1] != SIZE:
            continue
        image, target = data[index]
        assert image.dtype == torch.float32
        torch.testing.assert_close(image, item["image"].float() / 255, rtol=0, atol=1e-7)  # float32 rounding
        torch.testing.assert_close(target["boxes"], item["boxes"].reshape(-1, 4), rtol=0, atol=0)
        assert torch.equal(target["labels"], item["labels"])


def test_keep_ratio_resize_halves_the_wide_image_and_pads_below(dataset):
    """By hand: a SIZE x 2·SIZE image into SIZE x SIZE scales by 1/2 to SIZE/2 x SIZE, padded at the bottom."""
    root, written = dataset
    data = CocoDetectionDataModule(str(root), image_size=SIZE, flip_prob=0.0).dataset("train")
    wide = next(i for i, item in enumerate(written["train"]) if item["image"].shape[-1] == 2 * SIZE)
    image, target = data[wide]
    assert image.shape == (3, SIZE, SIZE)
    assert (image[:, SIZE // 2 :] == 0).all()
    torch.testing.assert_close(target["boxes"], written["train"][wide]["boxes"] * 0.5, rtol=0, atol=0)
    assert data.image_info(wide)["scale"] == (0.5, 0.5)
    assert data.image_info(wide)["id"] == written["train"][wide]["id"]


def test_stretch_resize_scales_x_and_y_by_their_own_factors(dataset):
    root, written = dataset
    data = CocoDetectionDataModule(str(root), image_size=(SIZE // 2, SIZE // 2), keep_ratio=False).dataset("val")
    for index, item in enumerate(written["val"]):
        _, target = data[index]
        fx, fy = (SIZE // 2) / item["image"].shape[-1], (SIZE // 2) / item["image"].shape[-2]
        torch.testing.assert_close(target["boxes"], item["boxes"] * torch.tensor([fx, fy, fx, fy]), rtol=0, atol=0)


def test_flip_mirrors_the_boxes_and_the_pixels(dataset):
    """By hand: x -> W - x, swapping x1 and x2, on the image before padding."""
    root, written = dataset
    data = CocoDetectionDataModule(str(root), image_size=SIZE, flip_prob=1.0)
    train, val = data.dataset("train"), data.dataset("val")
    item = written["train"][0]
    image, target = train[0]
    x1, y1, x2, y2 = item["boxes"].unbind(-1)
    torch.testing.assert_close(target["boxes"], torch.stack([SIZE - x2, y1, SIZE - x1, y2], -1), rtol=0, atol=0)
    torch.testing.assert_close(image, item["image"].flip(-1).float() / 255, rtol=0, atol=1e-7)
    _, unflipped = val[0]  # only training images are flipped
    torch.testing.assert_close(unflipped["boxes"], written["val"][0]["boxes"], rtol=0, atol=0)


def test_resize_pad_matches_hand_computed_scales_for_odd_sizes():
    """37 x 50 into 64 x 64: s = min(64/37, 64/50) = 1.28 -> 47 x 64 (round(37 · 1.28) = 47), padded to 64."""
    transform = ResizePad(64)
    image = torch.zeros(3, 37, 50, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 5.0, 40.0, 30.0]])
    out, got = transform(image, boxes)
    assert out.shape == (3, 64, 64)
    assert transform.resized_size(37, 50) == (47, 64)
    expected = boxes * torch.tensor([64 / 50, 47 / 37, 64 / 50, 47 / 37])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)


def test_data_module_batches_have_the_demo_format_and_the_category_map(dataset):
    root, written = dataset
    dm = _module(root)
    assert dm.num_classes == 3
    assert dm.label_to_category_id == SORTED_IDS
    dm.setup("fit")
    assert dm.dropped == {"train": {"crowd": 1, "degenerate": 1}, "val": {"crowd": 1, "degenerate": 1}}
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, SIZE, 2 * SIZE)
    assert images.dtype == torch.float32
    for target, item in zip(targets, written["val"][:3], strict=True):
        assert sorted(target) == ["boxes", "labels"]
        torch.testing.assert_close(target["boxes"], item["boxes"].reshape(-1, 4), rtol=0, atol=0)
        assert torch.equal(target["labels"], item["labels"])
    assert sum(len(batch[1]) for batch in dm.train_dataloader()) == len(written["train"])
    predict = list(dm.predict_dataloader())  # the validation split when no predict or test split is set
    assert sum(len(batch[1]) for batch in predict) == len(written["val"])
    assert dm.image_info(1)["id"] == written["val"][1]["id"]


def test_bad_files_raise_naming_the_problem(tmp_path, dataset):
    root, _ = dataset
    with pytest.raises(FileNotFoundError, match=r"instances_missing\.json"):
        CocoDetectionDataModule(str(root), train_split="missing")
    with pytest.raises(ValueError, match="no split"):
        CocoDetectionDataModule(str(root), train_split=None, val_split=None)
    write_split(tmp_path, "other", num_square=1)
    path = tmp_path / "annotations" / "instances_other.json"
    payload = json.loads(path.read_text())
    payload["categories"] = payload["categories"][:2]
    payload["annotations"] = [a for a in payload["annotations"] if a["category_id"] != 12]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="differ from the other splits"):
        read_coco(path, SORTED_IDS)
    payload["annotations"][0]["image_id"] = 999
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="names image 999"):
        read_coco(path)
    payload["annotations"][0]["image_id"] = payload["images"][0]["id"]
    payload["images"][0]["width"] += 1
    path.write_text(json.dumps(payload))
    dm = CocoDetectionDataModule(str(tmp_path), train_split="other", val_split=None, image_size=SIZE)
    with pytest.raises(ValueError, match=r"is 64x64 \(w x h\), its annotation says 65x64"):
        dm.dataset("train")[0]
    with pytest.raises(ValueError, match="`flip_prob`"):
        ResizePad(8, flip_prob=2.0)

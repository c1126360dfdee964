"""Synthetic shapes: determinism, exact boxes against each object's own pixels, masks against the image."""

import pytest
import torch

from lightning_losses.demo.data import SHAPES, SyntheticShapesDataModule, tight_boxes

SMALL = {"image_size": 64, "num_train": 6, "num_val": 4, "batch_size": 3}


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_same_seed_gives_identical_items_and_batches():
    first, second = SyntheticShapesDataModule(**SMALL), SyntheticShapesDataModule(**SMALL)
    for split in ("train", "val"):
        for index in range(4):
            (img_a, tgt_a), (img_b, tgt_b) = first.dataset(split)[index], second.dataset(split)[index]
            assert torch.equal(img_a, img_b)
            assert _same(tgt_a, tgt_b)
    batches_a, batches_b = list(first.train_dataloader()), list(second.train_dataloader())
    for (img_a, tgt_a), (img_b, tgt_b) in zip(batches_a, batches_b, strict=True):
        assert torch.equal(img_a, img_b)
        assert all(_same(a, b) for a, b in zip(tgt_a, tgt_b, strict=True))


def test_index_split_and_seed_change_the_image():
    dm = SyntheticShapesDataModule(**SMALL)
    image = dm.render(0).image
    assert not torch.equal(image, dm.render(1).image)
    assert not torch.equal(image, dm.render(0, split="val").image)
    assert not torch.equal(image, SyntheticShapesDataModule(**SMALL, seed=1).render(0).image)


def test_val_loader_keeps_index_order_and_train_loader_shuffles():
    dm = SyntheticShapesDataModule(**SMALL)
    val_images = torch.cat([images for images, _ in dm.val_dataloader()])
    assert torch.equal(val_images, torch.stack([dm.render(i, "val").image for i in range(SMALL["num_val"])]))
    train_images = torch.cat([images for images, _ in dm.train_dataloader()])
    in_order = torch.stack([dm.render(i).image for i in range(SMALL["num_train"])])
    assert not torch.equal(train_images, in_order)
    order = [int((in_order == image).flatten(1).all(dim=1).nonzero()) for image in train_images]
    assert sorted(order) == list(range(SMALL["num_train"]))


@pytest.mark.parametrize("index", range(12))
def test_boxes_are_tight_boxes_of_each_objects_visible_pixels(index: int):
    """Reference: min / max of the nonzero coordinates of each kept object's own visible mask."""
    dm = SyntheticShapesDataModule(image_size=96, num_val=12)
    sample = dm.render(index, split="val")
    kept = sample.visible[sample.keep]
    assert sample.boxes.shape == (len(kept), 4)
    assert sample.boxes.dtype == torch.float32
    for box, mask in zip(sample.boxes, kept, strict=True):
        ys, xs = mask.nonzero(as_tuple=True)
        expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert box.tolist() == [float(v) for v in expected]
    _, target = dm.dataset("val")[index]
    assert torch.equal(target["boxes"], sample.boxes)
    assert torch.equal(target["labels"], sample.kinds[sample.keep])


@pytest.mark.parametrize("index", range(12))
def test_visibility_rule_and_object_count(index: int):
    sample = SyntheticShapesDataModule(min_objects=2, max_objects=5).render(index)
    count = len(sample.kinds)
    assert 2 <= count <= 5
    visible_area = sample.visible.flatten(1).sum(dim=1)
    assert torch.equal(sample.keep, visible_area >= 0.3 * sample.areas)
    assert bool(sample.keep[-1])  # the top shape is whole
    assert (sample.visible.sum(dim=0) <= 1).all()  # one shape on top per pixel
    assert (sample.areas >= visible_area).all()


def test_labels_use_the_first_kinds_only():
    dm = SyntheticShapesDataModule(num_shape_classes=2, **SMALL)
    labels = torch.cat([dm.dataset("train")[i][1]["labels"] for i in range(SMALL["num_train"])])
    assert labels.dtype == torch.int64
    assert labels.numel() > 0
    assert labels.min() >= 0
    assert labels.max() < 2
    assert len(SHAPES) == 3


@pytest.mark.parametrize("index", range(6))
def test_mask_and_image_agree_with_the_painted_shapes(index: int):
    dm = SyntheticShapesDataModule(task="segmentation", image_size=96)
    sample = dm.render(index)
    image, mask = dm.dataset("train")[index]
    assert torch.equal(image, sample.image)
    assert torch.equal(mask, sample.mask)
    assert image.dtype == torch.float32
    assert image.shape == (3, 96, 96)
    assert image.min() >= 0
    assert image.max() <= 1
    assert mask.dtype == torch.int64
    expected = torch.zeros_like(mask)
    for kind, color, visible in zip(sample.kinds, sample.colors, sample.visible, strict=True):
        expected[visible] = kind + 1
        assert torch.equal(image[:, visible], color[:, None].expand(3, int(visible.sum())))
    assert torch.equal(mask, expected)


def test_detection_and_segmentation_batches():
    images, targets = next(iter(SyntheticShapesDataModule(**SMALL).train_dataloader()))
    assert images.shape == (3, 3, 64, 64)
    assert images.dtype == torch.float32
    assert len(targets) == 3
    for target in targets:
        assert target["boxes"].dtype == torch.float32
        assert target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64
        assert target["labels"].shape == target["boxes"].shape[:1]
        boxes = target["boxes"]
        assert (boxes[:, :2] >= 0).all()
        assert (boxes[:, 2:] <= 64).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
    images, masks = next(iter(SyntheticShapesDataModule(task="segmentation", **SMALL).val_dataloader()))
    assert images.shape == (3, 3, 64, 64)
    assert masks.shape == (3, 64, 64)
    assert masks.dtype == torch.int64
    assert masks.min() >= 0
    assert masks.max() <= 3


def test_tight_boxes_hand_worked():
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 0] = True
    assert tight_boxes(masks).tolist() == [[2.0, 1.0, 5.0, 3.0], [0.0, 4.0, 1.0, 5.0]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "keypoints"}, "task"),
        ({"num_shape_classes": 4}, "num_shape_classes"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        SyntheticShapesDataModule(**kwargs)


def test_num_classes_counts_what_a_model_predicts_and_predict_reads_the_test_images():
    """Detection: the shape kinds; segmentation: the kinds plus background. Predict: the test split, in order."""
    assert SyntheticShapesDataModule(num_shape_classes=2).num_classes == 2
    assert SyntheticShapesDataModule(task="segmentation", num_shape_classes=2).num_classes == 3
    dm = SyntheticShapesDataModule(**SMALL)
    predicted = [image for images, _ in dm.predict_dataloader() for image in images]
    tested = [image for images, _ in dm.test_dataloader() for image in images]
    assert len(predicted) == SMALL["num_val"]
    assert all(torch.equal(a, b) for a, b in zip(predicted, tested, strict=True))
    assert dm.image_info(3) == {"id": 3, "width": 64, "height": 64, "scale": (1.0, 1.0)}

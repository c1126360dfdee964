"""The mistakes users make with a dense criterion's inputs get a clear error or warning, and flattened level maps
give exactly the values of the 4-D maps.

References: the 4-D layout of the same rows (flattened ``(B, N_l, K)`` maps are ``permute(0, 2, 3, 1)`` of them),
and hand-built bad inputs whose expected message parts (argument, values, the expected size) are known.
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch

from lightning_losses import (
    ATSSCriterion,
    DetectionLossModule,
    FCOSCriterion,
    GFLCriterion,
    RetinaNetCriterion,
    YOLOFastestCriterion,
    YOLOXCriterion,
)
from lightning_losses.presets.checks import check_level_sizes, image_hw
from lightning_losses.presets.yolov8 import YOLOv8Criterion
from tests.references.scenes import IMAGE_SIZE, random_maps, scene

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

C = 3
DENSE = {
    "retinanet": (RetinaNetCriterion, 9, 4, False),  # class, anchors per cell, box channels per prior, centerness
    "fcos": (FCOSCriterion, 1, 4, True),
    "atss": (ATSSCriterion, 1, 4, True),
    "gfl": (GFLCriterion, 1, 68, False),
}


def dense_case(name, sizes=None, seed="seed0"):
    """A criterion and its per-level 4-D maps (leaves) for a seeded 128 x 128 scene with strides 8 .. 128."""
    cls_type, anchors, box_channels, centerness = DENSE[name]
    generator, targets, scene_sizes = scene(seed, C)
    sizes = sizes or scene_sizes
    maps = [
        random_maps(generator, 2, anchors * C, sizes),
        random_maps(generator, 2, anchors * box_channels, sizes, scale=0.5, positive=name == "fcos"),
    ]
    if centerness:
        maps.append(random_maps(generator, 2, 1, sizes))
    return cls_type(C), maps, targets


def flat(maps):
    """``(B, A·K, H, W)`` maps as torchvision's flattened ``(B, H·W·A, K)`` per level (K from the anchor count)."""
    return [m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, k) for m, k in maps]


def _flatten_all(name, maps):
    _, anchors, _, _ = DENSE[name]
    return [flat([(m, m.shape[1] // anchors) for m in level]) for level in maps]


def _assert_same_terms(got, want, inputs):
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7, msg=key)
        g = torch.autograd.grad(got[key], inputs, retain_graph=True, allow_unused=True)
        w = torch.autograd.grad(want[key], inputs, retain_graph=True, allow_unused=True)
        for a, b in zip(g, w, strict=True):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# Flattened (B, N_l, C) level maps


@pytest.mark.parametrize("name", sorted(DENSE))
def test_flattened_maps_with_image_size_equal_the_4d_maps(name):
    criterion, maps, targets = dense_case(name)
    want = criterion(*maps, targets, image_size=(IMAGE_SIZE, IMAGE_SIZE))
    got = type(criterion)(C)(*_flatten_all(name, maps), targets, image_size=(IMAGE_SIZE, IMAGE_SIZE))
    _assert_same_terms(got, want, [m for level in maps for m in level])


@pytest.mark.parametrize("name", sorted(DENSE))
def test_flattened_maps_with_explicit_priors_equal_the_4d_maps(name):
    """The FCOS case of issue 12 (2.887 vs 3.787): level bookkeeping must count N_l rows, not N_l·C."""
    criterion, maps, targets = dense_case(name)
    sizes = [(m.shape[-2], m.shape[-1]) for m in maps[0]]
    if name == "fcos":
        priors = criterion.point_generator.priors(sizes)
    else:
        priors = torch.cat(criterion.anchor_generator.grid_priors(sizes))
    want = criterion(*maps, targets, priors=priors)
    got = type(criterion)(C)(*_flatten_all(name, maps), targets, priors=priors)
    _assert_same_terms(got, want, [m for level in maps for m in level])


@pytest.mark.filterwarnings("ignore:.*lie outside")  # the scene's boxes are drawn on a 128 x 128 image
def test_flattened_maps_of_an_odd_image_take_the_ceil_or_floor_size():
    """A 100 x 75 image: ceil sizes (13 x 10, …) as a ResNet gives, and floor sizes (12 x 9, …) as a valid conv."""
    for rounding in (math.ceil, math.floor):
        sizes = [(max(rounding(100 / s), 1), max(rounding(75 / s), 1)) for s in (8, 16, 32, 64, 128)]
        criterion, maps, targets = dense_case("fcos", sizes)
        want = criterion(*maps, targets, image_size=(100, 75))
        got = FCOSCriterion(C)(*_flatten_all("fcos", maps), targets, image_size=(100, 75))
        _assert_same_terms(got, want, [m for level in maps for m in level])


def test_flattened_maps_without_image_size_or_priors_are_rejected():
    criterion, maps, targets = dense_case("atss")
    with pytest.raises(ValueError, match=r"`cls_scores\[0\]` is flattened.*image_size.*priors"):
        criterion(*_flatten_all("atss", maps), targets)


def test_flattened_maps_of_another_image_size_are_rejected():
    criterion, maps, targets = dense_case("gfl")
    with pytest.raises(ValueError, match=r"`cls_scores\[0\]` is flattened with 256 rows.*200 × 200 at stride 8"):
        criterion(*_flatten_all("gfl", maps), targets, image_size=(200, 200))


def test_flattened_maps_must_have_num_classes_columns():
    _, maps, targets = dense_case("fcos")
    with pytest.raises(ValueError, match=r"C = 3, but the criterion's num_classes is 4"):
        FCOSCriterion(4)(*_flatten_all("fcos", maps), targets, image_size=IMAGE_SIZE)


# Labels


def _yolo_case(name):
    generator, targets, _ = scene("seed0", C)
    sizes = [(16, 16), (8, 8), (4, 4)]
    if name == "yolox":
        return YOLOXCriterion(C), random_maps(generator, 2, 5 + C, sizes, scale=0.3), targets
    if name == "yolofastest":
        crit = YOLOFastestCriterion(C, anchors=[[10, 12, 30, 28]] * 3, strides=(8, 16, 32))
        return crit, random_maps(generator, 2, 2 * (5 + C), sizes, scale=0.3), targets
    return YOLOv8Criterion(C), random_maps(generator, 2, 64 + C, sizes), targets


def any_case(name):
    if name in DENSE:
        criterion, maps, targets = dense_case(name)
        return criterion, maps, targets
    criterion, maps, targets = _yolo_case(name)
    return criterion, [maps], targets


ALL = [*sorted(DENSE), "yolox", "yolofastest", "yolov8"]


def _relabel(targets, image, labels):
    out = [dict(t) for t in targets]
    out[image] = {"boxes": out[image]["boxes"], "labels": torch.as_tensor(labels)}
    return out


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", ["one_based", "negative"])
def test_labels_outside_num_classes_raise_naming_the_image_the_values_and_num_classes(name, bad):
    criterion, maps, targets = any_case(name)
    count = targets[0]["labels"].numel()
    labels = torch.arange(1, count + 1) if bad == "one_based" else torch.tensor([-1] + [0] * (count - 1))
    bad_values = [C] if bad == "one_based" else [-1]
    with pytest.raises(ValueError, match=r"num_classes") as error:
        criterion(*maps, _relabel(targets, 0, labels))
    message = str(error.value)
    assert '`targets[0]["labels"]`' in message
    assert f"holds {bad_values}" in message
    assert "[0, 3)" in message
    assert "0-based" in message


def test_labels_are_checked_once_unless_validate_args():
    """The first call reads the targets back; later calls do not (no host sync per step), unless asked."""
    criterion, maps, targets = dense_case("retinanet")
    criterion(*maps, targets)
    bad = _relabel(targets, 1, torch.full_like(targets[1]["labels"], C))
    criterion(*maps, bad)  # no check after the first call: trains on (today's) silently wrong targets
    criterion.validate_args = True
    with pytest.raises(ValueError, match=r'`targets\[1\]\["labels"\]` holds \[3\]'):
        criterion(*maps, bad)


def test_a_criterion_that_raised_checks_again():
    criterion, maps, targets = dense_case("fcos")
    bad = _relabel(targets, 0, torch.full_like(targets[0]["labels"], 7))
    for _ in range(2):
        with pytest.raises(ValueError, match=r"holds \[7\]"):
            criterion(*maps, bad)
    criterion(*maps, targets)


# Boxes


def _with_boxes(targets, boxes):
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    return [{"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.long)}, *targets[1:]]


@pytest.mark.parametrize("name", ["retinanet", "gfl", "yolox", "yolov8"])
def test_inverted_boxes_raise_naming_the_convention(name):
    criterion, maps, targets = any_case(name)
    cxcywh = [[60.0, 50.0, 30.0, 20.0], [20.0, 30.0, 40.0, 50.0]]  # centre-size: first has x2 < x1
    with pytest.raises(ValueError, match=r'`targets\[0\]\["boxes"\]` has 1 boxes with x2 < x1 or y2 < y1') as error:
        criterion(*maps, _with_boxes(targets, cxcywh))
    assert "absolute-pixel xyxy" in str(error.value)
    assert "cxcywh" in str(error.value)


@pytest.mark.parametrize("name", ["fcos", "atss", "yolofastest"])
def test_normalised_boxes_warn_naming_the_convention(name):
    criterion, maps, targets = any_case(name)
    normalised = [[t["boxes"] / IMAGE_SIZE, t["labels"]] for t in targets]
    normalised = [{"boxes": b, "labels": lab} for b, lab in normalised]
    with pytest.warns(UserWarning, match=r"look normalised.*absolute-pixel xyxy.*\(W, H, W, H\)"):
        criterion(*maps, normalised)


def test_boxes_outside_the_image_warn():
    """(x, y, w, h) boxes read as xyxy can lie wholly outside; the warning names the convention."""
    criterion, maps, targets = dense_case("retinanet")
    with pytest.warns(UserWarning, match=r"1 boxes in `targets` lie outside the 128 × 128 image.*xyxy"):
        criterion(*maps, _with_boxes(targets, [[130.0, 10.0, 140.0, 30.0], [10.0, 10.0, 50.0, 50.0]]), image_size=128)


def test_good_targets_give_no_warning():
    criterion, maps, targets = dense_case("atss")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        criterion(*maps, targets, image_size=(IMAGE_SIZE, IMAGE_SIZE))


# Level sizes


@pytest.mark.parametrize("name", ALL)
def test_reversed_levels_raise_naming_level_size_stride_and_expected(name):
    criterion, maps, targets = any_case(name)
    reversed_maps = [list(reversed(level)) for level in maps]
    expected = "16 × 16"
    with pytest.raises(ValueError, match=r"\[0\]` is (1 × 1|4 × 4) at stride 8") as error:
        criterion(*reversed_maps, targets, image_size=(IMAGE_SIZE, IMAGE_SIZE))
    assert f"ceil(H / 8) × ceil(W / 8) = {expected}" in str(error.value)
    with pytest.raises(ValueError, match=r"no single image has: are the levels in the order of `strides`"):
        type(criterion)(**_init(criterion))(*reversed_maps, targets)


def _init(criterion):
    if isinstance(criterion, YOLOFastestCriterion):
        return {"num_classes": C, "anchors": [[10, 12, 30, 28]] * 3, "strides": (8, 16, 32)}
    return {"num_classes": C}


def test_wrong_strides_raise_with_image_size():
    _, maps, targets = dense_case("fcos")
    criterion = FCOSCriterion(C, strides=(16, 32, 64, 128, 256))
    with pytest.raises(ValueError, match=r"`cls_scores\[0\]` is 16 × 16 at stride 16.*= 8 × 8"):
        criterion(*maps, targets, image_size=128)


def test_level_sizes_allow_one_cell_of_padding_and_per_image_sizes():
    check_level_sizes([(13, 10), (7, 5)], (8, 16), (100, 75), "maps")  # ceil
    check_level_sizes([(12, 9), (6, 4)], (8, 16), (100, 75), "maps")  # floor
    check_level_sizes([(16, 16), (8, 8)], (8, 16), [(100, 75), (90, 128)], "maps")  # batch padded to 32
    check_level_sizes([(13, 10), (7, 5), (4, 3)], (8, 16, 32), None, "maps")
    with pytest.raises(ValueError, match=r"`maps\[1\]` is 9 × 5 at stride 16"):
        check_level_sizes([(13, 10), (9, 5)], (8, 16), (100, 75), "maps")


def test_an_int_image_size_is_a_square():
    assert image_hw(96) == ((96, 96), False)
    criterion, maps, targets = dense_case("retinanet")
    want = criterion(*maps, targets, image_size=(IMAGE_SIZE, IMAGE_SIZE))
    got = RetinaNetCriterion(C)(*maps, targets, image_size=IMAGE_SIZE)
    _assert_same_terms(got, want, [m for level in maps for m in level])


# Channels


def test_retinanet_channels_name_a_times_c_and_num_classes():
    _, maps, targets = dense_case("retinanet")
    with pytest.raises(ValueError, match=r"27 channels.*expected A · C = 9 · 4 = 36.*num_classes = 4"):
        RetinaNetCriterion(4)(*maps, targets)
    with pytest.raises(ValueError, match=r"27 channels.*expected A · C = 9 · 2 = 18.*num_classes = 2"):
        RetinaNetCriterion(2)(*maps, targets)  # 27 = 9 · 3 is a multiple of 3 but not 9 · 2


def test_fcos_channels_name_num_classes():
    _, maps, targets = dense_case("fcos")
    with pytest.raises(ValueError, match=r"3 channels.*expected A · C = 1 · 4 = 4.*num_classes = 4"):
        FCOSCriterion(4)(*maps, targets)


# compute_losses with a model's list of levels


class _Model(DetectionLossModule, L.LightningModule):
    def __init__(self, criterion):
        super().__init__(criterion=criterion)


@pytest.mark.parametrize("name", ["yolox", "yolofastest", "yolov8"])
def test_compute_losses_takes_a_models_list_of_levels_for_a_one_input_criterion(name):
    """Was: ``got multiple values for argument 'image_size'``. Reference: the criterion called directly."""
    criterion, maps, targets = _yolo_case(name)
    want = sum(criterion(maps, targets, image_size=(IMAGE_SIZE, IMAGE_SIZE)).values())
    model = _Model(criterion)
    as_list = model.compute_losses(maps, targets, image_size=(IMAGE_SIZE, IMAGE_SIZE))
    as_tuple = model.compute_losses(tuple(maps), targets, image_size=(IMAGE_SIZE, IMAGE_SIZE))
    positional = model.compute_losses((maps,), targets, image_size=(IMAGE_SIZE, IMAGE_SIZE))
    for got in (as_list, as_tuple, positional):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_compute_losses_takes_a_list_of_per_level_triples_for_yolox():
    generator, targets, _ = scene("seed1", C)
    sizes = [(16, 16), (8, 8), (4, 4)]
    cls, box, obj = (random_maps(generator, 2, k, sizes, scale=0.3) for k in (C, 4, 1))
    levels = list(zip(cls, box, obj, strict=True))
    criterion = YOLOXCriterion(C)
    want = sum(criterion(levels, targets).values())
    torch.testing.assert_close(_Model(criterion).compute_losses(levels, targets), want, rtol=1e-6, atol=0)


def test_a_multi_input_criterion_still_takes_its_tuple():
    criterion, maps, targets = dense_case("fcos")
    want = sum(criterion(*maps, targets).values())
    torch.testing.assert_close(_Model(criterion).compute_losses(tuple(maps), targets), want, rtol=1e-6, atol=0)

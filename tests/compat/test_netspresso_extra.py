"""compat.netspresso ``seg_cross_entropy``, ``yolofastest_loss`` and ``rtmcc_loss`` over NetsPresso's ``out`` /
``target`` dicts, against the literal NetsPresso Trainer 1.4.1 references in ``tests.references.netspresso_extra``."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_losses import build_loss
from lightning_losses.compat.netspresso import CRITERIA, NetsPressoLosses, build_losses
from tests.references.netspresso_extra import (
    bilinear_resize,
    netspresso_rtmcc,
    netspresso_seg_cross_entropy,
    netspresso_yolofastest,
)
from tests.references.scenes import grads

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

NEW = ("seg_cross_entropy", "yolofastest_loss", "rtmcc_loss")


def test_the_three_criteria_are_listed_and_build():
    assert set(NEW) <= set(CRITERIA)
    assert isinstance(build_loss({"criterion": "seg_cross_entropy", "weight": None}), NetsPressoLosses)


def assert_value_and_grad(got, want, inputs, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(got, want.to(got.dtype), rtol=rtol, atol=atol)
    for g, w in zip(grads(got, inputs), grads(want, inputs), strict=True):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol * max(float(w.abs().max()), 1e-3))


# --------------------------------------------------------------------------------------------------
# seg_cross_entropy
# --------------------------------------------------------------------------------------------------
def segmentation(seed, logits_size, mask_size=(20, 24), k=4, ignore_index=-100, ignored=0.2):
    generator = torch.Generator().manual_seed(seed)
    pred = (torch.randn(2, k, *logits_size, generator=generator) * 2).requires_grad_()
    mask = torch.randint(0, k, (2, *mask_size), generator=generator)
    mask[torch.rand(2, *mask_size, generator=generator) < ignored] = ignore_index
    return pred, mask


def test_bilinear_reference_is_torch_interpolate():
    """The literal resize rule is torch's bilinear, align_corners=False (up, down, non-integer ratios)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, generator=generator)
    for size in ((14, 18), (20, 24), (7, 9), (3, 5)):
        want = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(bilinear_resize(x, size), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("logits_size", "label_smoothing"), [((5, 6), 0.0), ((10, 12), 0.1), ((20, 24), 0.0), ((7, 9), 0.2)]
)
def test_seg_cross_entropy_matches_reference(logits_size, label_smoothing):
    pred, mask = segmentation(1, logits_size)
    entry = {"criterion": "seg_cross_entropy", "label_smoothing": label_smoothing, "weight": None}
    got = build_losses([entry])({"pred": pred}, {"target": mask})
    want = netspresso_seg_cross_entropy(pred, mask, label_smoothing=label_smoothing)
    assert_value_and_grad(got["loss"], want, [pred])
    assert sorted(got) == ["loss", "seg_cross_entropy"]


def test_seg_cross_entropy_ignore_index_and_weight():
    pred, mask = segmentation(2, (10, 12), ignore_index=255)
    entry = {"criterion": "seg_cross_entropy", "ignore_index": 255, "weight": 0.5}
    got = build_losses([entry])({"pred": pred}, {"target": mask})
    want = netspresso_seg_cross_entropy(pred, mask, ignore_index=255)
    torch.testing.assert_close(got["seg_cross_entropy"], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["loss"], 0.5 * want, rtol=1e-5, atol=1e-6)


def test_seg_cross_entropy_every_pixel_ignored_is_zero_not_nan():
    """torch's mean over zero pixels is NaN (NetsPresso's value); here it is 0 with a graph."""
    pred, mask = segmentation(3, (5, 6), ignored=1.1)
    got = build_losses([{"criterion": "seg_cross_entropy", "weight": None}])({"pred": pred}, {"target": mask})["loss"]
    assert float(got.detach()) == 0.0
    got.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_seg_cross_entropy_half_precision(dtype):
    pred, mask = segmentation(4, (10, 12))
    half = (pred.detach() * 8).to(dtype).requires_grad_()
    got = build_losses([{"criterion": "seg_cross_entropy", "weight": None}])({"pred": half}, {"target": mask})["loss"]
    assert torch.isfinite(got)
    want = netspresso_seg_cross_entropy(half.detach().float(), mask)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


def test_seg_cross_entropy_inputs_untouched_and_bad_params():
    pred, mask = segmentation(5, (10, 12))
    pred_copy, mask_copy = pred.detach().clone(), mask.clone()
    build_losses([{"criterion": "seg_cross_entropy", "weight": None}])({"pred": pred}, {"target": mask})
    assert torch.equal(pred.detach(), pred_copy)
    assert torch.equal(mask, mask_copy)
    with pytest.raises(TypeError, match="class_weight"):
        build_losses([{"criterion": "seg_cross_entropy", "class_weight": [1.0, 2.0], "weight": None}])
    with pytest.raises(ValueError, match="target"):
        build_losses([{"criterion": "seg_cross_entropy", "weight": None}])({"pred": pred}, {"target": mask[0]})


# --------------------------------------------------------------------------------------------------
# yolofastest_loss
# --------------------------------------------------------------------------------------------------
ANCHORS = [[12.0, 18.0, 37.0, 49.0, 52.0, 132.0], [115.0, 73.0, 119.0, 199.0, 242.0, 238.0]]
IMAGE, C = 192, 3


def detection(seed, counts=(4, 0, 6)):
    generator = torch.Generator().manual_seed(seed)
    gts = []
    for n in counts:
        wh = 8 + torch.rand(n, 2, generator=generator) * 100
        xy = torch.rand(n, 2, generator=generator) * (IMAGE - wh)
        gts.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, C, (n,), generator=generator)})
    pred = [
        (torch.randn(len(counts), 3 * (5 + C), IMAGE // s, IMAGE // s, generator=generator) * 0.7).requires_grad_()
        for s in (16, 32)
    ]
    return {"pred": pred}, {"gt": gts, "img_size": IMAGE, "num_classes": C}


@pytest.mark.parametrize("seed", [0, 1])
def test_yolofastest_loss_matches_reference(seed):
    out, target = detection(seed)
    entry = {"criterion": "yolofastest_loss", "anchors": ANCHORS, "l1_activate_epoch": None, "weight": None}
    got = build_losses([entry])(out, target)
    want = netspresso_yolofastest(out["pred"], target["gt"], ANCHORS, IMAGE, C)
    assert_value_and_grad(got["loss"], want["loss_bbox"] + want["loss_obj"] + want["loss_cls"], out["pred"], 1e-4)
    for term in ("loss_bbox", "loss_obj", "loss_cls"):
        torch.testing.assert_close(got[f"yolofastest_loss/{term}"], want[term], rtol=1e-4, atol=1e-6)


def test_yolofastest_loss_leaves_the_targets_and_set_epoch_changes_nothing():
    """NetsPresso rewrites target["gt"][i]["boxes"] as cxcywh; here the dicts stay as given. No L1 at any epoch."""
    out, target = detection(2)
    snapshot = copy.deepcopy(target)
    losses = build_losses([{"criterion": "yolofastest_loss", "anchors": ANCHORS, "l1_activate_epoch": 1}])
    first = losses(out, target)["loss"]
    losses.set_epoch(5)
    again = losses(out, target)["loss"]
    torch.testing.assert_close(again, first)
    for before, after in zip(snapshot["gt"], target["gt"], strict=True):
        assert torch.equal(before["boxes"], after["boxes"])
    assert set(target) == set(snapshot)


def test_yolofastest_loss_parameters():
    with pytest.raises(TypeError, match="unknown"):
        build_losses([{"criterion": "yolofastest_loss", "anchors": ANCHORS, "use_l1": True}])
    with pytest.raises(TypeError, match="strides"):
        build_losses([{"criterion": "yolofastest_loss", "anchors": ANCHORS, "strides": [16, 32]}])
    out, target = detection(3)
    with pytest.raises(TypeError, match="anchors"):
        build_losses([{"criterion": "yolofastest_loss", "weight": None}])(out, target)


# --------------------------------------------------------------------------------------------------
# rtmcc_loss
# --------------------------------------------------------------------------------------------------
def pose(seed, n=2, k=5, bins=512):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, k, 2 * bins, generator=generator).requires_grad_()
    side = bins / 2
    xy = -0.1 * side + torch.rand(n, k, 2, generator=generator) * 1.2 * side
    visible = torch.randint(0, 3, (n, k), generator=generator).float()
    visible[0, :3] = torch.tensor([0.3, 1.0, 2.0])
    xy[0, 1] = torch.tensor([-9.0, 10.0])  # labelled but out of range: weight 0
    return {"pred": pred}, {"keypoints": torch.cat([xy, visible[..., None]], -1)}


@pytest.mark.parametrize("seed", [0, 1])
def test_rtmcc_loss_matches_reference(seed):
    out, target = pose(seed)
    got = build_losses([{"criterion": "rtmcc_loss", "weight": None}])(out, target)
    assert sorted(got) == ["loss", "rtmcc_loss"]
    assert_value_and_grad(got["loss"], netspresso_rtmcc(out["pred"], target["keypoints"]), [out["pred"]])


def test_rtmcc_loss_bins_follow_the_prediction():
    """A 192 × 192 head (384 bins per axis): NetsPresso fails on it; here the labels take the head's bins."""
    out, target = pose(2, bins=384)
    got = build_losses([{"criterion": "rtmcc_loss", "weight": 2.0}])(out, target)
    torch.testing.assert_close(
        got["loss"], 2 * netspresso_rtmcc(out["pred"], target["keypoints"]), rtol=1e-5, atol=1e-6
    )


def test_rtmcc_loss_leaves_keypoints_and_half_precision():
    out, target = pose(3)
    keypoints = target["keypoints"].clone()
    losses = build_losses([{"criterion": "rtmcc_loss"}])
    losses(out, target)
    assert torch.equal(target["keypoints"], keypoints)
    for dtype in (torch.float16, torch.bfloat16):
        half = (out["pred"].detach() * 10).to(dtype).requires_grad_()
        value = losses({"pred": half}, target)["loss"]
        assert torch.isfinite(value)
        value.backward()
        assert torch.isfinite(half.grad.float()).all()


def test_rtmcc_loss_bad_input():
    out, target = pose(4)
    losses = build_losses([{"criterion": "rtmcc_loss"}])
    with pytest.raises(ValueError, match=r'out\["pred"\]'):
        losses({"pred": out["pred"][..., :-1]}, target)
    with pytest.raises(ValueError, match=r'out\["pred"\]'):
        losses({"pred": out["pred"][0]}, target)
    with pytest.raises(ValueError, match=r'target\["keypoints"\]'):
        losses(out, {"keypoints": target["keypoints"][..., :2]})
    with pytest.raises(TypeError, match="unknown"):
        build_losses([{"criterion": "rtmcc_loss", "beta": 5.0}])


def test_rtmcc_loss_without_visible_keypoints_is_zero():
    """Visibility 0 everywhere: every weight is 0, the loss is 0 (NetsPresso's too)."""
    out, target = pose(5)
    target["keypoints"][..., 2] = 0.0
    got = build_losses([{"criterion": "rtmcc_loss"}])(out, target)["loss"]
    assert float(got.detach()) == 0.0
    torch.testing.assert_close(got, netspresso_rtmcc(out["pred"], target["keypoints"]))

"""YOLOv8Criterion against the literal references of ultralytics 8.4's ``v8DetectionLoss`` and NetsPresso Trainer
1.4.1's ``yolov9_loss`` (``tests/references/task_aligned.py``): values and gradients of every term, both
styles; then the input layouts, the replaceable terms, bad input and the float64 gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.autograd import gradcheck

from lightning_losses import CrossEntropyLoss
from lightning_losses.functional.yolo_iou import yolo_ciou_loss
from lightning_losses.presets.yolov8 import YOLOv8Criterion
from tests.references.scenes import assert_terms_match, grads, random_targets
from tests.references.task_aligned import ciou_netspresso, ciou_ultralytics, yolov8_loss

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

STRIDES = (8, 16, 32)
SIDE = 128
SIZES = [(SIDE // s, SIDE // s) for s in STRIDES]


def _maps(seed: int, batch: int, num_classes: int, reg_max: int, scale: float = 1.0, shift: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 4 * reg_max + num_classes, h, w, generator=gen) * scale + shift).requires_grad_()
        for h, w in SIZES
    ]


def _targets(seed: int, counts, num_classes: int, **kwargs):
    gen = torch.Generator().manual_seed(seed + 100)
    return random_targets(gen, counts, num_classes, (SIDE, SIDE), **{"min_size": 6.0, "max_size": 100.0, **kwargs})


@pytest.mark.parametrize("style", ["ultralytics", "netspresso"])
@pytest.mark.parametrize(
    ("seed", "counts", "reg_max", "scale"),
    [(0, (3, 5), 16, 1.0), (1, (6, 0), 16, 3.0), (2, (1, 9), 8, 1.0), (3, (2, 2), 4, 0.5)],
)
def test_terms_and_gradients_match_the_literal_reference(style, seed, counts, reg_max, scale):
    """Reference: per image, per box and per prior loops of the stated semantics, float64 sums."""
    num_classes = 3
    maps = _maps(seed, len(counts), num_classes, reg_max, scale)
    targets = _targets(seed, counts, num_classes)
    criterion = YOLOv8Criterion(num_classes, STRIDES, reg_max=reg_max, style=style)
    got = criterion(maps, targets)
    want = yolov8_loss(maps, targets, STRIDES, num_classes, reg_max, style)
    assert want["loss_bbox"].item() > 0
    assert_terms_match(got, {k: torch.as_tensor(v).float() for k, v in want.items()}, maps, rtol=2e-4, atol=1e-6)


def test_the_two_styles_differ_where_the_references_do():
    """A 3 px box holds no cell centre; widened to 16 px (ultralytics) it holds (28, 28), whose predicted box
    (one stride each side) overlaps it with CIoU ≈ 0.011: a positive only the ultralytics style has."""
    maps = [torch.zeros(1, 4 * 16 + 2, h, w) for h, w in SIZES]
    for m in maps:
        m[:, 1 : 4 * 16 : 16] = 20.0  # bin 1 of each side: distances of one stride
    targets = [{"boxes": torch.tensor([[29.0, 29.0, 32.0, 32.0]]), "labels": torch.tensor([0])}]
    ultra = YOLOv8Criterion(2, STRIDES, style="ultralytics")(maps, targets)
    netspresso = YOLOv8Criterion(2, STRIDES, style="netspresso")(maps, targets)
    assert ultra["loss_bbox"].item() > 0
    assert netspresso["loss_bbox"].item() == 0.0


def test_box_and_class_pairs_equal_the_fused_map():
    num_classes, reg_max = 3, 16
    maps = _maps(5, 2, num_classes, reg_max)
    targets = _targets(5, (4, 3), num_classes)
    criterion = YOLOv8Criterion(num_classes, STRIDES)
    fused = criterion(maps, targets)
    pairs = criterion([(m[:, : 4 * reg_max], m[:, 4 * reg_max :]) for m in maps], targets)
    for key in fused:
        torch.testing.assert_close(pairs[key], fused[key])


def test_gains_are_the_terms_loss_weights_and_a_dense_bce_term_equals_the_default():
    """The default class term (QFL with β = 0 on (label, score)) is BCE: CrossEntropyLoss(use_sigmoid) on the
    dense target gives the same value and gradient."""
    num_classes = 3
    maps = _maps(6, 2, num_classes, 16)
    targets = _targets(6, (3, 2), num_classes)
    default = YOLOv8Criterion(num_classes, STRIDES)
    assert (default.loss_cls.loss_weight, default.loss_bbox.loss_weight, default.loss_dfl.loss_weight) == (
        0.5,
        7.5,
        1.5,
    )
    dense = YOLOv8Criterion(num_classes, STRIDES, loss_cls=CrossEntropyLoss(use_sigmoid=True, loss_weight=0.5))
    a, b = default(maps, targets), dense(maps, targets)
    torch.testing.assert_close(a["loss_cls"], b["loss_cls"])
    for ga, gb in zip(grads(a["loss_cls"], maps), grads(b["loss_cls"], maps), strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-8)
    unweighted = YOLOv8Criterion(num_classes, STRIDES, loss_bbox={"type": "YOLOCIoULoss"})(maps, targets)
    torch.testing.assert_close(unweighted["loss_bbox"] * 7.5, a["loss_bbox"])


def test_strides_derived_from_the_image_size():
    maps = _maps(7, 2, 3, 16)
    targets = _targets(7, (2, 2), 3)
    fixed = YOLOv8Criterion(3, STRIDES, style="netspresso")(maps, targets)
    derived = YOLOv8Criterion(3, None, style="netspresso")(maps, targets, image_size=(SIDE, SIDE))
    for key in fixed:
        torch.testing.assert_close(derived[key], fixed[key])
    with pytest.raises(ValueError, match="image_size"):
        YOLOv8Criterion(3, None)(maps, targets)


@pytest.mark.parametrize("counts", [(0, 0), (2, 0)])
def test_no_boxes_give_finite_terms_and_a_gradient_to_every_output(counts):
    """A batch without boxes, and an image without boxes: every map, box bins included, gets a gradient."""
    maps = _maps(8, 2, 3, 16)
    pairs = [(m[:, :64].detach().clone().requires_grad_(), m[:, 64:].detach().clone().requires_grad_()) for m in maps]
    targets = _targets(8, counts, 3)
    out = YOLOv8Criterion(3, STRIDES)(pairs, targets)
    total = sum(out.values())
    assert torch.isfinite(total)
    leaves = [t for pair in pairs for t in pair]
    got = torch.autograd.grad(total, leaves)
    assert all(g is not None and torch.isfinite(g).all() for g in got)
    if counts == (0, 0):
        assert out["loss_bbox"].item() == 0.0
        assert out["loss_dfl"].item() == 0.0


@pytest.mark.parametrize("style", ["ultralytics", "netspresso"])
def test_hostile_boxes_and_logits_stay_finite(style):
    """Boxes outside the image, zero-area boxes, ±1e4 logits: finite terms and gradients."""
    maps = [(torch.randint(0, 2, m.shape).float() * 2e4 - 1e4).requires_grad_() for m in _maps(9, 2, 3, 16)]
    targets = [
        {
            "boxes": torch.tensor([[-50.0, -40.0, 20.0, 30.0], [40.0, 40.0, 40.0, 80.0], [200.0, 10.0, 260.0, 50.0]]),
            "labels": torch.tensor([0, 1, 2]),
        },
        {"boxes": torch.tensor([[10.0, 10.0, 120.0, 120.0], [64.0, 64.0, 64.0, 64.0]]), "labels": torch.tensor([1, 0])},
    ]
    with pytest.warns(UserWarning, match="outside"):  # the first call's target check says so
        out = YOLOv8Criterion(3, STRIDES, style=style)(maps, targets)
    total = sum(out.values())
    assert all(torch.isfinite(v) for v in out.values())
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(total, maps))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_maps(dtype):
    """Half maps: finite terms within the input rounding of the float32 values, gradients in the input dtype."""
    maps = _maps(10, 2, 3, 16)
    targets = _targets(10, (3, 4), 3)
    criterion = YOLOv8Criterion(3, STRIDES)
    half = [m.detach().to(dtype).requires_grad_() for m in maps]
    want = criterion([m.detach().to(dtype).float() for m in maps], targets)
    got = criterion(half, targets)
    for key in want:
        assert got[key].dtype == torch.float32
        torch.testing.assert_close(got[key], want[key], rtol=2e-2, atol=1e-3)
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in torch.autograd.grad(sum(got.values()), half))


def test_1000_boxes_per_image():
    maps = _maps(11, 2, 3, 16)
    targets = _targets(11, (1000, 1000), 3, min_size=4.0, max_size=30.0)
    out = YOLOv8Criterion(3, STRIDES, max_assign_elements=1 << 18)(maps, targets)
    assert all(torch.isfinite(v) for v in out.values())
    assert out["loss_bbox"].item() > 0


def test_targets_are_not_modified():
    maps = _maps(12, 2, 3, 16)
    targets = _targets(12, (3, 1), 3)
    before = copy.deepcopy(targets)
    YOLOv8Criterion(3, STRIDES)(maps, targets)
    for a, b in zip(targets, before, strict=True):
        assert torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(a["labels"], b["labels"])


def test_bad_input_names_the_argument():
    maps = _maps(13, 2, 3, 16)
    targets = _targets(13, (1, 1), 3)
    criterion = YOLOv8Criterion(3, STRIDES)
    with pytest.raises(ValueError, match=r"outputs\[1\].*reg_max"):
        criterion([maps[0], maps[1][:, 1:], maps[2]], targets)
    with pytest.raises(ValueError, match="levels"):
        criterion(maps[:2], targets)
    with pytest.raises(ValueError, match="targets"):
        criterion(maps, targets[:1])
    with pytest.raises(ValueError, match="reg_max"):
        YOLOv8Criterion(3, STRIDES, reg_max=1)
    with pytest.raises(ValueError, match="outputs"):
        YOLOv8Criterion(3, STRIDES, reg_max=8)(maps, targets)
    with pytest.raises(ValueError, match="style"):
        YOLOv8Criterion(3, STRIDES, style="mmdet")
    with pytest.raises(TypeError, match="outputs"):
        criterion(maps[0], targets)


@pytest.mark.parametrize("ciou", [ciou_ultralytics, ciou_netspresso])
def test_yolo_ciou_loss_matches_both_references_value_and_gradient(ciou):
    """Both references take α without gradient: the gradients are compared with theirs, not finite differences."""
    pred, target, weight = _box_pairs(14)
    pred.requires_grad_()
    got = yolo_ciou_loss(pred, target, weight, reduction="sum")
    want = ((1 - ciou(pred, target)) * weight).sum()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grads(got, [pred])[0], grads(want, [pred])[0], rtol=1e-6, atol=1e-9)


def test_yolo_ciou_kernel_float64_gradcheck_where_alpha_has_no_effect():
    """Same aspect ratios (v = 0 and ∂v = 0): the detached α cannot matter, so finite differences apply."""
    pred, target, weight = _box_pairs(15)
    pred = torch.cat([pred[:, :2], pred[:, :2] + (target[:, 2:] - target[:, :2]) * 0.8], 1)
    assert gradcheck(
        lambda p, t: yolo_ciou_loss(p, t, weight, avg_factor=3.0), (pred.requires_grad_(), target.requires_grad_())
    )


def _box_pairs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(64, 2, generator=gen, dtype=torch.float64) * 20
    pred = torch.cat([xy, xy + 1 + torch.rand(64, 2, generator=gen, dtype=torch.float64) * 10], 1)
    xy = xy + torch.randn(64, 2, generator=gen, dtype=torch.float64) * 3
    target = torch.cat([xy, xy + 1 + torch.rand(64, 2, generator=gen, dtype=torch.float64) * 10], 1)
    return pred, target, torch.rand(64, generator=gen, dtype=torch.float64)


def test_criterion_float64_gradcheck_with_the_assignment_held_fixed():
    """Both references detach the assignment, soft targets and normaliser included; with them held fixed the
    class and DFL terms are smooth in the maps: gradcheck (the box term's α is detached, see above)."""
    gen = torch.Generator().manual_seed(16)
    sizes = [(4, 4), (2, 2)]
    maps = [torch.randn(1, 4 * 4 + 2, h, w, generator=gen, dtype=torch.float64, requires_grad=True) for h, w in sizes]
    targets = [
        {"boxes": torch.tensor([[3.0, 5.0, 24.0, 20.0], [10.0, 2.0, 30.0, 30.0]]), "labels": torch.tensor([0, 1])}
    ]
    criterion = YOLOv8Criterion(2, (8, 16), reg_max=4)
    assign = criterion.assigner.assign
    fixed = assign(*_assign_inputs(criterion, maps, targets))
    assert fixed.positive.sum() >= 2
    criterion.assigner.assign = lambda *args, **kwargs: fixed

    def cls_and_dfl(a, b):
        out = criterion([a, b], targets)
        return out["loss_cls"] + out["loss_dfl"]

    assert gradcheck(cls_and_dfl, tuple(maps))


def _assign_inputs(criterion, maps, targets):
    """What the criterion hands its assigner, captured by running it once."""
    captured = []
    original = criterion.assigner.assign
    criterion.assigner.assign = lambda *args, **kwargs: captured.append((args, kwargs)) or original(*args, **kwargs)
    criterion(maps, targets)
    criterion.assigner.assign = original
    args, kwargs = captured[0]
    return (*args, kwargs.get("min_size"))

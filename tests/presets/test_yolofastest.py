"""YOLOFastestCriterion against the literal per-image NetsPresso Trainer 1.4.1 ``yolofastest_loss`` reference
(``tests.references.netspresso_extra``), a hand-worked decoding, empty ground truth, half precision, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_losses.presets.yolofastest import YOLOFastestCriterion
from tests.references.netspresso_extra import netspresso_yolofastest
from tests.references.scenes import assert_terms_match
from tests.sync_counter import SyncCounter

pytestmark = pytest.mark.usefixtures("single_intra_op_thread")

IMAGE = 128
STRIDES = (16, 32)
ANCHORS = [[10.0, 14.0, 24.0, 30.0, 40.0, 60.0], [50.0, 40.0, 70.0, 90.0, 110.0, 100.0]]
NUM_ANCHORS = 3
C = 3


def random_targets(generator: torch.Generator, counts) -> list[dict[str, torch.Tensor]]:
    targets = []
    for n in counts:
        wh = 6 + torch.rand(n, 2, generator=generator) * 80
        xy = torch.rand(n, 2, generator=generator) * (IMAGE - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, C, (n,), generator=generator)})
    return targets


def maps_near_targets(generator, targets, noise=0.3, num_classes=C):
    """Raw maps whose decoded boxes sit near the closest box (high IoUs, so dynamic k > 1)."""
    batch = len(targets)
    outputs = []
    for stride, anchors in zip(STRIDES, ANCHORS, strict=True):
        size = IMAGE // stride
        raw = torch.randn(batch, NUM_ANCHORS, 5 + num_classes, size, size, generator=generator) * noise
        ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
        for b, target in enumerate(targets):
            boxes = target["boxes"]
            if not len(boxes):
                continue
            center = (boxes[:, :2] + boxes[:, 2:]) / 2
            wh = boxes[:, 2:] - boxes[:, :2]
            px, py = (xs + 0.5) * stride, (ys + 0.5) * stride
            nearest = ((px[..., None] - center[:, 0]) ** 2 + (py[..., None] - center[:, 1]) ** 2).argmin(-1)
            for a in range(NUM_ANCHORS):
                anchor = torch.tensor(anchors[2 * a : 2 * a + 2])
                fx = (center[nearest, 0] / stride - xs).clamp(0.05, 0.95)
                fy = (center[nearest, 1] / stride - ys).clamp(0.05, 0.95)
                raw[b, a, 0] += torch.log(fx / (1 - fx))
                raw[b, a, 1] += torch.log(fy / (1 - fy))
                for axis in (0, 1):
                    ratio = (wh[nearest, axis] / (2 * anchor[axis]) - 1).clamp(-0.95, 0.95)
                    raw[b, a, 2 + axis] += 2 * (torch.atanh(ratio) + 0.549306)
        outputs.append(raw.reshape(batch, -1, size, size).requires_grad_())
    return outputs


def random_maps(generator, batch, scale=0.7, num_classes=C):
    return [
        (
            torch.randn(batch, NUM_ANCHORS * (5 + num_classes), IMAGE // s, IMAGE // s, generator=generator) * scale
        ).requires_grad_()
        for s in STRIDES
    ]


def reference(outputs, targets, num_classes=C):
    want = netspresso_yolofastest(outputs, targets, ANCHORS, IMAGE, num_classes)
    want.pop("num_fg")
    return want


SCENES = {"near": (0, (4, 0, 7)), "near_many": (1, (12, 9)), "random": (2, (5, 0, 2)), "one_box": (3, (1,))}


@pytest.mark.parametrize("name", sorted(SCENES))
def test_terms_match_netspresso_reference(name):
    seed, counts = SCENES[name]
    generator = torch.Generator().manual_seed(seed)
    targets = random_targets(generator, counts)
    outputs = random_maps(generator, len(counts)) if name == "random" else maps_near_targets(generator, targets)
    got = YOLOFastestCriterion(C, ANCHORS, strides=STRIDES)(outputs, targets)
    assert_terms_match(got, reference(outputs, targets), outputs)


def test_scene_has_several_positives_per_box():
    """The near scene exercises dynamic k > 1 and conflicts: more positives than boxes."""
    generator = torch.Generator().manual_seed(1)
    targets = random_targets(generator, SCENES["near_many"][1])
    outputs = maps_near_targets(generator, targets)
    num_fg = netspresso_yolofastest(outputs, targets, ANCHORS, IMAGE, C)["num_fg"]
    assert num_fg > 2 * sum(len(t["labels"]) for t in targets)


def test_derived_strides_equal_fixed_strides():
    generator = torch.Generator().manual_seed(5)
    targets = random_targets(generator, (3, 2))
    outputs = maps_near_targets(generator, targets)
    fixed = YOLOFastestCriterion(C, ANCHORS, strides=STRIDES)(outputs, targets)
    derived = YOLOFastestCriterion(C, ANCHORS, strides=None)(outputs, targets, image_size=(IMAGE, IMAGE))
    for key in fixed:
        torch.testing.assert_close(derived[key], fixed[key])


def test_hand_worked_decoding_zero_logits_give_anchor_boxes():
    """Zero logits: center (σ(0) + g)·s = (g + 0.5)·s, size 2·(tanh(-atanh ½) + 1)·a = a. One box equal to the
    anchor at a cell center is that prior's box: GIoU 1, loss_bbox 0 for it."""
    crit = YOLOFastestCriterion(1, [[16.0, 16.0]], strides=[16])
    outputs = [torch.zeros(1, 6, 4, 4, requires_grad=True)]
    target = [{"boxes": torch.tensor([[16.0, 16.0, 32.0, 32.0]]), "labels": torch.tensor([0])}]
    terms = crit(outputs, target)
    # Candidates: cells whose center lies within 24 px of (24, 24): the 3 × 3 block around cell (1, 1).
    # IoUs with the box: 1 for cell (1, 1), 0 elsewhere → dynamic k = 1, the exact prior is the positive.
    # (0.549306 rounds atanh ½ = 0.5493061…: the size is the anchor's to 1e-7, 5·(1 - GIoU) about 1e-6.)
    assert float(terms["loss_bbox"].detach()) == pytest.approx(0.0, abs=1e-5)
    # objectness: 16 priors at logit 0, one positive: 16·log 2 / 1; class: BCE(0, IoU 1) = log 2.
    assert float(terms["loss_obj"].detach()) == pytest.approx(16 * math.log(2), rel=1e-6)
    assert float(terms["loss_cls"].detach()) == pytest.approx(math.log(2), rel=1e-6)


def test_no_boxes_anywhere():
    """Empty ground truth: objectness against 0 over every prior divided by 1; box and class terms 0."""
    generator = torch.Generator().manual_seed(6)
    outputs = random_maps(generator, 2)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    got = YOLOFastestCriterion(C, ANCHORS, strides=STRIDES)(outputs, targets)
    assert_terms_match(got, reference(outputs, targets), outputs)
    assert float(got["loss_bbox"].detach()) == 0.0
    assert float(got["loss_cls"].detach()) == 0.0
    sum(got.values()).backward()
    assert all(torch.isfinite(o.grad).all() for o in outputs)


def test_targets_are_not_modified():
    """NetsPresso converts the caller's boxes to cxcywh in place; this criterion leaves them as given."""
    generator = torch.Generator().manual_seed(7)
    targets = random_targets(generator, (3, 1))
    snapshot = copy.deepcopy(targets)
    YOLOFastestCriterion(C, ANCHORS, strides=STRIDES)(maps_near_targets(generator, targets), targets)
    for before, after in zip(snapshot, targets, strict=True):
        assert torch.equal(before["boxes"], after["boxes"])
        assert torch.equal(before["labels"], after["labels"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_finite_and_close(dtype):
    generator = torch.Generator().manual_seed(8)
    targets = random_targets(generator, (4, 0))
    outputs = maps_near_targets(generator, targets)
    half = [o.detach().to(dtype).requires_grad_() for o in outputs]
    got = YOLOFastestCriterion(C, ANCHORS, strides=STRIDES)(half, targets)
    want = reference([o.detach().float() for o in half], targets)
    for key in want:
        assert torch.isfinite(got[key]).all()
        torch.testing.assert_close(got[key].float(), want[key].float(), rtol=2e-2, atol=2e-2)
    sum(got.values()).backward()
    assert all(torch.isfinite(o.grad.float()).all() for o in half)


def test_extreme_logits_stay_finite():
    """Huge logits saturate tanh / sigmoid: boxes stay bounded (size < 4·anchor), terms finite."""
    generator = torch.Generator().manual_seed(9)
    targets = random_targets(generator, (3,))
    outputs = [(torch.randn(1, NUM_ANCHORS * (5 + C), IMAGE // s, IMAGE // s) * 1e4).requires_grad_() for s in STRIDES]
    got = YOLOFastestCriterion(C, ANCHORS, strides=STRIDES)(outputs, targets)
    assert all(torch.isfinite(v) for v in got.values())


def test_anchor_table_layouts_are_equivalent():
    generator = torch.Generator().manual_seed(10)
    targets = random_targets(generator, (2,))
    outputs = maps_near_targets(generator, targets)
    pairs = [[anchors[i : i + 2] for i in range(0, len(anchors), 2)] for anchors in ANCHORS]
    flat = YOLOFastestCriterion(C, ANCHORS, strides=STRIDES)(outputs, targets)
    paired = YOLOFastestCriterion(C, pairs, strides=STRIDES)(outputs, targets)
    for key in flat:
        torch.testing.assert_close(paired[key], flat[key])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"anchors": []}, "anchors"),
        ({"anchors": [[10.0, 14.0, 24.0]]}, r"anchors\[0\]"),
        ({"anchors": [[10.0, -14.0]]}, r"anchors\[0\]"),
        ({"anchors": [[10.0, 14.0], [10.0, 14.0, 20.0, 20.0]]}, "same number"),
        ({"anchors": ANCHORS, "strides": (8, 16, 32)}, "levels"),
        ({"anchors": ANCHORS, "num_classes": 0}, "num_classes"),
    ],
)
def test_bad_construction(kwargs, match):
    kwargs = {"num_classes": C, **kwargs}
    with pytest.raises(ValueError, match=match):
        YOLOFastestCriterion(**kwargs)


def test_bad_outputs_name_the_argument():
    crit = YOLOFastestCriterion(C, ANCHORS, strides=STRIDES)
    generator = torch.Generator().manual_seed(11)
    outputs = random_maps(generator, 2)
    targets = random_targets(generator, (1, 1))
    with pytest.raises(ValueError, match=r"outputs\[1\]"):
        crit([outputs[0], outputs[1][:, :-1]], targets)
    with pytest.raises(ValueError, match="levels"):
        crit(outputs[:1], targets)
    with pytest.raises(ValueError, match="targets"):
        crit(outputs, targets[:1])
    with pytest.raises(ValueError, match=r"outputs\[1\]"):
        crit([outputs[0], outputs[1][:1]], targets)
    with pytest.raises(ValueError, match="image_size"):
        YOLOFastestCriterion(C, ANCHORS, strides=None)(outputs, targets)
    with pytest.raises(TypeError, match="outputs"):
        crit(outputs[0], targets)


def test_forward_and_backward_make_no_host_sync():
    """Padding, decoding, assignment, row gathering and the terms read nothing back and copy nothing up
    (counted by tests/sync_counter.py)."""
    generator = torch.Generator().manual_seed(12)
    targets = random_targets(generator, (3, 0))
    outputs = maps_near_targets(generator, targets)
    crit = YOLOFastestCriterion(C, ANCHORS, strides=STRIDES)
    crit(outputs, targets)  # the first call checks the targets on the host, once, and fills the prior cache
    with SyncCounter(watch=crit) as counter:
        sum(crit(outputs, targets).values()).backward()
    assert counter.syncs == [], counter.report()

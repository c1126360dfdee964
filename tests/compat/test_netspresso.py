"""compat.netspresso.build_losses: NetsPresso Trainer's ``model.losses`` list (NetsPresso Trainer 1.4.1) over its
``out`` / ``target`` dicts; references are torch / torchvision formulas and the library's own criteria."""

from __future__ import annotations

import copy
import math
from ctypes import c_int
from multiprocessing import Value

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from lightning_losses import PIDNetCriterion, RetinaNetCriterion, YOLOXCriterion
from lightning_losses.compat.netspresso import CRITERIA, NetsPressoLosses, build_losses

C = 3
IMAGE = 64


def classification(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randn(6, C, generator=generator) * 2
    labels = torch.randint(0, C, (6,), generator=generator)
    return pred, labels, F.one_hot(labels, C).float()


def detection_targets(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    gts = []
    for n in (3, 0):
        xy = torch.rand(n, 2, generator=generator) * 30
        wh = 8 + torch.rand(n, 2, generator=generator) * 24
        gts.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, C, (n,), generator=generator)})
    return gts


def yolox_out(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return {"pred": [torch.randn(2, 5 + C, IMAGE // s, IMAGE // s, generator=generator) * 0.5 for s in (8, 16, 32)]}


def retinanet_out(seed: int = 0):
    """NetsPresso's layout: one (A, 4) anchor tensor and per-level (B, A_l, C) / (B, A_l, 4) lists."""
    generator = torch.Generator().manual_seed(seed)
    anchors, cls, reg = [], [], []
    for s in (8, 16, 32):
        n = IMAGE // s
        for y in range(n):
            for x in range(n):
                for w, h in ((2 * s, 2 * s), (3 * s, 1.5 * s)):
                    anchors.append([x * s - w / 2, y * s - h / 2, x * s + w / 2, y * s + h / 2])
        cls.append(torch.randn(2, n * n * 2, C, generator=generator) - 2)
        reg.append(torch.randn(2, n * n * 2, 4, generator=generator) * 0.3)
    return {"anchors": torch.tensor(anchors), "cls_logits": cls, "bbox_regression": reg}


def pidnet_io(seed: int = 0, ignore_index: int = -100):
    generator = torch.Generator().manual_seed(seed)
    out = {
        "pred": torch.randn(2, C, 8, 8, generator=generator),
        "extra_p": torch.randn(2, C, 8, 8, generator=generator),
        "extra_d": torch.randn(2, 1, 8, 8, generator=generator) * 2,
    }
    target = torch.randint(0, C, (2, 16, 16), generator=generator)
    target[:, :2] = ignore_index
    return out, {"target": target, "bd_gt": (torch.rand(2, 16, 16, generator=generator) < 0.3).float()}


# --------------------------------------------------------------------------------------------------
# Each criterion name
# --------------------------------------------------------------------------------------------------
def test_cross_entropy_equals_torch_with_one_hot_and_int_targets():
    """Reference: torch's nn.CrossEntropyLoss (mean; ignore_index -100; label smoothing) as NetsPresso wraps it."""
    pred, labels, onehot = classification()
    losses = build_losses([{"criterion": "cross_entropy", "label_smoothing": 0.1, "weight": None}])
    got = losses({"pred": pred}, {"target": onehot})
    torch.testing.assert_close(got["cross_entropy"], F.cross_entropy(pred, onehot, label_smoothing=0.1))
    labels[:2] = -100
    got = losses({"pred": pred}, {"target": labels})
    torch.testing.assert_close(got["loss"], F.cross_entropy(pred, labels, label_smoothing=0.1))


def test_focal_loss_equals_torchvision_mean():
    """Reference: torchvision.ops.sigmoid_focal_loss(reduction='mean'), which NetsPresso's focal_loss re-implements."""
    pred, _, onehot = classification(1)
    for alpha, gamma in ((0.25, 2.0), (-1.0, 1.5)):
        losses = build_losses([{"criterion": "focal_loss", "alpha": alpha, "gamma": gamma, "weight": None}])
        got = losses({"pred": pred}, {"target": onehot})["focal_loss"]
        torch.testing.assert_close(got, sigmoid_focal_loss(pred, onehot, alpha, gamma, reduction="mean"))


def test_yolox_loss_is_the_criterion_with_strides_from_img_size():
    """Reference: YOLOXCriterion(strides=(8, 16, 32)): img_size 64 // W_l gives those strides; terms and sum."""
    out, gts = yolox_out(), detection_targets()
    losses = build_losses([{"criterion": "yolox_loss", "l1_activate_epoch": 1, "weight": None}])
    got = losses(out, {"gt": gts, "img_size": IMAGE, "num_classes": C})
    want = YOLOXCriterion(C, strides=(8, 16, 32))(out["pred"], gts)
    for term, value in want.items():
        torch.testing.assert_close(got[f"yolox_loss/{term}"], value)
    torch.testing.assert_close(got["yolox_loss"], sum(want.values()))
    torch.testing.assert_close(got["loss"], sum(want.values()))


def test_retinanet_loss_is_the_netspresso_style_criterion_on_given_anchors():
    """Reference: RetinaNetCriterion(style='netspresso') with the model's anchors and flattened per-level outputs."""
    out, gts = retinanet_out(), detection_targets(1)
    got = build_losses([{"criterion": "retinanet_loss", "weight": None}])(out, {"gt": gts})
    want = RetinaNetCriterion(C, strides=(1, 1, 1), style="netspresso")(
        out["cls_logits"], out["bbox_regression"], gts, priors=out["anchors"]
    )
    torch.testing.assert_close(got["retinanet_loss"], sum(want.values()))
    assert set(got) == {"retinanet_loss", "retinanet_loss/loss_cls", "retinanet_loss/loss_bbox", "loss"}


@pytest.mark.parametrize("ignore_index", [-100, 255])
def test_pidnet_loss_is_the_criterion_without_ohem(ignore_index):
    """Reference: PIDNetCriterion(ohem=False, ignore_index=…) on (extra_p, pred, extra_d, target, bd_gt);
    NetsPresso's default ignore_index is -100."""
    out, target = pidnet_io(ignore_index=ignore_index)
    entry = {"criterion": "pidnet_loss", "weight": None}
    if ignore_index != -100:
        entry["ignore_index"] = ignore_index
    got = build_losses([entry])(out, target)
    want = PIDNetCriterion(C, ignore_index=ignore_index, ohem=False)(
        out["extra_p"], out["pred"], out["extra_d"], target["target"], target["bd_gt"]
    )
    torch.testing.assert_close(got["pidnet_loss"], sum(want.values()))
    assert math.isfinite(float(got["loss"]))


def test_every_criterion_name_builds():
    """Reference: NetsPresso Trainer 1.4.1's loss registry: the five criterion names covered."""
    assert {"cross_entropy", "focal_loss", "yolox_loss", "retinanet_loss", "pidnet_loss"} <= set(CRITERIA)
    for name in CRITERIA:
        entry = {"criterion": name, "weight": None}
        entry.update(
            {"focal_loss": {"alpha": 0.25, "gamma": 2.0}, "yolox_loss": {"l1_activate_epoch": 1}}.get(name, {})
        )
        assert isinstance(build_losses([entry]), NetsPressoLosses)


# --------------------------------------------------------------------------------------------------
# Weights, names, totals
# --------------------------------------------------------------------------------------------------
def test_weight_none_is_one_and_total_is_weighted_sum():
    """Reference: NetsPresso's model.losses list: weight None -> 1.0; total = Σ weight · value; values unweighted."""
    pred, _, onehot = classification(2)
    losses = build_losses(
        [
            {"criterion": "cross_entropy", "label_smoothing": 0.0, "weight": None},
            {"criterion": "focal_loss", "alpha": 0.25, "gamma": 2.0, "weight": 2.5},
        ]
    )
    got = losses({"pred": pred}, {"target": onehot})
    ce = F.cross_entropy(pred, onehot)
    focal = sigmoid_focal_loss(pred, onehot, 0.25, 2.0, reduction="mean")
    torch.testing.assert_close(got["cross_entropy"], ce)
    torch.testing.assert_close(got["focal_loss"], focal)
    torch.testing.assert_close(got["loss"], 1.0 * ce + 2.5 * focal)


def test_repeated_criteria_are_suffixed_and_all_counted():
    """Reference: this adapter's naming (NetsPresso's dict would keep only the last): name, name_2, name_3."""
    pred, _, onehot = classification(3)
    entries = [
        {"criterion": "focal_loss", "alpha": a, "gamma": 2.0, "weight": w}
        for a, w in ((0.25, 1.0), (0.5, 2.0), (0.75, None))
    ]
    got = build_losses(entries)({"pred": pred}, {"target": onehot})
    assert set(got) == {"focal_loss", "focal_loss_2", "focal_loss_3", "loss"}
    values = [sigmoid_focal_loss(pred, onehot, a, 2.0, reduction="mean") for a in (0.25, 0.5, 0.75)]
    for key, value in zip(("focal_loss", "focal_loss_2", "focal_loss_3"), values, strict=True):
        torch.testing.assert_close(got[key], value)
    torch.testing.assert_close(got["loss"], values[0] + 2.0 * values[1] + values[2])


def test_unknown_criterion_and_bad_lists_raise():
    """Errors at the boundary: an unknown criterion is a KeyError naming the known ones; malformed lists fail."""
    with pytest.raises(KeyError, match="yolov42_loss"):
        build_losses([{"criterion": "yolov42_loss", "weight": None}])
    with pytest.raises(ValueError, match="criterion"):
        build_losses([{"weight": 1.0}])
    with pytest.raises(TypeError):
        build_losses("focal_loss")
    with pytest.raises(ValueError, match="empty"):
        build_losses([])({"pred": torch.zeros(1)}, {"target": torch.zeros(1)})


# --------------------------------------------------------------------------------------------------
# Epochs, degenerate outputs, mutation
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("before_first_call", [True, False])
def test_set_epoch_reaches_yolox(before_first_call):
    """Reference: NetsPresso's yolox_loss: L1 off while epoch < l1_activate_epoch, on from it and with no epoch."""
    out, gts = yolox_out(1), detection_targets(2)
    target = {"gt": gts, "img_size": IMAGE, "num_classes": C}
    losses = build_losses([{"criterion": "yolox_loss", "l1_activate_epoch": 3, "weight": None}])
    if not before_first_call:
        assert losses(out, target)["yolox_loss/loss_l1"] > 0  # no epoch yet: on
    losses.set_epoch(2)
    assert losses(out, target)["yolox_loss/loss_l1"] == 0
    losses.set_epoch(3)
    assert losses(out, target)["yolox_loss/loss_l1"] > 0
    losses.set_epoch(None)
    assert losses(out, target)["yolox_loss/loss_l1"] > 0


def test_set_epoch_matches_netspresso_epoch_counter():
    """Reference: the trainer's multiprocessing Value(c_int) counter read as .value: passing it on gives the same."""
    counter = Value(c_int, 1)
    out, gts = yolox_out(2), detection_targets(3)
    losses = build_losses([{"criterion": "yolox_loss", "l1_activate_epoch": 2, "weight": None}])
    seen = []
    for epoch in (1, 2):
        counter.value = epoch
        losses.set_epoch(counter.value)
        seen.append(float(losses(out, {"gt": gts, "img_size": IMAGE, "num_classes": C})["yolox_loss/loss_l1"]))
    assert seen[0] == 0
    assert seen[1] > 0


def test_pidnet_without_extra_p_is_zero_with_graph():
    """Reference: NetsPresso's pidnet_loss: out['extra_p'] None -> sum(pred - pred): 0, connected to pred's graph."""
    pred = torch.randn(2, C, 8, 8, requires_grad=True)
    got = build_losses([{"criterion": "pidnet_loss", "weight": 2.0}])(
        {"pred": pred, "extra_p": None, "extra_d": None}, {"target": torch.zeros(2, 16, 16, dtype=torch.long)}
    )
    assert got["pidnet_loss"] == 0
    assert got["loss"] == 0
    assert got["loss"].requires_grad
    got["loss"].backward()
    assert (pred.grad == 0).all()


def test_inputs_are_not_mutated():
    """Reference: NetsPresso's yolox_loss / pidnet_loss (they rewrite target['gt'] and out's maps); here neither is."""
    yolox = yolox_out(3)
    yolox_target = {"gt": detection_targets(4), "img_size": IMAGE, "num_classes": C}
    pid_out, pid_target = pidnet_io(1)
    before = copy.deepcopy((yolox, yolox_target, pid_out, pid_target))
    identities = [id(t) for t in pid_out.values()]
    build_losses([{"criterion": "yolox_loss", "l1_activate_epoch": 1, "weight": None}])(yolox, yolox_target)
    build_losses([{"criterion": "pidnet_loss", "weight": None}])(pid_out, pid_target)
    assert [id(t) for t in pid_out.values()] == identities
    after = (yolox, yolox_target, pid_out, pid_target)

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return a.shape == b.shape and torch.equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return a == b

    assert same(after, before)


@pytest.mark.parametrize(
    ("entry", "bad"),
    [
        ({"criterion": "yolox_loss", "l1_activate_epoch": 1, "l1_epoch": 3}, "l1_epoch"),
        ({"criterion": "retinanet_loss", "gama": 2.0}, "gama"),
        ({"criterion": "pidnet_loss", "ohem": True}, "ohem"),
    ],
)
def test_unknown_parameters_of_lazily_built_criteria_raise_at_build_time(entry, bad):
    """The criteria whose class count comes from the first outputs still check their parameters up front."""
    with pytest.raises(TypeError, match=rf"unknown parameters \['{bad}'\]"):
        build_losses([entry])
    build_losses([{k: v for k, v in entry.items() if k != bad}])

"""DETRCriterion against the literal set-criterion reference (tests/references/detr.py: brute-force matching and
every term written out one image, query and class at a time), float64 gradcheck, bad input, half precision."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck

from lightning_losses import L1Loss, VarifocalLoss
from lightning_losses.assigners.hungarian import HungarianMatcher
from lightning_losses.presets.detr import DETRCriterion
from tests.references.detr import detr_terms

SIZE = (60, 80)  # (H, W)


def scene(counts=(2, 0, 3), queries=6, classes=3, aux=2, dn_layers=2, groups=2, seed=0, columns=None):
    """Predictions of a small query-based detector: final, auxiliary, encoder and denoising sets, and targets."""
    g = torch.Generator().manual_seed(seed)
    height, width = SIZE
    targets = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.6, height * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.3, height * 0.3]) + 3
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, classes, (n,), generator=g)})

    def pair(q):
        logits = torch.randn(len(counts), q, columns or classes, generator=g) * 2
        centers = torch.rand(len(counts), q, 2, generator=g) * 0.6 + 0.2
        sizes = torch.rand(len(counts), q, 2, generator=g) * 0.3 + 0.05
        return logits, torch.cat([centers, sizes], -1)

    biggest = max(counts)
    dn_queries = 2 * biggest * groups
    index = [torch.cat([torch.arange(n) + 2 * biggest * k for k in range(groups)]) for n in counts]
    return {
        "final": pair(queries),
        "aux": [pair(queries) for _ in range(aux)],
        "enc": pair(queries),
        "dn": [pair(dn_queries) for _ in range(dn_layers)],
        "meta": {"dn_positive_idx": index, "dn_num_group": groups},
        "targets": targets,
    }


def run(criterion, s, **overrides):
    kwargs = {
        "image_size": SIZE,
        "aux_outputs": s["aux"],
        "enc_outputs": s["enc"],
        "dn_outputs": s["dn"],
        "dn_meta": s["meta"],
        **overrides,
    }
    return criterion(*s["final"], s["targets"], **kwargs)


def reference(s, classification="vfl", **kwargs):
    sets = [("", *s["final"]), *((f"_aux_{i}", *p) for i, p in enumerate(s["aux"])), ("_enc", *s["enc"])]
    dn = [(f"_dn_{i}", *p) for i, p in enumerate(s["dn"])]
    return detr_terms(
        sets, dn, s["meta"]["dn_positive_idx"], s["meta"]["dn_num_group"], s["targets"], SIZE, classification, **kwargs
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_vfl_terms_match_reference(seed):
    s = scene(seed=seed)
    criterion = DETRCriterion(3, num_aux_layers=2, encoder=True, num_dn_layers=2)
    out = run(criterion, s)
    assert tuple(out) == criterion.terms
    assert len(out) == 3 * (1 + 2 + 1 + 2)
    expected = reference(s)
    assert set(expected) == set(out)
    for key, value in expected.items():
        assert float(out[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_focal_terms_match_reference():
    s = scene(seed=2)
    criterion = DETRCriterion(3, classification="focal", num_aux_layers=2, encoder=True, num_dn_layers=2)
    out = run(criterion, s)
    expected = reference(s, "focal", alpha=0.25)
    for key, value in expected.items():
        assert float(out[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_ce_terms_match_reference():
    s = scene(seed=3, columns=4)
    criterion = DETRCriterion(3, classification="ce", num_aux_layers=2, encoder=True, num_dn_layers=2, eos_coef=0.2)
    out = run(criterion, s)
    expected = reference(s, "ce", eos_coef=0.2, matcher_kwargs={"weights": (1.0, 5.0, 2.0), "class_cost": "softmax"})
    for key, value in expected.items():
        assert float(out[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_configured_weights_matcher_and_terms():
    s = scene(seed=4)
    matcher = {"cost_class": 1.0, "cost_bbox": 3.0, "cost_giou": 1.0, "alpha": 0.3}
    criterion = DETRCriterion(
        3,
        matcher=matcher,
        loss_cls={"type": "VarifocalLoss", "alpha": 0.5, "loss_weight": 2.0, "detach_focal_weight": True},
        loss_bbox=L1Loss(loss_weight=4.0),
        loss_giou={"type": "GIoULoss", "loss_weight": 1.5},
        num_aux_layers=2,
        encoder=True,
        num_dn_layers=2,
    )
    out = run(criterion, s)
    expected = reference(
        s, weights=(2.0, 4.0, 1.5), alpha=0.5, matcher_kwargs={"weights": (1.0, 3.0, 1.0), "alpha": 0.3}
    )
    for key, value in expected.items():
        assert float(out[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_main_terms_are_tracked_by_their_loss_modules():
    s = scene(seed=5)
    criterion = DETRCriterion(3, num_aux_layers=2, encoder=True, num_dn_layers=2)
    first = run(criterion, s)
    second = run(criterion, scene(seed=6))
    metrics = criterion.term_metrics()
    assert set(metrics) == {"loss_vfl", "loss_bbox", "loss_giou"}
    for term in metrics:
        torch.testing.assert_close(metrics[term].compute(), (first[term] + second[term]).detach() / 2)


def test_missing_sets_give_zero_terms_with_the_same_keys():
    s = scene(seed=7)
    criterion = DETRCriterion(3, num_aux_layers=2, encoder=True, num_dn_layers=2)
    logits, boxes = (t.clone().requires_grad_() for t in s["final"])
    out = criterion(logits, boxes, s["targets"], image_size=SIZE)
    assert tuple(out) == criterion.terms
    for key, value in out.items():
        if key.endswith(("_aux_0", "_aux_1", "_enc", "_dn_0", "_dn_1")):
            assert float(value.detach()) == 0.0
    sum(out.values()).backward()
    assert logits.grad is not None
    assert boxes.grad is not None


def test_gradcheck_float64():
    s = scene(counts=(2, 1), queries=4, aux=1, dn_layers=1, seed=8)
    logits, boxes = (t.double().requires_grad_() for t in s["final"])
    aux_logits, aux_boxes = (t.double().requires_grad_() for t in s["aux"][0])
    criterion = DETRCriterion(
        3, classification="focal", num_aux_layers=1, encoder=False, num_dn_layers=1, loss_cls={"type": "FocalLoss"}
    )
    dn = [tuple(t.double() for t in s["dn"][0])]

    def fn(x, b, ax, ab):
        out = criterion(x, b, s["targets"], image_size=SIZE, aux_outputs=[(ax, ab)], dn_outputs=dn, dn_meta=s["meta"])
        return torch.stack(list(out.values()))

    assert gradcheck(fn, (logits, boxes, aux_logits, aux_boxes), eps=1e-6, atol=1e-5)


def test_gradcheck_float64_vfl_logits():
    # VFL's target is the detached IoU of the boxes and RT-DETR detaches the focal factor: with that factor kept
    # (MMDetection) the derivative in the logits is exact.
    s = scene(counts=(2, 1), queries=4, aux=0, dn_layers=0, seed=9)
    logits = s["final"][0].double().requires_grad_()
    boxes = s["final"][1].double()
    criterion = DETRCriterion(3, loss_cls=VarifocalLoss(detach_focal_weight=False))

    def fn(x):
        return torch.stack(list(criterion(x, boxes, s["targets"], image_size=SIZE).values()))

    assert gradcheck(fn, (logits,), eps=1e-6, atol=1e-5)


def test_targets_are_never_modified():
    s = scene(seed=10)
    before = copy.deepcopy(s["targets"])
    run(DETRCriterion(3, num_aux_layers=2, encoder=True, num_dn_layers=2), s)
    for old, new in zip(before, s["targets"], strict=True):
        assert torch.equal(old["boxes"], new["boxes"])
        assert torch.equal(old["labels"], new["labels"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("classification", "columns"), [("vfl", 3), ("focal", 3), ("ce", 4)])
def test_bad_but_legal_input_gives_finite_terms_and_gradients(dtype, classification, columns):
    s = scene(counts=(2, 0, 3), seed=11, columns=columns)
    s["targets"][0]["boxes"][0] = torch.tensor([-20.0, -10.0, 200.0, 90.0])  # outside the image
    leaves = []
    for key in ("final", "enc"):
        logits, boxes = s[key]
        s[key] = (logits.sign().mul(1e4).to(dtype).requires_grad_(), boxes.to(dtype).requires_grad_())
        leaves += list(s[key])
    for key in ("aux", "dn"):
        s[key] = [(x.sign().mul(1e4).to(dtype).requires_grad_(), b.to(dtype).requires_grad_()) for x, b in s[key]]
        leaves += [t for pair in s[key] for t in pair]
    criterion = DETRCriterion(3, classification, num_aux_layers=2, encoder=True, num_dn_layers=2)
    out = run(criterion, s)
    for key, value in out.items():
        assert value.dtype == torch.float32, key
        assert torch.isfinite(value), key
    sum(out.values()).backward()
    for leaf in leaves:
        assert leaf.grad is not None
        assert torch.isfinite(leaf.grad).all()


def test_batch_without_boxes():
    s = scene(counts=(0, 0), seed=12)
    criterion = DETRCriterion(3, num_aux_layers=2, encoder=True, num_dn_layers=2)
    logits, boxes = (t.clone().requires_grad_() for t in s["final"])
    out = criterion(logits, boxes, s["targets"], image_size=SIZE, aux_outputs=s["aux"], enc_outputs=s["enc"])
    assert float(out["loss_bbox"].detach()) == 0.0
    assert float(out["loss_giou"].detach()) == 0.0
    expected = reference({**s, "dn": []})
    assert float(out["loss_vfl"]) == pytest.approx(expected["loss_vfl"], rel=1e-5)
    sum(out.values()).backward()
    assert torch.isfinite(logits.grad).all()
    assert boxes.grad is not None


def test_per_image_sizes_and_square_side():
    s = scene(seed=13)
    criterion = DETRCriterion(3)
    a = criterion(*s["final"], s["targets"], image_size=torch.tensor([SIZE] * 3))
    b = criterion(*s["final"], s["targets"], image_size=SIZE)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    square = [
        {"boxes": t["boxes"] * torch.tensor([1.0, 80 / 60, 1.0, 80 / 60]), "labels": t["labels"]} for t in s["targets"]
    ]
    c = criterion(*s["final"], square, image_size=80)
    for key in a:
        torch.testing.assert_close(a[key], c[key])


def test_bad_input_names_the_argument():
    s = scene(seed=14)
    criterion = DETRCriterion(3, num_aux_layers=2, encoder=True, num_dn_layers=2)
    logits, boxes = s["final"]
    with pytest.raises(ValueError, match="pred_logits"):
        criterion(logits[..., :2], boxes, s["targets"], image_size=SIZE)
    with pytest.raises(ValueError, match="pred_boxes"):
        criterion(logits, boxes[:, :3], s["targets"], image_size=SIZE)
    with pytest.raises(ValueError, match="aux_outputs"):
        criterion(logits, boxes, s["targets"], image_size=SIZE, aux_outputs=s["aux"][:1])
    with pytest.raises(ValueError, match=r"aux_outputs\[0\]"):
        criterion(logits, boxes, s["targets"], image_size=SIZE, aux_outputs=[s["dn"][0], s["aux"][1]])
    with pytest.raises(ValueError, match="targets"):
        criterion(logits, boxes, s["targets"][:2], image_size=SIZE)
    with pytest.raises(ValueError, match="image_size"):
        criterion(logits, boxes, s["targets"])
    with pytest.raises(ValueError, match="image_size"):
        criterion(logits, boxes, s["targets"], image_size=(1, 2, 3))
    with pytest.raises(ValueError, match="dn_meta"):
        criterion(logits, boxes, s["targets"], image_size=SIZE, dn_outputs=s["dn"])
    short = {**s["meta"], "dn_positive_idx": [i[:-1] if len(i) else i for i in s["meta"]["dn_positive_idx"]]}
    with pytest.raises(ValueError, match=r"dn_positive_idx\[0\]"):
        criterion(logits, boxes, s["targets"], image_size=SIZE, dn_outputs=s["dn"], dn_meta=short)
    many = scene(counts=(7, 0, 1), seed=15)
    with pytest.raises(ValueError, match=r"`targets\[0\]` has 7 boxes, more than the 6 queries"):
        criterion(*many["final"], many["targets"], image_size=SIZE)
    with pytest.raises(ValueError, match="classification"):
        DETRCriterion(3, classification="bce")
    with pytest.raises(ValueError, match="num_classes"):
        DETRCriterion(0)
    with pytest.raises(TypeError, match="matcher"):
        DETRCriterion(3, matcher="hungarian")
    assert isinstance(DETRCriterion(3, matcher={"cost_class": 1.0}).matcher, HungarianMatcher)


DDP_SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_detr.py"


def test_ddp_averaged_gradient_equals_single_process_gradient(tmp_path):
    """Two gloo ranks under DistributedDataParallel (3 + 2 boxes against 1 + 0): the gradient DDP averages equals
    one process's on the whole batch, for each classification term, with one all-reduce per criterion call."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(DDP_SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads((tmp_path / "single.json").read_text())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for classification, full in single.items():
        assert ranks[0][classification]["terms"]["loss_bbox"] != pytest.approx(
            ranks[1][classification]["terms"]["loss_bbox"]
        )
        for rank in ranks:
            assert rank[classification]["all_reduce_calls"] == 1
            for name, grad in full["grads"].items():
                assert rank[classification]["grads"][name] == pytest.approx(grad, rel=1e-4, abs=1e-5), (
                    classification,
                    name,
                )

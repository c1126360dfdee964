"""NetsPresso Trainer 1.4.1's ``detr_loss`` through ``build_losses`` / ``build_loss``, against the literal RT-DETR
criterion reference (tests/references/detr.py) fed NetsPresso's ``out`` / ``target`` layout: ``pred`` is
``[boxes, logits]``, ``aux_pred`` holds the auxiliary decoder layers then the encoder proposals (all ``_aux_<i>``),
``dn_aux_pred`` / ``dn_meta`` the denoising queries, and ``target["gt"]`` pixel boxes with ``img_size``."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from lightning_losses import build_loss
from lightning_losses.compat.netspresso import build_losses
from tests.references.detr import detr_terms

SIZE = (48, 64)
MATCHER = {
    "type": "HungarianMatcher",
    "weight_dict": {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2},
    "alpha": 0.25,
    "gamma": 2.0,
    "use_focal_loss": True,
}
CONFIG = {
    "criterion": "detr_loss",
    "weight": None,
    "matcher": MATCHER,
    "weight_dict": {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2},
    "losses": ["vfl", "boxes"],
    "alpha": 0.75,
    "gamma": 2.0,
}


def netspresso_inputs(counts=(2, 0, 3), queries=6, columns=3, layers=2, groups=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * torch.tensor([40.0, 30.0])
        wh = torch.rand(n, 2, generator=g) * 15 + 3
        gt.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 3, (n,), generator=g)})

    def pair(q):
        logits = torch.randn(len(counts), q, columns, generator=g) * 2
        boxes = torch.cat(
            [
                torch.rand(len(counts), q, 2, generator=g) * 0.6 + 0.2,
                torch.rand(len(counts), q, 2, generator=g) * 0.3 + 0.05,
            ],
            -1,
        )
        return {"pred_logits": logits, "pred_boxes": boxes}

    final = pair(queries)
    biggest = max(counts)
    index = tuple(torch.cat([torch.arange(n) + 2 * biggest * k for k in range(groups)]) for n in counts)
    out = {
        "pred": torch.cat([final["pred_boxes"], final["pred_logits"]], -1),
        "aux_pred": [pair(queries) for _ in range(layers)],  # layers - 1 decoder layers, then the encoder
        "dn_aux_pred": [pair(2 * biggest * groups) for _ in range(layers)],
        "dn_meta": {"dn_positive_idx": index, "dn_num_group": groups, "dn_num_split": [2 * biggest * groups, queries]},
    }
    return out, {"gt": gt, "img_size": SIZE, "num_classes": 3}


def reference_total(out, target, classification="vfl", **kwargs):
    pred = out["pred"]
    sets = [("", pred[..., 4:], pred[..., :4])]
    sets += [(f"_aux_{i}", a["pred_logits"], a["pred_boxes"]) for i, a in enumerate(out["aux_pred"] or [])]
    dn = [(f"_dn_{i}", a["pred_logits"], a["pred_boxes"]) for i, a in enumerate(out["dn_aux_pred"] or [])]
    meta = out["dn_meta"] or {"dn_positive_idx": None, "dn_num_group": 1}
    terms = detr_terms(
        sets, dn, meta["dn_positive_idx"], meta["dn_num_group"], target["gt"], SIZE, classification, **kwargs
    )
    return terms, sum(terms.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_vfl_matches_reference_and_leaves_targets_alone(seed):
    out, target = netspresso_inputs(seed=seed)
    before = copy.deepcopy(target)
    losses = build_losses([CONFIG])
    result = losses(out, target)
    terms, total = reference_total(out, target)
    assert float(result["loss"]) == pytest.approx(total, rel=1e-5)
    assert float(result["detr_loss"]) == pytest.approx(total, rel=1e-5)
    for key, value in terms.items():
        assert float(result[f"detr_loss/{key}"]) == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for old, new in zip(before["gt"], target["gt"], strict=True):
        assert torch.equal(old["boxes"], new["boxes"])


def test_built_through_build_loss_with_a_weight_and_an_attribute_matcher():
    out, target = netspresso_inputs(seed=2)
    module = build_loss({**CONFIG, "weight": 2.0, "matcher": SimpleNamespace(**MATCHER)})  # read as NetsPresso does
    _, total = reference_total(out, target)
    assert float(module(out, target)["loss"]) == pytest.approx(2 * total, rel=1e-5)


def test_labels_is_detr_weighted_cross_entropy_with_netspresso_no_object_weight():
    out, target = netspresso_inputs(columns=4, seed=3)
    config = {
        **CONFIG,
        "matcher": {**MATCHER, "use_focal_loss": False},
        "weight_dict": {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2},
        "losses": ["labels", "boxes", "cardinality"],
    }
    result = build_losses([config])(out, target)
    matcher = {"weights": (2.0, 5.0, 2.0), "class_cost": "softmax"}
    _, total = reference_total(out, target, "ce", eos_coef=1e-4, matcher_kwargs=matcher)
    assert float(result["loss"]) == pytest.approx(total, rel=1e-5)


def test_focal_runs_where_netspresso_fails():
    out, target = netspresso_inputs(seed=4)
    config = {**CONFIG, "weight_dict": {"loss_focal": 1, "loss_bbox": 5, "loss_giou": 2}, "losses": ["focal", "boxes"]}
    config["alpha"] = 0.25
    result = build_losses([config])(out, target)
    _, total = reference_total(out, target, "focal", alpha=0.25)
    assert float(result["loss"]) == pytest.approx(total, rel=1e-5)


def test_terms_missing_from_weight_dict_weigh_zero_and_evaluation_outputs_score_the_final_layer():
    out, target = netspresso_inputs(seed=5)
    config = {**CONFIG, "weight_dict": {"loss_vfl": 1, "loss_bbox": 5}}
    losses = build_losses([config])
    result = losses(out, target)
    terms, _ = reference_total(out, target)
    expected = sum(v for k, v in terms.items() if not k.startswith("loss_giou"))
    assert float(result["loss"]) == pytest.approx(expected, rel=1e-5)
    evaluation = {**out, "aux_pred": None, "dn_aux_pred": None, "dn_meta": None}
    result = losses(evaluation, target)
    main = sum(v for k, v in terms.items() if k in ("loss_vfl", "loss_bbox"))
    assert float(result["loss"]) == pytest.approx(main, rel=1e-5)


def test_bad_configs():
    with pytest.raises(TypeError, match="unknown parameters"):
        build_losses([{**CONFIG, "eos_coef": 0.1}])
    out, target = netspresso_inputs(seed=6)
    with pytest.raises(ValueError, match="losses"):
        build_losses([{**CONFIG, "losses": ["vfl", "focal", "boxes"]}])(out, target)
    with pytest.raises(ValueError, match="matcher"):
        build_losses([{**CONFIG, "matcher": {"weight_dict": MATCHER["weight_dict"]}}])(out, target)

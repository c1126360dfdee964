"""NetsPresso Trainer 1.4.1's ``detr_loss`` (RT-DETR) as an :class:`Adapter` (the mapping and its differences from
NetsPresso are in :mod:`lightning_losses.compat.netspresso`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_losses.assigners.hungarian import HungarianMatcher
from lightning_losses.compat.netspresso.adapter import Adapter
from lightning_losses.losses.classification import CrossEntropyLoss, SigmoidFocalLoss
from lightning_losses.losses.iou import GIoULoss
from lightning_losses.losses.regression import L1Loss
from lightning_losses.losses.varifocal import VarifocalLoss
from lightning_losses.presets.detr import DETRCriterion

__all__ = ["DETR"]

_DETR_CLASSIFICATIONS = {"vfl": "vfl", "focal": "focal", "labels": "ce"}


def _detr_loss(
    num_classes: int,
    num_aux_layers: int,
    num_dn_layers: int,
    matcher: Mapping[str, Any],
    weight_dict: Mapping[str, float],
    losses: Sequence[str],
    alpha: float = 0.2,
    gamma: float = 2.0,
    cur_epoch: int | None = None,
) -> DETRCriterion:
    """NetsPresso Trainer 1.4.1's ``detr_loss`` fields as a :class:`~lightning_losses.DETRCriterion` (see
    :mod:`lightning_losses.compat.netspresso`); ``cur_epoch`` is accepted and ignored, as there."""
    if not isinstance(matcher, Mapping) and hasattr(matcher, "weight_dict"):  # NetsPresso reads it by attribute
        keys = ("type", "weight_dict", "alpha", "gamma", "use_focal_loss")
        matcher = {key: getattr(matcher, key) for key in keys if hasattr(matcher, key)}
    if not isinstance(matcher, Mapping) or not {"weight_dict", "alpha", "gamma", "use_focal_loss"} <= set(matcher):
        got = sorted(matcher) if isinstance(matcher, Mapping) else type(matcher).__name__
        raise ValueError(f"`matcher` needs 'weight_dict', 'alpha', 'gamma' and 'use_focal_loss', got {got}")
    if matcher.get("type", "HungarianMatcher") != "HungarianMatcher":
        raise ValueError(f"`matcher.type` must be 'HungarianMatcher', got {matcher['type']!r}")
    costs = matcher["weight_dict"]
    unknown = sorted(set(losses) - {*_DETR_CLASSIFICATIONS, "boxes", "cardinality"})
    kinds = [_DETR_CLASSIFICATIONS[name] for name in losses if name in _DETR_CLASSIFICATIONS]
    if unknown or len(kinds) != 1:
        raise ValueError(f"`losses` must name one of 'vfl', 'focal', 'labels' (and 'boxes'), got {list(losses)}")
    classification = kinds[0]
    boxes = "boxes" in losses

    def weight(term: str, on: bool = True) -> float:
        return float(weight_dict.get(term, 0.0)) if on else 0.0

    cls_weight = weight(f"loss_{classification}")
    if classification == "vfl":
        loss_cls = VarifocalLoss(alpha=alpha, gamma=gamma, detach_focal_weight=True, loss_weight=cls_weight)
    elif classification == "focal":
        loss_cls = SigmoidFocalLoss(alpha=alpha, gamma=gamma, loss_weight=cls_weight)
    else:
        loss_cls = CrossEntropyLoss(class_weight=[1.0] * num_classes + [1e-4], loss_weight=cls_weight)
    return DETRCriterion(
        num_classes,
        classification=classification,
        matcher=HungarianMatcher(
            costs["cost_class"],
            costs["cost_bbox"],
            costs["cost_giou"],
            "focal" if matcher["use_focal_loss"] else "softmax",
            matcher["alpha"],
            matcher["gamma"],
        ),
        loss_cls=loss_cls,
        loss_bbox=L1Loss(loss_weight=weight("loss_bbox", boxes)),
        loss_giou=GIoULoss(loss_weight=weight("loss_giou", boxes)),
        num_aux_layers=num_aux_layers,
        num_dn_layers=num_dn_layers,
        eos_coef=1e-4,
    )


def _build_detr(out: Mapping[str, Any], params: dict[str, Any]) -> nn.Module:
    columns = int(out["pred"].shape[-1]) - 4 - ("labels" in params.get("losses", ()))
    aux = out.get("aux_pred") or []
    dn = out.get("dn_aux_pred")
    return _detr_loss(columns, len(aux), len(aux) if dn is None else len(dn), **params)


def _call_detr(module: Any, out: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Tensor]:
    pred = out["pred"]
    return module(
        pred[..., 4:],
        pred[..., :4],
        target["gt"],
        image_size=target["img_size"],
        aux_outputs=out.get("aux_pred"),
        dn_outputs=out.get("dn_aux_pred"),
        dn_meta=out.get("dn_meta"),
    )


DETR = Adapter(_detr_loss, frozenset({"num_classes", "num_aux_layers", "num_dn_layers"}), _build_detr, _call_detr)
"""``detr_loss``: the criterion is built by :func:`_detr_loss` from NetsPresso's fields."""

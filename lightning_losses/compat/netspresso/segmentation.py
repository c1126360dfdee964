"""NetsPresso Trainer 1.4.1's segmentation criteria as adapters: ``pidnet_loss`` and
``seg_cross_entropy`` (the mapping is in :mod:`lightning_losses.compat.netspresso`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_losses.compat.netspresso.adapter import Adapter
from lightning_losses.losses.classification import CrossEntropyLoss
from lightning_losses.presets.pidnet import PIDNetCriterion

__all__ = ["PIDNET", "SEG_CROSS_ENTROPY"]


def _build_pidnet(out: Mapping[str, Any], params: dict[str, Any]) -> nn.Module:
    return PIDNetCriterion(int(out["pred"].shape[1]), **{"ignore_index": -100, **params, "ohem": False})


def _call_pidnet(module: Any, out: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Tensor]:
    if out.get("extra_p") is None:  # an evaluation-mode PIDNet: NetsPresso returns a graph-connected 0
        return {"": (out["pred"] - out["pred"]).sum()}
    return module(out["extra_p"], out["pred"], out["extra_d"], target["target"], target.get("bd_gt"))


def _build_seg_cross_entropy(out: Mapping[str, Any], params: dict[str, Any]) -> nn.Module:
    return CrossEntropyLoss(**{"ignore_index": -100, **params, "avg_non_ignore": True})


def _call_seg_cross_entropy(module: Any, out: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Tensor]:
    mask = target["target"]
    pred = F.interpolate(out["pred"], size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
    return {"": module(pred, mask)}


PIDNET = Adapter(PIDNetCriterion, frozenset({"num_classes", "ohem"}), _build_pidnet, _call_pidnet)
"""``pidnet_loss``."""

SEG_CROSS_ENTROPY = Adapter(
    CrossEntropyLoss,
    frozenset({"use_sigmoid", "use_mask", "reduction", "class_weight", "loss_weight", "avg_non_ignore"}),
    _build_seg_cross_entropy,
    _call_seg_cross_entropy,
)
"""``seg_cross_entropy``."""

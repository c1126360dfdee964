"""NetsPresso Trainer 1.4.1's ``rtmcc_loss`` (SimCC keypoints) as an :class:`Adapter` (the mapping is in
:mod:`lightning_losses.compat.netspresso`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_losses.compat.netspresso.adapter import Adapter
from lightning_losses.functional.pose import simcc_gaussian_targets
from lightning_losses.losses.pose import KLDiscretLoss

__all__ = ["RTMCC"]

_SIMCC_SPLIT_RATIO = 2.0
_SIMCC_SIGMA = 5.66


def _build_rtmcc(out: Mapping[str, Any], params: dict[str, Any]) -> nn.Module:
    return KLDiscretLoss(beta=10.0, label_softmax=True, label_beta=10.0, use_target_weight=True, **params)


def _call_rtmcc(module: Any, out: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Tensor]:
    pred, keypoints = out["pred"], target["keypoints"]
    if not isinstance(pred, Tensor) or pred.ndim != 3 or pred.shape[-1] % 2:
        shape = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
        raise ValueError(f'`out["pred"]` must be (N, K, 2·W) x then y bin logits, got {shape}')
    if not isinstance(keypoints, Tensor) or keypoints.shape != (*pred.shape[:2], 3):
        shape = tuple(keypoints.shape) if isinstance(keypoints, Tensor) else type(keypoints).__name__
        raise ValueError(f'`target["keypoints"]` must be {(*pred.shape[:2], 3)} (x, y, visibility), got {shape}')
    bins = pred.shape[-1] // 2
    target_x, target_y, weight = simcc_gaussian_targets(
        keypoints[..., :2], keypoints[..., 2], bins / _SIMCC_SPLIT_RATIO, _SIMCC_SPLIT_RATIO, _SIMCC_SIGMA
    )
    return {"": module((pred[..., :bins], pred[..., bins:]), (target_x, target_y), weight)}


RTMCC = Adapter(
    KLDiscretLoss,
    frozenset({"beta", "label_softmax", "label_beta", "use_target_weight", "reduction", "loss_weight"}),
    _build_rtmcc,
    _call_rtmcc,
)
"""``rtmcc_loss``."""

"""NetsPresso Trainer 1.4.1's dense detector criteria as adapters: ``yolox_loss``, ``retinanet_loss``,
``yolofastest_loss`` and ``yolov9_loss`` (the mapping is in :mod:`lightning_losses.compat.netspresso`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_losses.compat.netspresso.adapter import Adapter
from lightning_losses.presets.retinanet import RetinaNetCriterion
from lightning_losses.presets.yolofastest import YOLOFastestCriterion
from lightning_losses.presets.yolov8 import YOLOv8Criterion
from lightning_losses.presets.yolox import YOLOXCriterion

__all__ = ["RETINANET", "YOLOFASTEST", "YOLOV9", "YOLOX"]


def _build_yolox(out: Mapping[str, Any], params: dict[str, Any]) -> nn.Module:
    return YOLOXCriterion(int(out["pred"][0].shape[1]) - 5, strides=None, **params)


def _call_yolox(module: Any, out: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Tensor]:
    return module(out["pred"], target["gt"], image_size=(target["img_size"], target["img_size"]))


def _build_retinanet(out: Mapping[str, Any], params: dict[str, Any]) -> nn.Module:
    levels = len(out["cls_logits"])
    num_classes = int(out["cls_logits"][0].shape[-1])
    return RetinaNetCriterion(num_classes, strides=(1,) * levels, style="netspresso", **params)


def _call_retinanet(module: Any, out: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Tensor]:
    return module(out["cls_logits"], out["bbox_regression"], target["gt"], priors=out["anchors"])


def _build_yolofastest(out: Mapping[str, Any], params: dict[str, Any]) -> nn.Module:
    params = {k: v for k, v in params.items() if k != "l1_activate_epoch"}
    if "anchors" not in params:
        raise TypeError("`yolofastest_loss` needs `anchors`: one [w0, h0, w1, h1, ...] list per level")
    num_anchors = len(torch.as_tensor(params["anchors"][0]).reshape(-1)) // 2
    return YOLOFastestCriterion(int(out["pred"][0].shape[1]) // max(num_anchors, 1) - 5, strides=None, **params)


def _yolov9_maps(out: Mapping[str, Any]) -> Any:
    pred = out["pred"]
    return pred["outputs"] if isinstance(pred, Mapping) else pred  # NetsPresso's heads with auxiliary outputs


def _build_yolov9(out: Mapping[str, Any], params: dict[str, Any]) -> nn.Module:
    params = {k: v for k, v in params.items() if k != "l1_activate_epoch"}
    reg_max = params.pop("reg_max", 16)
    num_classes = int(_yolov9_maps(out)[0].shape[1]) - 4 * int(reg_max)
    return YOLOv8Criterion(num_classes, strides=None, reg_max=reg_max, style="netspresso", **params)


def _call_yolov9(module: Any, out: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Tensor]:
    size = target["img_size"]
    image_size = (size, size) if isinstance(size, int) else tuple(size)
    return module(_yolov9_maps(out), target["gt"], image_size=image_size)


YOLOX = Adapter(YOLOXCriterion, frozenset({"num_classes", "strides"}), _build_yolox, _call_yolox)
"""``yolox_loss``."""

RETINANET = Adapter(
    RetinaNetCriterion, frozenset({"num_classes", "strides", "style"}), _build_retinanet, _call_retinanet
)
"""``retinanet_loss``."""

YOLOFASTEST = Adapter(
    YOLOFastestCriterion,
    frozenset({"num_classes", "strides"}),
    _build_yolofastest,
    _call_yolox,
    ignored=frozenset({"l1_activate_epoch"}),
)
"""``yolofastest_loss``: fed like ``yolox_loss``."""

YOLOV9 = Adapter(
    YOLOv8Criterion,
    frozenset({"num_classes", "strides", "style"}),
    _build_yolov9,
    _call_yolov9,
    ignored=frozenset({"l1_activate_epoch"}),
)
"""``yolov9_loss``."""

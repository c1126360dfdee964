"""NetsPresso Trainer's ``model.losses`` list as one module over its ``out`` / ``target`` dicts.

Mapping (``criterion`` → what computes it, and what it reads; ``weight`` multiplies the criterion in the
total, ``None`` meaning 1):

- ``cross_entropy`` → ``CrossEntropyLoss(ignore_index=-100, avg_non_ignore=True, label_smoothing=…)``
  on ``out["pred"]``, ``target["target"]`` (torch's ``nn.CrossEntropyLoss``).
- ``focal_loss`` → ``SigmoidFocalLoss(alpha, gamma)`` on ``out["pred"]``, ``target["target"]``.
- ``yolox_loss`` → ``YOLOXCriterion(strides=None, l1_activate_epoch=…)`` on ``out["pred"]``,
  ``target["gt"]``, with strides ``target["img_size"] // W_l``.
- ``retinanet_loss`` → ``RetinaNetCriterion(style="netspresso")`` on ``out["cls_logits"]``,
  ``out["bbox_regression"]``, ``out["anchors"]``, ``target["gt"]``.
- ``pidnet_loss`` → ``PIDNetCriterion(ohem=False, ignore_index=-100)`` on ``out["extra_p"]``, ``out["pred"]``,
  ``out["extra_d"]``, ``target["target"]``, ``target["bd_gt"]``; 0 when ``out["extra_p"]`` is None.
- ``seg_cross_entropy`` → ``CrossEntropyLoss(ignore_index=-100, avg_non_ignore=True, label_smoothing=…)`` on
  ``out["pred"]`` resized bilinearly (``align_corners=False``) to ``target["target"]``'s ``(H, W)``.
- ``yolofastest_loss`` → ``YOLOFastestCriterion(anchors, strides=None)`` on ``out["pred"]``, ``target["gt"]``, with
  strides ``target["img_size"] // W_l``; ``l1_activate_epoch`` is accepted and ignored (no L1 term, as in NetsPresso).
- ``rtmcc_loss`` → ``KLDiscretLoss(beta=10, label_softmax=True, label_beta=10)`` on ``out["pred"]`` ``(N, K, 2·W)``
  split into x and y bins, against :func:`~lightning_losses.functional.simcc_gaussian_targets` of
  ``target["keypoints"]`` ``(N, K, 3)`` (σ 5.66, split ratio 2, weight = visibility); ``W`` comes from the
  prediction (NetsPresso fixes 512 bins, a 256 × 256 input, and fails for other head sizes).
- ``yolov9_loss`` → ``YOLOv8Criterion(style="netspresso", strides=None, reg_max=…)`` on ``out["pred"]`` (or
  ``out["pred"]["outputs"]``), ``target["gt"]``, with strides ``target["img_size"][-1] // W_l`` and the class count
  ``channels - 4·reg_max``; ``l1_activate_epoch`` is accepted and ignored, as in NetsPresso.
- ``detr_loss`` → ``DETRCriterion`` on ``out["pred"]`` laid out ``[boxes (4), logits]``, ``out["aux_pred"]`` (the
  auxiliary decoder layers, then the encoder proposals: all named ``_aux_<i>``, as in NetsPresso),
  ``out["dn_aux_pred"]``, ``out["dn_meta"]``, ``target["gt"]`` normalised by ``target["img_size"]``. ``matcher``
  (``weight_dict`` costs, ``alpha``, ``gamma``, ``use_focal_loss``) builds the ``HungarianMatcher``; ``losses`` picks
  the classification term (``vfl`` → ``VarifocalLoss`` with its focal factor detached, ``focal`` →
  ``SigmoidFocalLoss``, ``labels`` → softmax cross-entropy over ``num_classes + 1`` logits, no-object weight 1e-4)
  and ``boxes`` the L1 and GIoU terms; ``weight_dict`` gives each term's ``loss_weight`` and a term it omits weighs
  0, as NetsPresso drops it; ``cardinality`` is a logged metric there and ignored here. Differences: the caller's
  targets are not normalised in place; ``focal`` runs (NetsPresso passes an integer one-hot target to
  torchvision's focal loss, which fails); ``labels`` averages its class-weight sum over DDP ranks like the other
  normalisers. The number of denoising layers is read from the first call (``aux_pred``'s length without denoising
  outputs, RT-DETR's layout).

The criteria's class count is read from the outputs on the first call. Unlike NetsPresso's own
``yolox_loss``, ``yolofastest_loss`` and ``pidnet_loss``, nothing here modifies ``out`` or ``target``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_losses.assigners.hungarian import HungarianMatcher
from lightning_losses.functional.pose import simcc_gaussian_targets
from lightning_losses.losses.base import LossMetric
from lightning_losses.losses.classification import CrossEntropyLoss, SigmoidFocalLoss
from lightning_losses.losses.iou import GIoULoss
from lightning_losses.losses.pose import KLDiscretLoss
from lightning_losses.losses.regression import L1Loss
from lightning_losses.losses.varifocal import VarifocalLoss
from lightning_losses.presets.detr import DETRCriterion
from lightning_losses.presets.pidnet import PIDNetCriterion
from lightning_losses.presets.retinanet import RetinaNetCriterion
from lightning_losses.presets.yolofastest import YOLOFastestCriterion
from lightning_losses.presets.yolov8 import YOLOv8Criterion
from lightning_losses.presets.yolox import YOLOXCriterion
from lightning_losses.registry import lookup_loss, register_dialect

__all__ = [
    "ADAPTERS",
    "CRITERIA",
    "NETSPRESSO_LOSSES",
    "Adapter",
    "NetsPressoCriterion",
    "NetsPressoLosses",
    "build_losses",
]


def _cross_entropy(**kwargs: Any) -> LossMetric:
    # NetsPresso's `cross_entropy` is torch.nn.CrossEntropyLoss: mean over non-ignored targets, ignore -100.
    kwargs.setdefault("ignore_index", -100)
    kwargs.setdefault("avg_non_ignore", True)
    return CrossEntropyLoss(**kwargs)


NETSPRESSO_LOSSES: dict[str, Callable[..., LossMetric]] = {
    "cross_entropy": _cross_entropy,
    "focal_loss": SigmoidFocalLoss,
}
"""NetsPresso Trainer's ``criterion`` names of element losses (they read ``out["pred"]``, ``target["target"]``)."""


@dataclass(frozen=True)
class Adapter:
    """How one NetsPresso detector / segmentation ``criterion`` is built and fed from NetsPresso's dicts.

    Attributes:
        cls: the criterion class (or a builder taking NetsPresso's fields); the entry's parameters are checked
            against its signature at build time.
        fixed: parameters the adapter sets itself (a config may not give them).
        build: ``(out, params) -> criterion``, called on the first forward (class counts come from ``out``).
        call: ``(criterion, out, target) -> {term: tensor}``.
        ignored: NetsPresso parameters accepted and dropped (they change nothing there either).
    """

    cls: Callable[..., nn.Module]
    fixed: frozenset[str]
    build: Callable[[Mapping[str, Any], dict[str, Any]], nn.Module]
    call: Callable[[Any, Mapping[str, Any], Mapping[str, Any]], dict[str, Tensor]]
    ignored: frozenset[str] = frozenset()


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


def _build_yolofastest(out: Mapping[str, Any], params: dict[str, Any]) -> nn.Module:
    params = {k: v for k, v in params.items() if k != "l1_activate_epoch"}
    if "anchors" not in params:
        raise TypeError("`yolofastest_loss` needs `anchors`: one [w0, h0, w1, h1, ...] list per level")
    num_anchors = len(torch.as_tensor(params["anchors"][0]).reshape(-1)) // 2
    return YOLOFastestCriterion(int(out["pred"][0].shape[1]) // max(num_anchors, 1) - 5, strides=None, **params)


def _build_rtmcc(out: Mapping[str, Any], params: dict[str, Any]) -> nn.Module:
    return KLDiscretLoss(beta=10.0, label_softmax=True, label_beta=10.0, use_target_weight=True, **params)


_SIMCC_SPLIT_RATIO = 2.0
_SIMCC_SIGMA = 5.66


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


ADAPTERS: dict[str, Adapter] = {
    "yolox_loss": Adapter(YOLOXCriterion, frozenset({"num_classes", "strides"}), _build_yolox, _call_yolox),
    "retinanet_loss": Adapter(
        RetinaNetCriterion, frozenset({"num_classes", "strides", "style"}), _build_retinanet, _call_retinanet
    ),
    "pidnet_loss": Adapter(PIDNetCriterion, frozenset({"num_classes", "ohem"}), _build_pidnet, _call_pidnet),
    "seg_cross_entropy": Adapter(
        CrossEntropyLoss,
        frozenset({"use_sigmoid", "use_mask", "reduction", "class_weight", "loss_weight", "avg_non_ignore"}),
        _build_seg_cross_entropy,
        _call_seg_cross_entropy,
    ),
    "yolofastest_loss": Adapter(
        YOLOFastestCriterion,
        frozenset({"num_classes", "strides"}),
        _build_yolofastest,
        _call_yolox,
        ignored=frozenset({"l1_activate_epoch"}),
    ),
    "rtmcc_loss": Adapter(
        KLDiscretLoss,
        frozenset({"beta", "label_softmax", "label_beta", "use_target_weight", "reduction", "loss_weight"}),
        _build_rtmcc,
        _call_rtmcc,
    ),
    "yolov9_loss": Adapter(
        YOLOv8Criterion,
        frozenset({"num_classes", "strides", "style"}),
        _build_yolov9,
        _call_yolov9,
        ignored=frozenset({"l1_activate_epoch"}),
    ),
}
"""NetsPresso's detector and segmentation criteria: one :class:`Adapter` each."""

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
    """NetsPresso Trainer 1.4.1's ``detr_loss`` fields as a :class:`~lightning_losses.DETRCriterion` (see above);
    ``cur_epoch`` is accepted and ignored, as there."""
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


ADAPTERS["detr_loss"] = Adapter(
    _detr_loss, frozenset({"num_classes", "num_aux_layers", "num_dn_layers"}), _build_detr, _call_detr
)

CRITERIA = (*NETSPRESSO_LOSSES, *ADAPTERS)
"""Every NetsPresso ``criterion`` name this module builds."""


class NetsPressoCriterion(nn.Module):
    """One entry of a ``model.losses`` list: ``forward(out, target)`` reads NetsPresso's dicts.

    Element losses are built at once; detector and segmentation criteria on the first call, since their
    class counts come from the outputs. Unknown parameters raise ``TypeError`` at construction.
    """

    def __init__(self, criterion: str, params: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if criterion not in CRITERIA:
            raise KeyError(f"unknown NetsPresso criterion {criterion!r}; known: {', '.join(CRITERIA)}")
        self.criterion = criterion
        self.params = dict(params or {})
        self.module: nn.Module | None = None
        self.epoch: int | None = None
        if criterion in NETSPRESSO_LOSSES:
            self.module = NETSPRESSO_LOSSES[criterion](**self.params)
        else:  # built on the first call: check the parameters now
            adapter = ADAPTERS[criterion]
            allowed = (set(inspect.signature(adapter.cls).parameters) - adapter.fixed) | adapter.ignored
            unknown = set(self.params) - allowed
            if unknown:
                raise TypeError(f"`{criterion}` got unknown parameters {sorted(unknown)}; it takes {sorted(allowed)}")

    def forward(self, out: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Tensor]:
        if self.criterion in NETSPRESSO_LOSSES:  # adapters may build a LossMetric too (seg_cross_entropy)
            return {"": self.module(out["pred"], target["target"])}
        adapter = ADAPTERS[self.criterion]
        if self.module is None:
            self.module = adapter.build(out, self.params)
            self.set_epoch(self.epoch)
        return adapter.call(self.module, out, target)

    def set_epoch(self, epoch: int | None) -> None:
        """The current 1-based epoch, for criteria with an epoch schedule (``yolox_loss``'s ``l1_activate_epoch``)."""
        self.epoch = epoch
        if self.module is not None and hasattr(self.module, "set_epoch"):
            self.module.set_epoch(epoch)


_Element = NetsPressoCriterion  # the name before it was public


def _build_from_config(name: str, params: dict[str, Any]) -> nn.Module:
    """``build_loss``'s ``criterion`` dialect: ``weight`` is the multiplier (``None`` → 1.0)."""
    weight = params.pop("weight", None)
    if isinstance(name, str) and name in NETSPRESSO_LOSSES:
        if weight is not None:
            params["loss_weight"] = weight
        return NETSPRESSO_LOSSES[name](**params)
    if isinstance(name, str) and name in ADAPTERS:
        return build_losses([{"criterion": name, "weight": weight, **params}])
    if weight is not None:
        params["loss_weight"] = weight
    return lookup_loss(name)(**params)  # a class name given as `criterion` works too


class NetsPressoLosses(nn.Module):
    """The losses of a NetsPresso ``model.losses`` list; ``forward(out, target)`` returns every term.

    Keys: each criterion's value under its name (a repeated criterion gets ``_2``, ``_3``, …), each
    criterion's own terms under ``{name}/{term}``, and ``"loss"``, the total weighted by each entry's
    ``weight``.
    """

    def __init__(self, elements: Sequence[tuple[str, NetsPressoCriterion, float]]) -> None:
        super().__init__()
        self.names = [name for name, _, _ in elements]
        self.weights = [weight for _, _, weight in elements]
        self.elements = nn.ModuleList([element for _, element, _ in elements])

    def set_epoch(self, epoch: int | None) -> None:
        """The current 1-based epoch, for ``yolox_loss``'s ``l1_activate_epoch`` (``None``: L1 on)."""
        for element in self.elements:
            element.set_epoch(epoch)

    def forward(self, out: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Tensor]:
        result: dict[str, Tensor] = {}
        total: Tensor | None = None
        for name, element, weight in zip(self.names, self.elements, self.weights, strict=True):
            terms = element(out, target)
            value = sum(terms.values())
            if len(terms) > 1:
                result.update({f"{name}/{term}": v for term, v in terms.items()})
            result[name] = value
            total = value * weight if total is None else total + value * weight
        if total is None:
            raise ValueError("the losses list is empty")
        result["loss"] = total
        return result


def build_losses(losses: Sequence[Mapping[str, Any]]) -> NetsPressoLosses:
    """Build NetsPresso Trainer's ``model.losses`` list.

    Example:
        >>> import torch
        >>> losses = build_losses([{"criterion": "focal_loss", "alpha": 0.25, "gamma": 2.0, "weight": None}])
        >>> out = losses({"pred": torch.zeros(2, 3)}, {"target": torch.zeros(2, 3)})
        >>> sorted(out), round(out["loss"].item(), 4)
        (['focal_loss', 'loss'], 0.13)
    """
    if not isinstance(losses, Sequence) or isinstance(losses, (str, bytes)):
        raise TypeError(f"`losses` must be a list of dicts, got {type(losses).__name__}")
    elements = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(losses):
        if not isinstance(entry, Mapping) or "criterion" not in entry:
            raise ValueError(f"`losses[{i}]` must be a dict with a 'criterion' key, got {entry!r}")
        params = dict(entry)
        criterion = params.pop("criterion")
        weight = params.pop("weight", None)
        weight = 1.0 if weight is None else float(weight)
        seen[criterion] = seen.get(criterion, 0) + 1
        name = criterion if seen[criterion] == 1 else f"{criterion}_{seen[criterion]}"
        elements.append((name, NetsPressoCriterion(criterion, params), weight))
    return NetsPressoLosses(elements)


register_dialect("criterion", _build_from_config, NETSPRESSO_LOSSES)

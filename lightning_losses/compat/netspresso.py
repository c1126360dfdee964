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

The criteria's class count is read from the outputs on the first call. Unlike NetsPresso's own
``yolox_loss`` and ``pidnet_loss``, nothing here modifies ``out`` or ``target``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_losses.losses.base import LossMetric
from lightning_losses.presets.pidnet import PIDNetCriterion
from lightning_losses.presets.retinanet import RetinaNetCriterion
from lightning_losses.presets.yolox import YOLOXCriterion
from lightning_losses.registry import NETSPRESSO_LOSSES

__all__ = ["CRITERIA", "NetsPressoLosses", "build_losses"]

CRITERIA = ("cross_entropy", "focal_loss", "yolox_loss", "retinanet_loss", "pidnet_loss")


# Criteria built on the first call, and the arguments this module sets itself.
_LAZY: dict[str, tuple[type, set[str]]] = {
    "yolox_loss": (YOLOXCriterion, {"num_classes", "strides"}),
    "retinanet_loss": (RetinaNetCriterion, {"num_classes", "strides", "style"}),
    "pidnet_loss": (PIDNetCriterion, {"num_classes", "ohem"}),
}


class _Element(nn.Module):
    """One entry of the list: a loss or criterion built lazily (class counts come from the outputs)."""

    def __init__(self, criterion: str, params: dict[str, Any]) -> None:
        super().__init__()
        self.criterion = criterion
        self.params = params
        self.module: nn.Module | None = None
        if criterion in NETSPRESSO_LOSSES:
            self.module = NETSPRESSO_LOSSES[criterion](**params)
        else:  # built on the first call: check the parameters now
            cls, fixed = _LAZY[criterion]
            allowed = set(inspect.signature(cls).parameters) - fixed
            unknown = set(params) - allowed
            if unknown:
                raise TypeError(f"`{criterion}` got unknown parameters {sorted(unknown)}; it takes {sorted(allowed)}")
        self.epoch: int | None = None

    def _build(self, out: Mapping[str, Any]) -> nn.Module:
        if self.criterion == "yolox_loss":
            num_classes = int(out["pred"][0].shape[1]) - 5
            return YOLOXCriterion(num_classes, strides=None, **self.params)
        if self.criterion == "retinanet_loss":
            levels = len(out["cls_logits"])
            return RetinaNetCriterion(
                int(out["cls_logits"][0].shape[-1]), strides=(1,) * levels, style="netspresso", **self.params
            )
        params = {"ignore_index": -100, **self.params, "ohem": False}
        return PIDNetCriterion(int(out["pred"].shape[1]), **params)

    def forward(self, out: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Tensor]:
        if self.module is None:
            self.module = self._build(out)
            if isinstance(self.module, YOLOXCriterion):
                self.module.set_epoch(self.epoch)
        if isinstance(self.module, LossMetric):
            return {"": self.module(out["pred"], target["target"])}
        if isinstance(self.module, YOLOXCriterion):
            return self.module(out["pred"], target["gt"], image_size=(target["img_size"], target["img_size"]))
        if isinstance(self.module, RetinaNetCriterion):
            return self.module(out["cls_logits"], out["bbox_regression"], target["gt"], priors=out["anchors"])
        if out.get("extra_p") is None:  # an evaluation-mode PIDNet: NetsPresso returns a graph-connected 0
            return {"": (out["pred"] - out["pred"]).sum()}
        return self.module(out["extra_p"], out["pred"], out["extra_d"], target["target"], target.get("bd_gt"))

    def set_epoch(self, epoch: int | None) -> None:
        self.epoch = epoch
        if isinstance(self.module, YOLOXCriterion):
            self.module.set_epoch(epoch)


class NetsPressoLosses(nn.Module):
    """The losses of a NetsPresso ``model.losses`` list; ``forward(out, target)`` returns every term.

    Keys: each criterion's value under its name (a repeated criterion gets ``_2``, ``_3``, …), each
    criterion's own terms under ``{name}/{term}``, and ``"loss"``, the total weighted by each entry's
    ``weight``.
    """

    def __init__(self, elements: Sequence[tuple[str, _Element, float]]) -> None:
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
        if criterion not in CRITERIA:
            raise KeyError(f"unknown NetsPresso criterion {criterion!r}; known: {', '.join(CRITERIA)}")
        weight = params.pop("weight", None)
        weight = 1.0 if weight is None else float(weight)
        seen[criterion] = seen.get(criterion, 0) + 1
        name = criterion if seen[criterion] == 1 else f"{criterion}_{seen[criterion]}"
        elements.append((name, _Element(criterion, params), weight))
    return NetsPressoLosses(elements)

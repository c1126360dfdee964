"""NetsPresso Trainer 1.4.1's ``model.losses`` list as modules over its ``out`` / ``target`` dicts:
:class:`NetsPressoCriterion` (one entry), :class:`NetsPressoLosses` (the list) and :func:`build_losses`."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_losses.compat.netspresso.catalog import ADAPTERS, CRITERIA
from lightning_losses.compat.netspresso.names import NETSPRESSO_LOSSES

__all__ = ["NetsPressoCriterion", "NetsPressoLosses", "build_losses"]


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

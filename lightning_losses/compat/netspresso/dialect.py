"""``build_loss``'s ``criterion`` dialect (NetsPresso Trainer 1.4.1 config entries); the package registers it."""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_losses.compat.netspresso.catalog import ADAPTERS
from lightning_losses.compat.netspresso.criterion import build_losses
from lightning_losses.compat.netspresso.names import NETSPRESSO_LOSSES
from lightning_losses.registry import lookup_loss

__all__: list[str] = []


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

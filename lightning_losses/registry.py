"""Loss names and the seeds' config dialects.

Three spellings of a loss config::

    build_loss({"type": "FocalLoss", "gamma": 2.0, "alpha": 0.25})                  # visdet / MMDetection
    build_loss({"criterion": "focal_loss", "alpha": 0.25, "gamma": 2.0, "weight": None})  # NetsPresso
    build_loss({"class_path": "lightning_losses.FocalLoss", "init_args": {"gamma": 2.0}})  # jsonargparse

The visdet and jsonargparse forms above build the same ``FocalLoss``; NetsPresso's ``focal_loss`` is
``SigmoidFocalLoss`` (torchvision's formula), which gives the same values for the same parameters.
``type`` and ``criterion`` names resolve only inside :data:`LOSSES` (nothing is imported from a
name); a ``class_path`` may name any importable :class:`LossMetric` subclass.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from lightning_losses.losses import (
    BalancedL1Loss,
    BoundaryLoss,
    CIoULoss,
    CrossEntropyLoss,
    DIoULoss,
    DistributionFocalLoss,
    FocalLoss,
    GIoULoss,
    IoULoss,
    L1Loss,
    LossMetric,
    MSELoss,
    OhemCrossEntropyLoss,
    QualityFocalLoss,
    SigmoidFocalLoss,
    SmoothL1Loss,
)

__all__ = ["LOSSES", "NETSPRESSO_LOSSES", "build_loss", "list_losses", "register_loss"]

LOSSES: dict[str, Callable[..., LossMetric]] = {
    cls.__name__: cls
    for cls in (
        BalancedL1Loss,
        BoundaryLoss,
        CIoULoss,
        CrossEntropyLoss,
        DIoULoss,
        DistributionFocalLoss,
        FocalLoss,
        GIoULoss,
        IoULoss,
        L1Loss,
        MSELoss,
        OhemCrossEntropyLoss,
        QualityFocalLoss,
        SigmoidFocalLoss,
        SmoothL1Loss,
    )
}


def _netspresso_cross_entropy(**kwargs: Any) -> LossMetric:
    # NetsPresso's `cross_entropy` is torch.nn.CrossEntropyLoss: mean over non-ignored targets, ignore -100.
    kwargs.setdefault("ignore_index", -100)
    kwargs.setdefault("avg_non_ignore", True)
    return CrossEntropyLoss(**kwargs)


NETSPRESSO_LOSSES: dict[str, Callable[..., LossMetric]] = {
    "cross_entropy": _netspresso_cross_entropy,
    "focal_loss": SigmoidFocalLoss,
}
"""NetsPresso Trainer's ``criterion`` names of element losses. The detector / segmentation criteria
(``yolox_loss``, ``retinanet_loss``, ``pidnet_loss``) live in :mod:`lightning_losses.compat.netspresso`."""

LOSSES.update(NETSPRESSO_LOSSES)


def register_loss(name: str, cls: type[LossMetric]) -> type[LossMetric]:
    """Add ``cls`` to :data:`LOSSES` under ``name``; raise ``KeyError`` if the name is taken by another class."""
    if not (isinstance(cls, type) and issubclass(cls, LossMetric)):
        raise TypeError(f"`cls` must be a LossMetric subclass, got {cls!r}")
    if name in LOSSES and LOSSES[name] is not cls:
        raise KeyError(f"loss name {name!r} is already registered to {LOSSES[name]!r}")
    LOSSES[name] = cls
    return cls


def list_losses() -> list[str]:
    """The sorted names :func:`build_loss` accepts as ``type`` or ``criterion``.

    Example:
        >>> "FocalLoss" in list_losses() and "focal_loss" in list_losses()
        True
    """
    return sorted(LOSSES)


def _lookup(name: str) -> Callable[..., LossMetric]:
    if not isinstance(name, str):
        raise TypeError(f"a loss name must be a string, got {type(name).__name__}")
    try:
        return LOSSES[name]
    except KeyError:
        close = difflib.get_close_matches(name, LOSSES, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown loss {name!r}{hint} Known losses: {', '.join(list_losses())}") from None


def _import_class_path(class_path: str) -> type:
    module_name, _, attr = class_path.rpartition(".")
    if not module_name:
        cls = LOSSES.get(class_path)
        if isinstance(cls, type):
            return cls
        raise KeyError(f"`class_path` {class_path!r} is neither a dotted path nor a registered loss class")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise KeyError(f"module {module_name!r} has no attribute {attr!r} (from `class_path` {class_path!r})") from None


def build_loss(cfg: Mapping[str, Any] | LossMetric) -> LossMetric:
    """Build a loss from a config in any of the three dialects (a built loss is returned as is).

    - visdet / MMDetection: ``{"type": "FocalLoss", **params}``.
    - NetsPresso: ``{"criterion": "focal_loss", **params, "weight": w}``; ``weight`` is the multiplier
      (``loss_weight``), ``None`` meaning 1.0.
    - jsonargparse: ``{"class_path": "pkg.Class", "init_args": {...}}``; the class must be a ``LossMetric``.

    Raises:
        KeyError: unknown ``type`` / ``criterion`` name (the message lists the closest names).
        TypeError: a config that is not a mapping, or a ``class_path`` that is not a ``LossMetric``.
        ValueError: a mapping with none, or more than one, of ``type``, ``criterion``, ``class_path``.

    Example:
        >>> build_loss({"criterion": "focal_loss", "alpha": 0.25, "gamma": 2.0, "weight": None})
        SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction='mean', loss_weight=1.0)
    """
    if isinstance(cfg, LossMetric):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f"a loss config must be a mapping, got {type(cfg).__name__}")
    keys = [key for key in ("type", "criterion", "class_path") if key in cfg]
    if len(keys) != 1:
        raise ValueError(
            f"a loss config needs exactly one of 'type', 'criterion' or 'class_path', got keys {sorted(cfg)}"
        )
    params = dict(cfg)
    key = keys[0]
    name = params.pop(key)
    if key == "type":
        return _lookup(name)(**params)
    if key == "criterion":
        weight = params.pop("weight", None)
        if weight is not None:
            params["loss_weight"] = weight
        return _lookup(name)(**params)
    init_args = dict(params.pop("init_args", None) or {})
    if params:
        raise ValueError(f"a class_path config takes only 'init_args' beside it, got {sorted(params)}")
    cls = _import_class_path(name)
    if not (isinstance(cls, type) and issubclass(cls, LossMetric)):
        raise TypeError(f"`class_path` {name!r} must name a LossMetric subclass, got {cls!r}")
    return cls(**init_args)

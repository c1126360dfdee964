"""Loss names and config dialects: one declaration per loss, every spelling resolved here.

A loss is declared once, where it is defined, with :func:`register_loss`::

    @register_loss
    class FocalLoss(LossMetric): ...

The top-level exports, :func:`list_losses` and the ``type`` names (MMDetection's dialect) derive from that
declaration. Three spellings of a loss config::

    build_loss({"type": "FocalLoss", "gamma": 2.0, "alpha": 0.25})                  # visdet / MMDetection
    build_loss({"criterion": "focal_loss", "alpha": 0.25, "gamma": 2.0, "weight": None})  # NetsPresso
    build_loss({"class_path": "lightning_losses.FocalLoss", "init_args": {"gamma": 2.0}})  # jsonargparse

``type`` names resolve only inside :data:`LOSSES` (nothing is imported from a name); a ``class_path`` may
name any importable :class:`LossMetric` subclass (loaded by
:func:`~lightning_losses.serialization.import_class_path`). Other dialects plug in with
:func:`register_dialect`: NetsPresso Trainer's ``criterion`` names live in
:mod:`lightning_losses.compat.netspresso`, which registers them when the package is imported.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from lightning_losses.losses.base import LossMetric
from lightning_losses.serialization import import_class_path

__all__ = ["LOSSES", "build_loss", "list_losses", "register_dialect", "register_loss"]

LOSSES: dict[str, Callable[..., LossMetric]] = {}
"""Every name :func:`build_loss` accepts as ``type``: each registered class under its name, plus the names
dialects add (NetsPresso's ``focal_loss``, ``cross_entropy``)."""

_DIALECTS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {}
LossClass = TypeVar("LossClass", bound=type)


@overload
def register_loss(name_or_cls: LossClass, cls: None = None) -> LossClass: ...
@overload
def register_loss(name_or_cls: str, cls: None = None) -> Callable[[LossClass], LossClass]: ...
@overload
def register_loss(name_or_cls: str, cls: LossClass) -> LossClass: ...
def register_loss(name_or_cls: Any, cls: Any = None) -> Any:
    """Declare a loss: add it to :data:`LOSSES` under its class name (or ``name``).

    Three spellings: ``@register_loss`` (the class name), ``@register_loss("Name")``, and the call
    ``register_loss("Name", cls)``. Raises ``KeyError`` if the name is taken by another class and
    ``TypeError`` for anything but a :class:`LossMetric` subclass.

    Example:
        >>> @register_loss
        ... class DoctestL2(LossMetric):
        ...     def _loss(self, pred, target, weight, avg_factor, reduction):
        ...         return ((pred - target) ** 2).sum()
        >>> build_loss({"type": "DoctestL2", "loss_weight": 2.0})(torch.ones(2), torch.zeros(2))
        tensor(4.)
        >>> del LOSSES["DoctestL2"]
    """
    if isinstance(name_or_cls, str):
        if cls is None:
            return lambda c: _add(name_or_cls, c)
        return _add(name_or_cls, cls)
    return _add(getattr(name_or_cls, "__name__", repr(name_or_cls)), name_or_cls)


def _add(name: str, cls: Any) -> Any:
    if not (isinstance(cls, type) and issubclass(cls, LossMetric)):
        raise TypeError(f"`cls` must be a LossMetric subclass, got {cls!r}")
    _add_name(name, cls)
    return cls


def _add_name(name: str, builder: Callable[..., LossMetric]) -> None:
    if name in LOSSES and LOSSES[name] is not builder:
        raise KeyError(f"loss name {name!r} is already registered to {LOSSES[name]!r}")
    LOSSES[name] = builder


def register_dialect(key: str, build: Callable[[Any, dict[str, Any]], Any], names: Mapping[str, Any] = ()) -> None:
    """Let :func:`build_loss` read configs keyed by ``key``: ``build(name, params)`` builds one.

    ``names`` (name → builder of a :class:`LossMetric`) joins :data:`LOSSES`, so :func:`list_losses` shows them
    and ``type`` accepts them too. Used by :mod:`lightning_losses.compat.netspresso` for ``criterion``.
    """
    if key in ("type", "class_path"):
        raise ValueError(f"`key` {key!r} is built in")
    _DIALECTS[key] = build
    for name, builder in dict(names).items():
        _add_name(name, builder)


def list_losses() -> list[str]:
    """The sorted names :func:`build_loss` accepts as ``type`` or ``criterion``.

    Example:
        >>> "FocalLoss" in list_losses() and "focal_loss" in list_losses()
        True
    """
    return sorted(LOSSES)


def lookup_loss(name: str) -> Callable[..., LossMetric]:
    """The class (or builder) registered under ``name``; ``KeyError`` with the closest names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"a loss name must be a string, got {type(name).__name__}")
    try:
        return LOSSES[name]
    except KeyError:
        close = difflib.get_close_matches(name, LOSSES, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown loss {name!r}{hint} Known losses: {', '.join(list_losses())}") from None


def build_loss(cfg: Mapping[str, Any] | LossMetric) -> Any:
    """Build a loss from a config in any of the three dialects (a built loss is returned as is).

    - visdet / MMDetection: ``{"type": "FocalLoss", **params}``.
    - NetsPresso: ``{"criterion": "focal_loss", **params, "weight": w}``; ``weight`` is the multiplier
      (``loss_weight``), ``None`` meaning 1.0. Detector criteria such as ``yolox_loss`` build the module
      that reads NetsPresso's ``out`` / ``target`` dicts (see :mod:`lightning_losses.compat.netspresso`).
    - jsonargparse: ``{"class_path": "pkg.Class", "init_args": {...}}``; the class must be a ``LossMetric``.

    Raises:
        KeyError: unknown ``type`` / ``criterion`` name (the message lists the closest names).
        TypeError: a config that is not a mapping, or a ``class_path`` that is not a ``LossMetric``.
        ValueError: a mapping with none, or more than one, of ``type``, ``class_path`` or a dialect's key.

    Example:
        >>> build_loss({"criterion": "focal_loss", "alpha": 0.25, "gamma": 2.0, "weight": None})
        SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction='mean', loss_weight=1.0)
    """
    if isinstance(cfg, LossMetric):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f"a loss config must be a mapping, got {type(cfg).__name__}")
    known = ("type", *_DIALECTS, "class_path")
    keys = [key for key in known if key in cfg]
    if len(keys) != 1:
        raise ValueError(f"a loss config needs exactly one of {', '.join(map(repr, known))}, got keys {sorted(cfg)}")
    params = dict(cfg)
    key = keys[0]
    name = params.pop(key)
    if key == "type":
        return lookup_loss(name)(**params)
    if key in _DIALECTS:
        return _DIALECTS[key](name, params)
    init_args = dict(params.pop("init_args", None) or {})
    if params:
        raise ValueError(f"a class_path config takes only 'init_args' beside it, got {sorted(params)}")
    if isinstance(name, str) and "." not in name and isinstance(LOSSES.get(name), type):
        return LOSSES[name](**init_args)
    return import_class_path(name, LossMetric)(**init_args)


def __getattr__(name: str) -> Any:
    # Deprecated: NetsPresso's names moved to lightning_losses.compat.netspresso (PEP 562 alias).
    if name == "NETSPRESSO_LOSSES":
        warnings.warn(
            "`lightning_losses.registry.NETSPRESSO_LOSSES` moved to `lightning_losses.compat.netspresso`",
            DeprecationWarning,
            stacklevel=2,
        )
        from lightning_losses.compat import netspresso

        return netspresso.NETSPRESSO_LOSSES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Checkpoint and config serialisation: objects that remember how they were built, and ``class_path`` loading.

A checkpoint's ``hyper_parameters`` may only hold plain data for ``torch.load(weights_only=True)``
(Lightning's default); a criterion object saved there would not load back. Losses and criteria
therefore record their constructor arguments, :func:`to_config` turns them into
``{"class_path": ..., "init_args": ...}`` dicts and :func:`from_config` builds them again.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["RecordsInit", "from_config", "import_class_path", "to_config"]


class RecordsInit:
    """Mixin: the arguments of the outermost ``__init__`` call are kept in ``_init_config``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__dict__["__init__"])  # type: ignore[method-assign]


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        if "_init_config" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(signature.parameters)))
            for name, param in signature.parameters.items():
                if param.kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(arguments.pop(name, {}))
                elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                    arguments.pop(name, None)
            cls = type(self)
            # object.__setattr__: nn.Module / Metric setattr hooks are not ready before their __init__.
            object.__setattr__(self, "_init_config", (f"{cls.__module__}.{cls.__qualname__}", arguments))
        init(self, *args, **kwargs)

    return wrapper


def to_config(value: Any) -> Any:
    """Replace every recorded object inside ``value`` by its ``class_path`` / ``init_args`` dict.

    Example:
        >>> from lightning_losses import FocalLoss
        >>> to_config({"loss": FocalLoss(gamma=1.0)})["loss"]["init_args"]["gamma"]
        1.0
    """
    config = getattr(value, "__dict__", {}).get("_init_config")
    if config is not None:
        class_path, arguments = config
        return {"class_path": class_path, "init_args": {k: to_config(v) for k, v in arguments.items()}}
    if isinstance(value, Mapping):
        return {k: to_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_config(v) for v in value)
    return value


def import_class_path(class_path: str, base: type = nn.Module, name: str = "class_path") -> type:
    """The class a dotted ``class_path`` names, checked to be a subclass of ``base``.

    The one ``class_path`` loader of the package (configs, checkpoints and :func:`~lightning_losses.build_loss`).
    Only classes are returned, so a config cannot run arbitrary callables.

    Raises:
        KeyError: the module has no such attribute, or the path has no module part.
        TypeError: the attribute is not a subclass of ``base``.

    Example:
        >>> import_class_path("lightning_losses.FocalLoss").__name__
        'FocalLoss'
    """
    module_name, _, attr = str(class_path).rpartition(".")
    if not module_name:
        raise KeyError(f"`{name}` {class_path!r} is not a dotted path such as 'lightning_losses.FocalLoss'")
    module = importlib.import_module(module_name)
    try:
        cls = getattr(module, attr)
    except AttributeError:
        raise KeyError(f"module {module_name!r} has no attribute {attr!r} (from `{name}` {class_path!r})") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"`{name}` {class_path!r} must name a {base.__name__} subclass, got {cls!r}")
    return cls


def from_config(value: Any) -> Any:
    """Build every ``class_path`` dict inside ``value`` (the inverse of :func:`to_config`).

    Only ``nn.Module`` subclasses are built, so a config cannot run arbitrary callables.
    """
    if isinstance(value, Mapping) and "class_path" in value:
        cls = import_class_path(value["class_path"])
        return cls(**{k: from_config(v) for k, v in dict(value.get("init_args") or {}).items()})
    if isinstance(value, Mapping):
        return {k: from_config(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_config(v) for v in value]
    return value

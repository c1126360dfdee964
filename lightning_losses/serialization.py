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

__all__ = ["RecordsInit", "from_config", "import_class_path", "init_config", "to_config"]


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


def init_config(obj: Any) -> tuple[str, dict[str, Any]] | None:
    """``(class_path, init_args)`` that rebuild ``obj``, or ``None`` when they cannot be known for sure.

    Objects built by a :class:`RecordsInit` class (every loss and criterion of the package, and their
    subclasses) recorded their arguments. For any other ``nn.Module`` (a user's own criterion) the arguments
    are read back from attributes named after the ``__init__`` parameters (``name`` or ``_name``, omitted ones
    taking their defaults), then checked: a copy built from them must have the same class, plain attributes,
    buffers, parameter shapes and children as ``obj``. Classes defined in ``__main__`` or inside a function
    cannot be imported back and give ``None``.

    Example:
        >>> class Scaled(nn.Module):  # a user's criterion, no RecordsInit
        ...     def __init__(self, scale: float = 1.0):
        ...         super().__init__()
        ...         self.scale = scale
        >>> init_config(Scaled(2.0))[1]
        {'scale': 2.0}
    """
    recorded = getattr(obj, "__dict__", {}).get("_init_config")
    if recorded is not None:
        return recorded
    if not isinstance(obj, nn.Module):
        return None
    cls = type(obj)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    try:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    arguments: dict[str, Any] = {}
    for param in parameters:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            return None
        for attr in (param.name, f"_{param.name}"):
            if _has_attribute(obj, attr):
                arguments[param.name] = getattr(obj, attr)
                break
        else:
            if param.default is inspect.Parameter.empty:
                return None
    try:
        copy = cls(**from_config(to_config(arguments)))
    except Exception:  # a guess that does not construct is no config
        return None
    if _fingerprint(copy) != _fingerprint(obj):
        return None
    return f"{cls.__module__}.{cls.__qualname__}", arguments


def _has_attribute(obj: nn.Module, name: str) -> bool:
    return name in obj.__dict__ or name in obj._modules or name in obj._buffers or name in obj._parameters


def _fingerprint(module: nn.Module) -> Any:
    """What a rebuilt copy must share with the original: class, plain attributes, buffers, parameter shapes."""
    plain = (bool, int, float, str, type(None))
    attributes = sorted(
        (k, repr(v))
        for k, v in vars(module).items()
        if not k.startswith("_") and k != "training" and isinstance(v, (*plain, tuple, list))
    )
    buffers = sorted(
        (k, tuple(b.shape), b.dtype, b.tolist() if b.numel() < 64 else None)
        for k, b in module._buffers.items()
        if b is not None
    )
    params = sorted((k, tuple(p.shape)) for k, p in module._parameters.items() if p is not None)
    children = sorted((k, _fingerprint(c)) for k, c in module._modules.items() if c is not None)
    return type(module), attributes, buffers, params, children


def to_config(value: Any) -> Any:
    """Replace every object inside ``value`` that :func:`init_config` can describe by its ``class_path`` dict.

    Example:
        >>> from lightning_losses import FocalLoss
        >>> to_config({"loss": FocalLoss(gamma=1.0)})["loss"]["init_args"]["gamma"]
        1.0
    """
    config = init_config(value)
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
        what = "nn.Module" if base is nn.Module else base.__name__
        raise TypeError(f"`{name}` {class_path!r} must name a {what} subclass, got {cls!r}")
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

"""Deprecated aliases of names that moved: a module's ``__getattr__`` that warns and returns the new object."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["moved_names"]


def moved_names(module: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module`` that serves each name of ``homes`` from its new module
    (``homes[name]``, a dotted module path) with a ``DeprecationWarning`` naming that home."""

    def moved_attribute(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} is deprecated; import it from {homes[name]}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(homes[name]), name)

    return moved_attribute

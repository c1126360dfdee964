"""The :class:`Adapter` record: how one NetsPresso Trainer 1.4.1 criterion is built and fed from its dicts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = ["Adapter"]


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

"""Per-device caches of constant tensors (priors, strides, coder means), so a step copies nothing from the host."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["DeviceCache", "device_constant"]

T = TypeVar("T")


class DeviceCache:
    """A bounded least-recently-used cache of tensors built on demand, one entry per key.

    A key names what an entry is and where it lives (sizes, strides, ``dtype``, ``device``); a missing entry is
    built once by ``build()``, directly on its device, and handed out again on later calls, so a step that finds
    its priors here makes no host→device copy. Entries are built outside inference mode, so priors first made in
    a validation step (Lightning runs it under ``torch.inference_mode``) serve the autograd graph of the next
    training step. Entries are shared: callers must not modify them in place.

    The cache is not state: copies (``copy.deepcopy``, pickling) start empty, and nothing is saved in a
    ``state_dict``.

    Args:
        size: most entries kept; the least recently used one is dropped past it.

    Example:
        >>> cache = DeviceCache(size=2)
        >>> a = cache.get(("grid", 3, torch.device("cpu")), lambda: torch.arange(3))
        >>> cache.get(("grid", 3, torch.device("cpu")), lambda: torch.zeros(3)) is a
        True
    """

    def __init__(self, size: int = 8) -> None:
        if size < 1:
            raise ValueError(f"`size` must be at least 1, got {size}")
        self.size = int(size)
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The entry of ``key``, built by ``build()`` (outside inference mode) when missing."""
        try:
            self._entries.move_to_end(key)
            return self._entries[key]
        except KeyError:
            pass
        with torch.inference_mode(False):
            value = build()
        self._entries[key] = value
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __deepcopy__(self, memo: dict[int, Any]) -> DeviceCache:
        return DeviceCache(self.size)

    def __getstate__(self) -> dict[str, Any]:
        return {"size": self.size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["size"])

    def __repr__(self) -> str:
        return f"DeviceCache(size={self.size}, entries={len(self._entries)})"


_CONSTANTS = DeviceCache(size=64)


def device_constant(values: Any, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)``, copied to ``device`` once and then served from a cache.

    For the small constants of a step (coder means and standard deviations, regress ranges, image sizes):
    ``values`` is a number or nested sequences of numbers, read on the host; after the first call on a device
    nothing is copied from the host. The tensor is shared; do not modify it in place.

    Example:
        >>> device_constant([[0.1, 0.2]], "cpu")
        tensor([[0.1000, 0.2000]])
    """
    shape, flat = _shape_and_values(values, "values")
    device = torch.device(device)
    key = ("constant", shape, flat, dtype, device)
    return _CONSTANTS.get(key, lambda: torch.tensor(flat, dtype=dtype, device=device).reshape(shape))


def _shape_and_values(value: Any, name: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The shape and the row-major values of a number or of nested sequences of numbers, read in Python."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        parts = [_shape_and_values(v, name) for v in value]
        shapes = {shape for shape, _ in parts}
        if len(shapes) > 1:
            raise ValueError(f"`{name}` must be rectangular nested sequences of numbers, got {value!r}")
        inner = next(iter(shapes)) if parts else ()
        return (len(parts), *inner), tuple(v for _, values in parts for v in values)
    return (), (float(value),)

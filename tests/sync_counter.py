"""Counting host syncs on CPU: the ops a CUDA stream would stall on, each with the package line that issued it.

Not a reference: the instrument the "no host sync per step" tests read. On CPU nothing waits, so the counter
looks for the operations that wait on a GPU:

- device → host reads: ``Tensor.item``, ``tolist``, ``__bool__``, ``__int__``, ``__float__``, ``__index__``,
  ``cpu``, ``numpy`` (seen as Python calls), and ``aten._local_scalar_dense`` / ``aten.equal`` (what any other
  read of a value comes down to);
- host → device copies of host data: ``aten.lift_fresh`` (``torch.tensor(python_values)``, ``new_tensor``,
  ``as_tensor`` / ``from_numpy`` of host data) and factory functions (``torch.zeros``, ``arange``, ``full``…)
  called without ``device=``, whose result lives on the host and has to be copied wherever it is used;
- ops whose output size depends on values, which read a count back on a GPU: ``nonzero`` (and one-argument
  ``torch.where``), ``masked_select``, indexing with a boolean mask (``aten.index``, and ``index_put`` of more
  than one value), ``repeat_interleave`` without ``output_size``, ``unique`` and ``bincount``;
- with ``watch=criterion``: any use of a tensor the criterion holds outside its parameters, buffers, metric
  states and device caches (an anchor table made in ``__init__``): ``criterion.to(device)`` leaves such a
  tensor on the host, so the step copies it over (or fails).

Calls made while another counted call runs (the ``_local_scalar_dense`` under ``item``) count once.

Example:
    >>> x = torch.arange(4.0)
    >>> with SyncCounter() as counter:
    ...     _ = x[x > 1] * 2, x.sum().item()
    >>> [sync.op for sync in counter.syncs]
    ['aten.index.Tensor (boolean mask)', 'Tensor.item']
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["Sync", "SyncCounter"]

_HOST_READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
}
_ALWAYS = (
    "aten._local_scalar_dense",
    "aten.equal",
    "aten.lift_fresh",
    "aten.nonzero.",
    "aten.nonzero_numpy",
    "aten.masked_select",
    "aten._unique",
    "aten.unique_dim",
    "aten.unique_consecutive",
    "aten.bincount",
)
_PACKAGE = "lightning_losses/"


class Sync(NamedTuple):
    """One counted operation and the innermost line of the package (else of the caller) that issued it."""

    op: str
    site: str

    def __str__(self) -> str:
        return f"{self.op} at {self.site}"


def _site() -> str:
    paths = [(f, f.filename.replace("\\", "/")) for f in traceback.extract_stack()]
    frames = [f for f, p in paths if "/torch/" not in p and not p.endswith("tests/sync_counter.py")]
    inside = [f for f in frames if _PACKAGE in f.filename.replace("\\", "/")]
    frame = (inside or frames or [None])[-1]
    if frame is None:
        return "?"
    path = frame.filename.replace("\\", "/")
    path = path.split(_PACKAGE, 1)[-1] if _PACKAGE in path else path.rsplit("/", 1)[-1]
    return f"{path}:{frame.lineno} ({frame.name})"


def _has_bool_index(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _dispatch_sync(func: Any, args: tuple, kwargs: dict) -> str | None:
    """The name under which an aten call counts, or ``None`` when it needs nothing from the host."""
    name = str(func)
    if name.startswith(_ALWAYS):
        return name
    if name.startswith("aten.index.Tensor") and _has_bool_index(args[1]):
        return f"{name} (boolean mask)"
    if name.startswith(("aten.index_put", "aten._index_put_impl")) and _has_bool_index(args[1]):
        value = args[2] if len(args) > 2 else kwargs.get("values")
        if not (isinstance(value, torch.Tensor) and value.numel() == 1):
            return f"{name} (boolean mask)"
    if name.startswith("aten.repeat_interleave.Tensor") and kwargs.get("output_size") is None:
        return f"{name} (no output_size)"
    return None


class _Functions(TorchFunctionMode):
    def __init__(self, record: Callable[[str], None], depth: list[int]) -> None:
        super().__init__()
        self.record, self.depth = record, depth
        self.factories = _device_constructors()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counted = None
        if func in _HOST_READS:
            counted = f"Tensor.{func.__name__}"
        elif func in self.factories and kwargs.get("device") is None:
            counted = f"torch.{func.__name__} without device="
        if counted is None:
            return func(*args, **kwargs)
        self.record(counted)
        self.depth[0] += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.depth[0] -= 1


class _Aten(TorchDispatchMode):
    def __init__(self, record: Callable[[str], None], depth: list[int], host: dict[int, str]) -> None:
        super().__init__()
        self.record, self.depth, self.host = record, depth, host

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.depth[0]:
            counted = _dispatch_sync(func, args, kwargs)
            if counted is not None:
                self.record(counted)
            for leaf in tree_leaves((args, kwargs)) if self.host else ():
                if isinstance(leaf, torch.Tensor) and leaf.numel():
                    path = self.host.get(leaf.untyped_storage().data_ptr())
                    if path is not None:
                        self.record(f"{func} of host-held {path}")
        return func(*args, **kwargs)


_METRIC_INTERNALS = {"_defaults", "_forward_cache", "_computed", "_cache", "_reductions"}


def _host_held(obj: Any, path: str, seen: set[int], found: dict[int, str]) -> None:
    """Tensors reachable from ``obj`` that ``Module.to`` does not move, by storage address."""
    if id(obj) in seen or type(obj).__name__ == "DeviceCache":
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.numel():
            found[obj.untyped_storage().data_ptr()] = path
        return
    if isinstance(obj, nn.Module):
        states = set(getattr(obj, "_defaults", ()))  # torchmetrics states follow the module to its device
        for name, value in vars(obj).items():
            if name == "_modules":
                for child, module in value.items():
                    _host_held(module, f"{path}.{child}", seen, found)
            elif name not in {"_parameters", "_buffers", *states, *_METRIC_INTERNALS}:
                _host_held(value, f"{path}.{name}", seen, found)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _host_held(value, f"{path}[{key!r}]", seen, found)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _host_held(value, f"{path}[{i}]", seen, found)
    elif type(obj).__module__.startswith("lightning_losses") and hasattr(obj, "__dict__"):
        for name, value in vars(obj).items():
            _host_held(value, f"{path}.{name}", seen, found)


class SyncCounter:
    """Context manager that records every host sync made inside it as a :class:`Sync` (``op``, ``site``).

    Wrap a criterion's forward and backward; :meth:`report` lists what was counted, one line each. With
    ``watch``, uses of the tensors that module holds outside its parameters, buffers, metric states and device
    caches count too (read when the counter is made).
    """

    def __init__(self, watch: nn.Module | None = None) -> None:
        self.syncs: list[Sync] = []
        depth, host = [0], {}
        if watch is not None:
            _host_held(watch, type(watch).__name__, set(), host)
        self._modes = (_Functions(self._record, depth), _Aten(self._record, depth, host))

    def _record(self, op: str) -> None:
        self.syncs.append(Sync(op, _site()))

    def __enter__(self) -> SyncCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def outside(self, *sites: str) -> list[Sync]:
        """The syncs whose site starts with none of ``sites`` (package paths such as ``"assigners/hungarian.py"``)."""
        return [s for s in self.syncs if not s.site.startswith(sites)]

    def report(self, syncs: list[Sync] | None = None) -> str:
        syncs = self.syncs if syncs is None else syncs
        return f"{len(syncs)} host syncs:\n" + "\n".join(f"  {s}" for s in syncs)

"""Loss modules: ``LossMetric`` subclasses, each a thin stateful shell over a functional loss.

Every module of this package is imported here, and every class it declares with
:func:`~lightning_losses.registry.register_loss` is exported from this package and from
:mod:`lightning_losses`: adding a loss is one decorated class in one file.
"""

import importlib
import pkgutil

from lightning_losses.losses.base import LossMetric
from lightning_losses.registry import LOSSES

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

_REGISTERED = {
    name: cls
    for name, cls in LOSSES.items()
    if isinstance(cls, type) and cls.__name__ == name and cls.__module__.startswith(f"{__name__}.")
}
globals().update(_REGISTERED)

__all__ = ["LossMetric", *sorted(_REGISTERED)]

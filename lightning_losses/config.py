"""Deprecated alias of :mod:`lightning_losses.serialization` (the module was renamed after what it holds)."""

import warnings

from lightning_losses.serialization import RecordsInit, from_config, import_class_path, to_config

__all__ = ["RecordsInit", "from_config", "import_class_path", "to_config"]

warnings.warn(
    "`lightning_losses.config` is deprecated; import from `lightning_losses.serialization`",
    DeprecationWarning,
    stacklevel=2,
)

"""NetsPresso Trainer's own loss modules, imported from ``benchmarks/_vendor`` (see ``setup_baselines.sh``).

Only the loss files are loaded. The package's top-level ``__init__`` pulls in the whole trainer (CLIs,
models, loggers, their dependencies), so the parent packages are registered as empty namespace modules
in ``sys.modules`` pointing at the vendored folders; ``losses/detection/yolox.py``,
``losses/detection/retinanet.py``, ``losses/common.py`` and ``utils/bbox_utils.py`` then import with
torch and torchvision only.

The folder is ``benchmarks/_vendor`` unless ``BENCHMARKS_VENDOR`` names another one (``run.py --vendor``
sets it, so the memory-measuring child processes look in the same place).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VENDOR", "VENDOR_ENV", "NetsPresso", "load_netspresso"]

VENDOR = Path(__file__).resolve().parent / "_vendor"
VENDOR_ENV = "BENCHMARKS_VENDOR"
PACKAGE = "netspresso_trainer"
EXPECTED_VERSION = "1.4.1"
_PARENTS = {
    PACKAGE: "",
    f"{PACKAGE}.losses": "losses",
    f"{PACKAGE}.losses.detection": "losses/detection",
    f"{PACKAGE}.utils": "utils",
}


@dataclass(frozen=True)
class NetsPresso:
    """The baseline loss classes and the vendored version."""

    version: str
    yolox_loss: type
    retinanet_loss: type


def load_netspresso(vendor: Path | None = None) -> NetsPresso | str:
    """Import ``YOLOXLoss`` and ``RetinaNetLoss`` from ``vendor``; a reason string when they are not there."""
    if vendor is None:
        vendor = Path(os.environ.get(VENDOR_ENV, VENDOR))
    root = vendor / PACKAGE
    if not (root / "losses" / "detection" / "yolox.py").is_file():
        return f"NetsPresso Trainer not found in {vendor} (run benchmarks/setup_baselines.sh)"
    version_file = root / "VERSION"
    version = version_file.read_text().strip() if version_file.is_file() else "unknown"
    for name, sub in _PARENTS.items():
        module = sys.modules.get(name)
        if module is None:
            module = types.ModuleType(name)
            module.__path__ = [str(root / sub)]
            sys.modules[name] = module
    # yolox_loss calls the deprecated torch.cuda.amp.autocast on every image; that is not ours to fix.
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast", category=FutureWarning)
    try:
        yolox = importlib.import_module(f"{PACKAGE}.losses.detection.yolox")
        retinanet = importlib.import_module(f"{PACKAGE}.losses.detection.retinanet")
    except ImportError as err:
        return f"NetsPresso Trainer's loss modules failed to import: {err}"
    return NetsPresso(version, yolox.YOLOXLoss, retinanet.RetinaNetLoss)

"""The optional subpackages stay optional: read from the source with ``ast`` (nothing is imported).

- ``lightning_losses/__init__.py`` imports neither ``lightning_losses.data``, ``lightning_losses.adapters`` nor
  ``lightning_losses.demo``.
- No module outside ``data/`` and ``demo/`` imports ``torchvision`` at module level (the adapters import it
  inside the functions that build them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import lightning_losses

PACKAGE = Path(lightning_losses.__file__).parent
OPTIONAL = ("lightning_losses.data", "lightning_losses.adapters", "lightning_losses.demo")


def _module_level_imports(path: Path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text()).body:  # top-level statements only
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_package_init_imports_no_optional_subpackage():
    imported = _module_level_imports(PACKAGE / "__init__.py")
    assert not [name for name in imported if name.startswith(OPTIONAL)]


def test_no_module_level_torchvision_import_outside_data_and_demo():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        folder = path.relative_to(PACKAGE).parts[0]
        if folder in ("data", "demo"):
            continue
        if any(name == "torchvision" or name.startswith("torchvision.") for name in _module_level_imports(path)):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders

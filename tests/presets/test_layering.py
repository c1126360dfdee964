"""Import layering of the presets, read from the source with ``ast`` (the modules are parsed, not imported).

- A preset module (one that defines a ``…Criterion`` class; ``base`` aside) imports no other preset module,
  neither directly nor through the ``lightning_losses.presets`` package; ``presets/base.py`` and the helper
  modules of ``presets/`` (styles, class targets) import none at all.
- No library module imports a private (``_name``) name, or from a private module, of another package.
- The styles of RetinaNet, YOLOX and SimOTA are read from one object each: no ``style ==`` comparison.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lightning_losses

PACKAGE = Path(lightning_losses.__file__).parent
PRESETS = PACKAGE / "presets"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported(source: str, module: str, is_package: bool = False) -> list[tuple[str, str]]:
    """``(module, name)`` of every import in ``source`` (the text of ``module``; ``name`` empty for
    ``import module``), relative imports resolved against the module's package."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found += [(base, alias.name) for alias in node.names]
    return found


def _imports_of(path: Path) -> list[tuple[str, str]]:
    return _imported(path.read_text(), _module(path), path.name == "__init__.py")


def _defines_criterion(path: Path) -> bool:
    return any(isinstance(n, ast.ClassDef) and n.name.endswith("Criterion") for n in _tree(path).body)


def _preset_modules() -> set[str]:
    return {
        _module(p)
        for p in sorted(PRESETS.glob("*.py"))
        if p.name not in ("__init__.py", "base.py") and _defines_criterion(p)
    }


def _presets_imported(imports: list[tuple[str, str]]) -> set[str]:
    """The preset modules, or the whole ``lightning_losses.presets`` package, among ``imports``."""
    presets, package = _preset_modules(), "lightning_losses.presets"
    hits = set()
    for module, name in imports:
        target = f"{module}.{name}" if name else module
        if module in presets:  # from lightning_losses.presets.fcos import …
            hits.add(module)
        elif target in presets:  # from lightning_losses.presets import fcos
            hits.add(target)
        elif module == package and not (PRESETS / f"{name}.py").exists():  # a name the package collects
            hits.add(package)
    return hits


def test_the_preset_modules_are_found():
    """Guard: the detection by ``…Criterion`` classes sees every preset this package started with."""
    names = {m.rpartition(".")[2] for m in _preset_modules()}
    assert {"retinanet", "fcos", "atss", "gfl", "yolox", "pidnet"} <= names
    assert not {"base", "styles", "class_targets"} & names


@pytest.mark.parametrize("path", sorted(PRESETS.glob("*.py")), ids=lambda p: p.name)
def test_no_preset_module_imports_another(path):
    if path.name == "__init__.py":
        pytest.skip("the package collects every preset")
    own = _module(path)
    assert _presets_imported(_imports_of(path)) - {own} == set(), f"{own} imports other preset modules"


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("from lightning_losses.presets.fcos import FCOSCriterion\n", "lightning_losses.presets.fcos"),
        ("from lightning_losses.presets import ATSSCriterion\n", "lightning_losses.presets"),
        ("import lightning_losses.presets\n", "lightning_losses.presets"),
        ("from lightning_losses.presets import atss\n", "lightning_losses.presets.atss"),
        ("from .atss import atss_targets\n", "lightning_losses.presets.atss"),
        ("from . import gfl\n", "lightning_losses.presets.gfl"),
    ],
)
def test_the_check_catches_a_preset_import(source, caught):
    """The check can fail: a preset imported directly, relatively or through the package is caught."""
    assert _presets_imported(_imported(source, "lightning_losses.presets.probe")) == {caught}


def test_the_check_lets_base_and_helpers_through():
    source = (
        "from lightning_losses.presets.base import DenseCriterion\n"
        "from lightning_losses.presets import styles\n"
        "from .class_targets import class_targets\n"
    )
    assert _presets_imported(_imported(source, "lightning_losses.presets.probe")) == set()


def _package_of(module: str) -> str:
    """The subpackage of ``lightning_losses`` that holds ``module`` (``""`` for a top-level module)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ""


def _private_from_other_packages(imports: list[tuple[str, str]], module: str) -> list[str]:
    own = _package_of(module)
    return [
        f"{module}: from {source} import {name}"
        for source, name in imports
        if source.startswith("lightning_losses.")
        and _package_of(source) != own
        and (name.startswith("_") or any(part.startswith("_") for part in source.split(".")[1:]))
    ]


def test_no_module_imports_a_private_name_of_another_package():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        offenders += _private_from_other_packages(_imports_of(path), _module(path))
    assert offenders == []


def test_the_private_name_check_can_fail():
    module = "lightning_losses.presets.probe"
    source = (
        "from lightning_losses.functional.fused import _fused\n"  # another package: caught
        "from lightning_losses.presets.base import _ABSENT\n"  # the same package: allowed
        "from lightning_losses.boxes.targets import pad_targets\n"  # public: allowed
        "from lightning_losses.functional._private import check\n"  # a private module of another package: caught
    )
    assert _private_from_other_packages(_imported(source, module), module) == [
        f"{module}: from lightning_losses.functional.fused import _fused",
        f"{module}: from lightning_losses.functional._private import check",
    ]


def _style_comparisons(source: str) -> list[str]:
    """``style == …`` / ``… != style`` comparisons (a name or an attribute called ``style``) in ``source``."""
    compared = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            for operand in (node.left, *node.comparators):
                name = operand.attr if isinstance(operand, ast.Attribute) else getattr(operand, "id", None)
                if name == "style":
                    compared.append(ast.unparse(node))
    return compared


@pytest.mark.parametrize("relative", ["presets/retinanet.py", "presets/yolox.py", "assigners/simota.py"])
def test_style_is_never_compared_by_name(relative):
    """Each style difference is read from the style's object (``RetinaNetStyle``, ``SimOTAStyle``), so no
    ``style == …`` / ``!= …`` test is left in the criterion or the assigner."""
    assert _style_comparisons((PACKAGE / relative).read_text()) == []


def test_the_style_check_can_fail():
    source = "x = 1.5 if style == 'netspresso' else 2.5\nif self.style != 'mmdet':\n    pass\nok = style in STYLES\n"
    assert sorted(_style_comparisons(source)) == ["self.style != 'mmdet'", "style == 'netspresso'"]

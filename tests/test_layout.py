"""The package's rooms and what may import what (docs/decisions.md, "Layout").

- The shared core (every module at the top of the package, and ``api/``) imports nothing from a
  mode package, so a mode can be changed or removed without touching the core.
- ``deviceplugin/`` and ``dra/`` import nothing from each other.
- Only the entry point (``cli``, ``__main__``) sits above both modes.

Every import counts, lazy ones inside functions and ``TYPE_CHECKING`` ones too: a lazy import
still ties one mode to the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "smarter_device_manager"
ROOT = Path(__file__).resolve().parent.parent / "src" / PACKAGE
MODES = ("deviceplugin", "dra")
ENTRY = {f"{PACKAGE}.cli", f"{PACKAGE}.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room(module: str) -> str:
    """``deviceplugin``, ``dra``, ``entry`` or ``core``."""
    if module in ENTRY:
        return "entry"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in MODES:
        return parts[1]
    return "core"


def imports(path: Path) -> set[str]:
    """Every module of this package that ``path`` imports, anywhere in it."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_of(path.read_text(), package)


def imports_of(source: str, package: str) -> set[str]:
    """What ``source``, a module of ``package``, imports of this package (absolute or relative)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


MODULES = sorted(ROOT.rglob("*.py"))


def test_the_rooms_are_there() -> None:
    rooms = {room(module_name(p)) for p in MODULES}
    assert rooms == {"core", "deviceplugin", "dra", "entry"}
    assert (ROOT / "deviceplugin" / "daemon.py").is_file() and (ROOT / "dra" / "daemon.py").is_file()
    assert (ROOT / "dra" / "cli.py").is_file() and (ROOT / "deviceplugin" / "cli.py").is_file()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_follow_the_layout(path: Path) -> None:
    wrong = violations(module_name(path), imports(path))
    assert not wrong, f"{module_name(path)} imports " + "; ".join(wrong)


def violations(module: str, targets: set[str]) -> list[str]:
    importer = room(module)
    wrong = []
    for target in sorted(targets):
        where = room(target)
        if importer == "core" and where in MODES:
            wrong.append(f"{target} (the core imports no mode)")
        elif importer in MODES and where in MODES and where != importer:
            wrong.append(f"{target} (a mode imports nothing of the other)")
        elif importer != "entry" and where == "entry":
            wrong.append(f"{target} (only the entry point imports the entry point)")
    return wrong


def test_the_check_sees_lazy_relative_and_type_checking_imports() -> None:
    """The checker itself: imports inside a function, under TYPE_CHECKING, or relative, are found,
    and one of them in a core module is a violation."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
              "    from smarter_device_manager.dra import kube\n"
              "def f() -> None:\n    from smarter_device_manager.deviceplugin.plugin import OPTIONS\n"
              "    from .deviceplugin import registrar\n    import smarter_device_manager.dra.node\n")
    found = imports_of(source, PACKAGE)
    assert {"smarter_device_manager.dra.kube", "smarter_device_manager.deviceplugin.plugin",
            "smarter_device_manager.deviceplugin.registrar", "smarter_device_manager.dra.node"} <= found
    assert {room(m) for m in found} == {"deviceplugin", "dra"}
    assert len(violations(f"{PACKAGE}.watch", found)) == len(found)  # in the core: all wrong
    assert violations(f"{PACKAGE}.cli", found) == []  # the entry point may
    assert violations(f"{PACKAGE}.dra.daemon", {f"{PACKAGE}.dra.kube", f"{PACKAGE}.sysfs"}) == []
    assert violations(f"{PACKAGE}.dra.daemon", {f"{PACKAGE}.deviceplugin.plugin"}) != []
    assert violations(f"{PACKAGE}.deviceplugin.daemon", {f"{PACKAGE}.cli"}) != []
    assert imports_of("from ..sysfs import Sysfs\n", f"{PACKAGE}.dra") == {f"{PACKAGE}.sysfs",
                                                                          f"{PACKAGE}.sysfs.Sysfs"}

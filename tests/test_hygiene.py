"""Guards on the source itself: no dead names in the inotify binding, no raw errno numbers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "smarter_device_manager"


def package_text() -> str:
    return "\n".join(p.read_text() for p in sorted(SRC.rglob("*.py")))


def test_every_name_of_the_inotify_binding_is_used() -> None:
    """A constant or method that appears only where it is defined is dead code."""
    tree = ast.parse((SRC / "inotify.py").read_text())
    names = [t.id for node in tree.body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name) and not t.id.startswith("_")]
    names += [f.name for node in tree.body if isinstance(node, ast.ClassDef)
              for f in node.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("__")]
    text = package_text()
    dead = [n for n in names if len(re.findall(rf"\b{n}\b", text)) < 2]
    assert not dead, f"defined but never used: {dead}"


def test_errno_values_are_compared_by_name() -> None:
    raw = re.compile(r"errno\s*(?:==|!=|(?:not\s+)?in)\s*\(?[^)\n]*\b\d+\b")
    found = [f"{p.name}:{i}: {line.strip()}" for p in sorted(SRC.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if raw.search(line)]
    assert not found, "use errno.ENOENT etc.:\n" + "\n".join(found)

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


def test_tests_that_need_a_reachable_dir_leave_nothing_in_tmp() -> None:
    """test_allocate.py and test_discovery.py left an sdm-perm-* directory with device nodes in
    /tmp after every run. Run them with a /tmp of their own (a private mount namespace, so other
    runs on this machine cannot disturb the count) and look at what stays there."""
    import os
    import shutil
    import subprocess
    import sys

    import pytest

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private /tmp")
    root = Path(__file__).resolve().parent
    files = [str(root / name) for name in ("test_allocate.py", "test_discovery.py")]
    # pytest's own tmp_path dirs go to /tmp/.pytest (and stay, as pytest keeps them): not counted.
    script = ('mount -t tmpfs tmpfs /tmp || exit 99; "$@" >&2 || exit $?; '
              "ls -A /tmp | { grep -vx .pytest || true; }")
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", sys.executable,
         "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp=/tmp/.pytest", *files],
        capture_output=True, text=True, timeout=300, check=False)
    if result.returncode == 99:
        pytest.skip(f"cannot mount a private /tmp here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == []

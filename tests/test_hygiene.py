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
    /tmp after every run. Run them with their reachable directories in a fresh directory of
    their own (SDM_TEST_REACHABLE_DIR; other runs on this machine cannot disturb the count, and
    it works wherever the checkout is) and look at what stays there."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    import pytest

    if os.geteuid() != 0:
        pytest.skip("the tests that drop privileges need root")
    root = Path(__file__).resolve().parent
    files = [str(root / name) for name in ("test_allocate.py", "test_discovery.py")]
    work = Path(tempfile.mkdtemp(prefix="sdm-hygiene-", dir="/tmp"))
    work.chmod(0o755)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
            env={**os.environ, "SDM_TEST_REACHABLE_DIR": str(work)},
            capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        assert sorted(os.listdir(work)) == []
    finally:
        shutil.rmtree(work)

"""`pip install .` gets exactly the runtime stack the tests ran against.

The daemon's wire decodes headers with hpack and DRA mode serves on grpclib and h2,
so their versions are part of the product: each distribution the runtime dependencies pull in
must be pinned exactly in pyproject.toml's ``dependencies`` (constraints.txt is
not read by a plain ``pip install .``), and constraints.txt must agree.
"""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_image import pyproject

ROOT = Path(__file__).resolve().parent.parent


def pins(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        requirement = Requirement(line)
        [spec] = requirement.specifier
        assert spec.operator == "==", f"{line!r} is not an exact pin"
        out[canonicalize_name(requirement.name)] = spec.version
    return out


def runtime_closure(direct: list[str]) -> set[str]:
    """Every distribution installed because of ``direct``, on this interpreter."""
    seen: set[str] = set()
    pending = [Requirement(line) for line in direct]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        pending += [Requirement(r) for r in metadata.requires(name) or []]
    return seen


def test_every_runtime_distribution_is_pinned_in_the_dependencies() -> None:
    dependencies = pyproject()["project"]["dependencies"]
    pinned = pins(dependencies)
    closure = runtime_closure(dependencies)
    unpinned = sorted(closure - set(pinned))
    assert not unpinned, f"pulled in by the runtime dependencies but not pinned: {unpinned}"
    for name in ("grpclib", "h2", "hpack", "hyperframe", "multidict"):
        assert name in pinned
    installed = {name: metadata.version(name) for name in closure}
    assert installed == {name: pinned[name] for name in closure}, "the tests ran on other versions"


def test_constraints_agree_with_the_dependencies() -> None:
    pinned = pins(pyproject()["project"]["dependencies"])
    lines = [line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    constrained = pins([line for line in lines if line])
    assert {name: constrained.get(name) for name in pinned} == pinned

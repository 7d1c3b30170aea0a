#!/usr/bin/env python3
"""Print a hash of what the image is built from (the build context and the Dockerfile).

    python3 scripts/source-hash.py [REPO]

scripts/build-image.sh stores it in the image as the label ``io.smarter-devices.source-hash``,
and the tests that run the built image (tests/test_image.py) run only when the image's hash is
the tree's: an image built from other sources (an older commit, another branch) is skipped with
a message that says to rebuild, never judged against code it does not hold. Docs, tests and
benches outside the build context do not change the hash, so editing them keeps the image valid.

The files are the Dockerfile, .dockerignore and the allowlist of .dockerignore (pyproject.toml,
constraints.txt, src/, scripts/image-rootfs.py, tests/fake_apiserver.py), without bytecode and
egg-info; README and licence files are in the context but only as package metadata, so they are
left out.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "constraints.txt",
         "scripts/image-rootfs.py", "tests/fake_apiserver.py")
TREES = ("src",)


def source_files(repo: Path) -> list[Path]:
    found = [repo / name for name in FILES if (repo / name).is_file()]
    for tree in TREES:
        for path in sorted((repo / tree).rglob("*")):
            rel = path.relative_to(repo).parts
            if not path.is_file() or "__pycache__" in rel or path.suffix in (".pyc", ".pyo") \
                    or any(part.endswith(".egg-info") for part in rel):
                continue
            found.append(path)
    return sorted(found)


def source_hash(repo: Path) -> str:
    digest = hashlib.sha256()
    for path in source_files(repo):
        digest.update(path.relative_to(repo).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


if __name__ == "__main__":
    print(source_hash(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)))

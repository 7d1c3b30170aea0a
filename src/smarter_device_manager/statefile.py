"""Small versioned JSON state files that outlive the daemon (both modes use one).

The daemon remembers a few things that must survive its own restart: which device each pool ID
is pinned to (device-plugin mode) and which device each DRA name was published for (DRA mode).
Losing them would let an ID a running pod holds move to another device. A file is one JSON
object ``{"kind": ..., "version": N, ...}``:

* **written atomically**: a temp file in the same directory, fsync, rename over the old one.
  A daemon killed at any moment leaves the old file or the new one, never half of one. The
  fsync is kept (unlike DRA's prepare checkpoint) because the file changes only when IDs or
  devices change, not per request, and a node that loses power keeps its pods' device IDs in the
  kubelet's checkpoint: the pins must be on disk by then too.
* **read leniently**: a missing file is a first start; an unreadable, damaged or foreign file
  (another kind, a version this daemon does not know) is a warning and a fresh start, never a
  crash. A fresh start is what a daemon without the file did before; refusing to start would
  take every device of the node away.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def load(path: str, kind: str, version: int) -> dict[str, Any] | None:
    """The state in ``path``, or None (missing, or not usable: said once as a warning)."""
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        log.warning("state file %s is unreadable (%s); starting without it", path, exc)
        return None
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        log.warning("state file %s is not a %s file; starting without it", path, kind)
        return None
    if doc.get("version") != version:
        log.warning("state file %s has version %r, this daemon reads version %d; starting without it",
                    path, doc.get("version"), version)
        return None
    return doc


def save(path: str, kind: str, version: int, body: dict[str, Any]) -> None:
    """Write ``body`` (plus kind and version) to ``path`` atomically; raises OSError.

    Creates the directory if needed: it is the daemon's own (a subdirectory of the kubelet's
    plugin dir, or DRA's state dir)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    data = json.dumps({"kind": kind, "version": version, **body}, separators=(",", ":"),
                      sort_keys=True).encode()
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise

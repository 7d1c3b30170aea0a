"""DRA names on disk: a name published for one device is never published for another, across
daemon restarts too.

``devices.keep_names`` remembers, for each name it published, the device's fingerprint (serial
and port); a twin proposed the name of one unplugged is published under another name. That
memory must outlive the daemon: a claim allocated the name before a restart is prepared after it,
and the allocation carries only the name. So it is kept in ``<state dir>/names.json`` (beside the
prepared-claims checkpoint), written atomically whenever a name is bound, read leniently at start
(:mod:`~smarter_device_manager.statefile`: a bad file is a warning and a fresh start).

Names are never forgotten (an allocation naming one may still be pending somewhere); each is a
few dozen bytes, one per device ever published on the node.
"""

from __future__ import annotations

import logging
import os

from smarter_device_manager import statefile

log = logging.getLogger(__name__)

FILE = "names.json"
KIND = "smarter-device-manager/dra-names"
VERSION = 1


class BoundNames:
    """The names bound so far, and the file that keeps them.

    Two daemons may run on a node at once (a rolling update, docs/dra.md): each reads the file
    again whenever it changed (a ``stat`` per rescan) and takes the names the other bound, then
    writes the union if it has names the file lacks. No lock is needed: a write that lands over
    the other's is repaired by the other's next rescan, which sees the file changed and writes
    the union again.
    """

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, FILE)
        self.bound: dict[str, str] = {}  # DRA name -> the fingerprint it was first published for
        self._written: dict[str, str] = {}  # what the file holds
        self._seen: tuple[int, int, int] | None = None  # the file's (inode, mtime, size) when read
        self._error: str | None = None

    def load(self) -> None:
        """Read the file at start (a bad one: a warning, and the names start empty)."""
        self.refresh()
        if self.bound:
            log.info("state %s: %d DRA names bound to their devices", self.path, len(self.bound))

    def refresh(self) -> None:
        """Take the names another daemon wrote since we last looked (ours win a conflict)."""
        seen = self._stat()
        if seen is None or seen == self._seen:
            return
        self._seen = seen
        doc = statefile.load(self.path, KIND, VERSION)
        names = doc.get("names") if doc is not None else None
        if doc is not None and not (isinstance(names, dict) and all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in names.items())):
            log.warning("state file %s: 'names' is not a map of names to fingerprints; starting "
                        "without it", self.path)
            names = None
        self._written = dict(names or {})
        for name, fingerprint in self._written.items():
            self.bound.setdefault(name, fingerprint)

    def save(self) -> None:
        """Write the names if the file lacks any of ours."""
        if self.bound == self._written:
            return
        try:
            statefile.save(self.path, KIND, VERSION, {"names": self.bound})
        except OSError as exc:
            message = f"cannot write the DRA names to {self.path}: {exc.strerror or exc}"
            if message != self._error:
                log.error("%s; a daemon restart now could publish a name for another device", message)
            self._error = message
            return
        if self._error is not None:
            log.info("DRA names written to %s again", self.path)
        self._error = None
        self._written = dict(self.bound)
        self._seen = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

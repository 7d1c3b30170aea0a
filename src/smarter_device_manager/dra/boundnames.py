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
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, FILE)
        self.bound: dict[str, str] = {}  # DRA name -> the fingerprint it was first published for
        self._written: dict[str, str] = {}
        self._error: str | None = None

    def load(self) -> None:
        doc = statefile.load(self.path, KIND, VERSION)
        names = doc.get("names") if doc is not None else None
        if doc is not None and not (isinstance(names, dict) and all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in names.items())):
            log.warning("state file %s: 'names' is not a map of names to fingerprints; starting "
                        "without it", self.path)
            return
        if names:
            self.bound = dict(names)
            self._written = dict(names)
            log.info("state %s: %d DRA names bound to their devices", self.path, len(names))

    def save(self) -> None:
        """Write the names if any was bound since the last write."""
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

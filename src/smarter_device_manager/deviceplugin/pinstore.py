"""Pool pins on disk, so a daemon restart does not move an ID a pod holds to another device.

Pinning (:mod:`~smarter_device_manager.pinning`) keeps each pool ID on its physical device for as
long as the kubelet may count it, from what the reconcile loop held at the last scan. A daemon
that restarts with that memory lost derives IDs afresh: a twin that held the bare serial
(``0001``) gets ``0001-usb-...``, a new ID the kubelet thinks free, and a second pod can get the
adapter a running pod holds. So the loop's pins are written here after every change and read
back at start:

* per pool resource: each held member's ID, serial and serial-and-port (what pinning compares),
  and for a member already unplugged the wall-clock time it went, so the removal grace goes on
  across the restart instead of starting again or being forgotten;
* the serials seen on two devices at once.

A member that was present when the daemon stopped and is absent when it starts again is counted
as gone since the start (its removal grace starts then). The file lives in the daemon's state dir
(default ``<plugin dir>/smarter-device-manager/pins.json``): the kubelet deletes every file in
its plugin dir when it starts, but no directory (docs/decisions.md, "State that outlives the
daemon").

Times in memory are the loop's monotonic clock; the file has wall-clock times, converted on the
way in and out. ``json`` (through :mod:`~smarter_device_manager.statefile`) is imported only when
there is a file to read or a pool to write: a node without pools pays nothing.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from smarter_device_manager.discovery import Member

log = logging.getLogger(__name__)

FILE = "pins.json"
KIND = "smarter-device-manager/pool-pins"
VERSION = 1
FIELDS = ("id", "serial", "where", "path")


@dataclass
class Pins:
    """One pool's pins: members held and present, members gone (identity -> (member, since)),
    and the serials seen shared. ``since`` is in the loop's clock."""

    present: tuple[Member, ...] = ()
    gone: dict[str, tuple[Member, float]] = field(default_factory=dict)
    shared: set[str] = field(default_factory=set)


class PinStore:
    def __init__(self, state_dir: str, removal_grace: float) -> None:
        self.path = os.path.join(state_dir, FILE)
        self.removal_grace = removal_grace
        self._loaded: dict[str, Pins] = {}  # read at start, not yet taken by a running pool
        self._written: object = None  # what the file holds, to skip writes that change nothing
        self._error: str | None = None

    def load(self, now: float) -> None:
        """Read the file (at start). Members present when it was written count as gone since now."""
        if not os.path.exists(self.path):
            return
        from smarter_device_manager import statefile

        doc = statefile.load(self.path, KIND, VERSION)
        if doc is None:
            return
        wall = time.time()
        pools = doc.get("pools")
        for name, entry in (pools.items() if isinstance(pools, dict) else ()):
            pins = _parse(entry, now, wall)
            if pins is None:
                log.warning("state file %s: the pins of %s are not usable; that pool starts without them",
                            self.path, name)
                continue
            self._loaded[str(name)] = pins
        self._written = self._signature(self._live({}, now))
        if self._loaded:
            log.info("state %s: pinned IDs of %d pools: %s", self.path, len(self._loaded),
                     "; ".join(f"{n}: {' '.join(sorted(p.gone))}" for n, p in sorted(self._loaded.items())))

    def saved(self, name: str, now: float) -> Pins:
        """The pins read at start for pool ``name`` still within the grace (none if not saved).
        They stay leftovers until :meth:`record` sees the pool running (a pool that could not be
        served keeps them)."""
        pins = self._loaded.get(name) or Pins()
        held = {i: (m, since) for i, (m, since) in pins.gone.items() if now - since < self.removal_grace}
        return Pins((), held, set(pins.shared))

    def record(self, pools: dict[str, Pins], now: float) -> None:
        """Write the running pools' pins (and the leftovers still within the grace) if they changed."""
        live = self._live(pools, now)
        signature = self._signature(live)
        if signature == self._written or (not live and self._written is None):
            return
        from smarter_device_manager import statefile

        wall = time.time()
        body = {"pools": {name: _dump(pins, now, wall) for name, pins in live.items()}}
        try:
            statefile.save(self.path, KIND, VERSION, body)
        except OSError as exc:
            message = f"cannot write the pool pins to {self.path}: {exc.strerror or exc}"
            if message != self._error:
                log.error("%s; a daemon restart now could give a held ID to another device", message)
            self._error = message
            return
        if self._error is not None:
            log.info("pool pins written to %s again", self.path)
        self._error = None
        self._written = signature

    def _live(self, pools: dict[str, Pins], now: float) -> dict[str, Pins]:
        for name, pins in list(self._loaded.items()):
            pins.gone = {i: g for i, g in pins.gone.items() if now - g[1] < self.removal_grace}
            if name in pools or not pins.gone:
                del self._loaded[name]
        live = dict(self._loaded)
        live.update((n, p) for n, p in pools.items() if p.present or p.gone)
        return live

    @staticmethod
    def _signature(pools: dict[str, Pins]) -> object:
        return sorted((name, sorted(_key(m) for m in p.present),
                       sorted((_key(m), since) for m, since in p.gone.values()), sorted(p.shared))
                      for name, p in pools.items())


def _key(member: Member) -> tuple[str, str, str, str]:
    return member.identity, member.own, member.where, member.path


def _dump(pins: Pins, now: float, wall: float) -> dict[str, Any]:
    members = [_member(m, None) for m in pins.present]
    members += [_member(m, wall - (now - since)) for m, since in pins.gone.values()]
    return {"members": sorted(members, key=lambda m: str(m["id"])), "shared": sorted(pins.shared)}


def _member(member: Member, gone_at: float | None) -> dict[str, Any]:
    return {"id": member.identity, "serial": member.own, "where": member.where, "path": member.path,
            "gone_at": gone_at}


def _parse(entry: Any, now: float, wall: float) -> Pins | None:
    """One pool's entry as :func:`_dump` wrote it, or None if any part has the wrong shape."""
    if not isinstance(entry, dict) or not isinstance(entry.get("members"), list) or \
            not _strings(entry.get("shared")):
        return None
    pins = Pins(shared=set(entry["shared"]))
    for item in entry["members"]:
        if not isinstance(item, dict) or not _strings([item.get(k) for k in FIELDS]) or \
                not all(item[k] for k in FIELDS[:3]):
            return None
        gone_at = item.get("gone_at")
        if gone_at is None:
            since = now  # present when the daemon stopped, not seen yet: gone from now on
        elif isinstance(gone_at, (int, float)) and not isinstance(gone_at, bool):
            since = now - max(0.0, wall - float(gone_at))  # a clock set back: gone from now on
        else:
            return None
        member = Member(item["id"], item["path"], (), base=item["serial"], located=item["where"])
        pins.gone[member.identity] = (member, since)
    return pins


def _strings(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)

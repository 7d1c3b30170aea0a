"""Unplugged devices: kept through the removal grace, tainted in the slice, Unhealthy to the kubelet.

Device-plugin mode keeps a vanished device's IDs (Unhealthy) for ``--removal-grace`` so that a
USB adapter pulled for a moment comes back as the same device. DRA mode does the same with the
tools DRA has: the device stays in the ResourceSlice with a taint ``<driver>/unplugged`` (effect
``NoSchedule``: no new claim is allocated it while it may come back; ``NoExecute``: the eviction
controller also moves the pods holding it), and the health service (``health.py``) reports it
Unhealthy with how long ago it went. It comes back (the same DRA name, i.e. the same identity):
the taint goes and it is Healthy. The grace ends: it leaves the slice.

Pure, with the clock passed in (Unix seconds: the grace must be comparable with the taint's
``timeAdded`` the API server stored, which is also what survives a daemon restart: on the first
list of our slices, a device that carries our taint there but is not on the node is taken back
into its grace, measured from that ``timeAdded``, so a restart neither forgets nor resets it).

Only devices whose rule still selects them are kept: a device gone because the config no longer
wants it leaves at once, as in device-plugin mode. A grace of 0 turns all of this off.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from smarter_device_manager.dra.devices import DraDevice
from smarter_device_manager.dra.slices import device_entry, json_copy

EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class Gone:
    """A device in its removal grace: its slice entry as last published (no taints), and since when."""

    entry: Mapping[str, Any]
    since: float


def taint_key(driver: str) -> str:
    return f"{driver}/unplugged"


def parse_time(text: object) -> float | None:
    """An RFC 3339 time as the API server writes ``timeAdded`` (``2026-05-01T10:00:00Z``)."""
    if not isinstance(text, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(text.rstrip("Z").split(".")[0], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


class Unplugged:
    """The devices in their removal grace, by DRA device name."""

    def __init__(self, driver: str, grace: float, effect: str = "NoSchedule") -> None:
        if effect not in EFFECTS:
            raise ValueError(f"taint effect {effect!r} is not one of {', '.join(EFFECTS)}")
        self.key = taint_key(driver)
        self.grace = grace
        self.effect = effect
        self.gone: dict[str, Gone] = {}

    def update(self, before: Mapping[str, DraDevice], present: Mapping[str, DraDevice],
               kept: Callable[[DraDevice], bool], now: float) -> tuple[list[str], list[str]]:
        """Take a rescan: (names newly gone, names back). Expired ones are dropped too."""
        went = []
        if self.grace > 0:
            for name, device in before.items():
                if name not in present and name not in self.gone and kept(device):
                    self.gone[name] = Gone(device_entry(device), now)
                    went.append(name)
        back = [name for name in self.gone if name in present]
        for name in back:
            del self.gone[name]
        self.expire(now)
        return sorted(went), sorted(back)

    def adopt(self, observed: Mapping[str, Mapping[str, Any]], present: Mapping[str, DraDevice],
              now: float) -> list[str]:
        """Take back devices our slices carry with our taint but the node lacks (a restart)."""
        taken = []
        for obj in observed.values():
            for device in (obj.get("spec") or {}).get("devices") or ():
                name = str(device.get("name", ""))
                ours = [t for t in device.get("taints") or () if t.get("key") == self.key]
                if not ours or name in present or name in self.gone or self.grace <= 0:
                    continue
                since = min((t for t in (parse_time(x.get("timeAdded")) for x in ours) if t is not None),
                            default=now)
                if now - since < self.grace:
                    self.gone[name] = Gone(json_copy({k: v for k, v in device.items() if k != "taints"}),
                                           since)
                    taken.append(name)
        return sorted(taken)

    def expire(self, now: float) -> list[str]:
        """Drop the devices whose grace is over; their names."""
        over = sorted(name for name, gone in self.gone.items() if now - gone.since >= self.grace)
        for name in over:
            del self.gone[name]
        return over

    def next_expiry(self) -> float | None:
        """When the next device's grace ends (Unix seconds), or None."""
        return min(g.since for g in self.gone.values()) + self.grace if self.gone else None

    def entries(self) -> list[dict[str, Any]]:
        """The slice entries of the devices in their grace, each with our taint."""
        return [{**json_copy(gone.entry), "taints": [{"key": self.key, "effect": self.effect}]}
                for gone in self.gone.values()]

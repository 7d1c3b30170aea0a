"""A device's stable identity: what names it in a pool across unplugs and re-enumerations.

A pool's device IDs (device-plugin mode) and its members' names are built from it, so it must
not change when an adapter comes back as ttyUSB1 instead of ttyUSB0, and must tell two adapters
apart. It is read from the device's USB ancestry in sysfs (serial, else the physical port), never
from the order the kernel enumerated devices in.
"""

from __future__ import annotations

import re

from smarter_device_manager.sysfs import Level, Sysfs

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def identity(sysfs: Sysfs, chain: tuple[Level, ...], node_name: str) -> str:
    """A stable identity for the device, used as its device ID in pools: it must NOT change when the
    device is unplugged and comes back under another node name (ttyUSB0 -> ttyUSB1) or another devnum,
    and must differ between two adapters. Rule: find the nearest USB device on the chain (a level with
    `idVendor` and `idProduct`); if it has a non-empty `serial`, the base is that serial; otherwise the
    base is 'usb-' + the USB device dir's basename (e.g. 'usb-1-1.3', the physical port path, stable per
    port). If that USB device's `bNumInterfaces` is more than 1, append '-if' + the interface's
    `bInterfaceNumber` (the level just below the USB device on the chain). If the class device has an
    `index` attribute other than '0' (video4linux metadata nodes), append '-' + index. With no USB
    device on the chain (built-in UARTs, I2C, PCI): the node's own name (node_name with '/' -> '_';
    built-in devices do not re-enumerate). Finally map every character outside [A-Za-z0-9._-] to '_'.

    Two adapters that share a serial (vendors that ship "0001" on every unit) get the same identity:
    callers must treat duplicates as a problem, this method cannot see the other device."""
    for position, level in enumerate(chain):
        usb = level.path
        if sysfs.attribute(usb, "idVendor") is None or sysfs.attribute(usb, "idProduct") is None:
            continue
        serial = (sysfs.attribute(usb, "serial") or "").strip()
        ident = serial or "usb-" + usb.rpartition("/")[2]
        if position > 0 and _count(sysfs.attribute(usb, "bNumInterfaces")) > 1:
            number = sysfs.attribute(chain[position - 1].path, "bInterfaceNumber")
            if number:
                ident += "-if" + number.strip()
        index = sysfs.attribute(chain[0].path, "index")
        if index and index.strip() != "0":
            ident += "-" + index.strip()
        return _UNSAFE.sub("_", ident)
    return _UNSAFE.sub("_", node_name.replace("/", "_"))


def _count(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0

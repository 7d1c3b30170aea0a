"""A device's stable identity: what names it in a pool across unplugs and re-enumerations.

A pool's device IDs (device-plugin mode) and its members' names are built from it, so it must
not change when an adapter comes back as ttyUSB1 instead of ttyUSB0, and must tell two adapters
apart. It is read from the device's USB ancestry in sysfs (serial, else the physical port), never
from the order the kernel enumerated devices in.

Every device has two identities, both read from that device alone (never from which other
devices are present, so that the unplug of one adapter can never rename another):

* ``base``: the serial (moves with the adapter from port to port), or the port where there is no
  serial;
* ``located``: the serial *and* the port. Cheap adapters ship one serial on every unit (CP2102s
  and CH340 clones with ``0001``); for them the serial does not name one device, the port does.
  Callers that see two devices with one ``base`` use ``located`` (discovery, pools).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smarter_device_manager.sysfs import Level, Sysfs

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class Identity:
    """A device's two identities (see the module docstring); ``usb`` says whether they come from a
    USB device on its chain (else both are the node's name: built-in devices do not re-enumerate)."""

    base: str
    located: str
    usb: bool


def identity(sysfs: Sysfs, chain: tuple[Level, ...], node_name: str) -> str:
    """The device's ``base`` identity: see :func:`identities`."""
    return identities(sysfs, chain, node_name).base


def identities(sysfs: Sysfs, chain: tuple[Level, ...], node_name: str) -> Identity:
    """The stable identities of the device, used as its device IDs in pools: they must NOT change when
    the device is unplugged and comes back under another node name (ttyUSB0 -> ttyUSB1) or another devnum.

    Rule: find the nearest USB device on the chain (a level with `idVendor` and `idProduct`); if it has
    a non-empty `serial`, the base is that serial; otherwise the base is 'usb-' + the USB device dir's
    basename (e.g. 'usb-1-1.3', the physical port path, stable per port). Suffixes, in this order:
    '-if' + the interface's `bInterfaceNumber` if the USB device has more than one interface (the
    level just below the USB device on the chain); '-port' + the usb-serial port's `port_number` if it
    is not 0 (several ports on one interface: MCS7840, FTDI quad chips on some kernels; port 0 keeps
    the plain identity); '-' + the class device's `index` if it is not 0 (video4linux metadata
    nodes). ``located`` is the serial + '-usb-' + the port path + the same suffixes (the base itself
    when there is no serial). With no USB device on the chain (built-in UARTs, I2C, PCI): the node's
    own name (node_name with '/' -> '_'). Finally every character outside [A-Za-z0-9._-] becomes '_'.
    """
    for position, level in enumerate(chain):
        usb = level.path
        if sysfs.attribute(usb, "idVendor") is None or sysfs.attribute(usb, "idProduct") is None:
            continue
        serial = (sysfs.attribute(usb, "serial") or "").strip()
        port = "usb-" + usb.rpartition("/")[2]
        suffix = ""
        if position > 0 and _count(sysfs.attribute(usb, "bNumInterfaces")) > 1:
            number = sysfs.attribute(chain[position - 1].path, "bInterfaceNumber")
            if number:
                suffix += "-if" + number.strip()
        for below in chain[1:position]:
            if below.subsystem == "usb-serial":
                number = (sysfs.attribute(below.path, "port_number") or "").strip()
                if number and number != "0":
                    suffix += "-port" + number
                break
        index = sysfs.attribute(chain[0].path, "index")
        if index and index.strip() != "0":
            suffix += "-" + index.strip()
        base = _UNSAFE.sub("_", (serial or port) + suffix)
        located = _UNSAFE.sub("_", f"{serial}-{port}{suffix}") if serial else base
        return Identity(base, located, usb=True)
    name = _UNSAFE.sub("_", node_name.replace("/", "_"))
    return Identity(name, name, usb=False)


def _count(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0

"""Fake sysfs trees modelled on real ones, built in a temporary directory.

The way udev's own test suite does it: real directories, attribute files holding
one value and a newline, ``subsystem`` symlinks into ``<root>/bus/<bus>`` or
``<root>/class/<class>``, ``driver`` symlinks into ``<root>/bus/<bus>/drivers/<driver>``,
``uevent`` files, and ``<root>/dev/{char,block}/M:m`` relative symlinks. All links
are relative, as the kernel makes them, so a tree can be moved or mounted elsewhere.

The models follow real devices (attribute names and values as a Raspberry Pi 4
shows them), so that what passes here has a chance on a Pi: the Pi 4's xHCI behind
PCIe and its VL805 hub, FTDI/CP2102/CH340 adapters, a u-blox GPS on ttyACM, a UVC
camera with two video4linux nodes, a Jetson's ``gpu.0``, built-in UARTs, and
``/dev/null``. The writers use raw ``os`` calls: 1,000 adapters must build in well
under 2 s for the benchmark. Trouble makers (dangling links, loops, escaping links,
attributes that cannot be read) sit next to the models.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PI4_XHCI = "devices/platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0"
"""The Pi 4's VL805 xHCI controller, behind the BCM2711's PCIe root port."""

# Subsystems that are buses (links into bus/); every other subsystem is a class (links into class/).
BUSES = frozenset({"usb", "usb-serial", "pci", "platform", "amba", "serial-base", "pnp", "i2c", "spi"})
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@dataclass(frozen=True, slots=True)
class FakeDevice:
    """A class device in a fake tree: the /dev node a dev walk would find and where sysfs has it."""

    node: str  # name under /dev: "ttyUSB0", "video1", "null"
    path: str  # the class device dir, relative to the root
    major: int
    minor: int
    usb: str | None = None  # its USB device dir (relative), None for built-in devices
    block: bool = False

    @property
    def devnum(self) -> str:
        """``M:m`` as in ``dev/char``."""
        return f"{self.major}:{self.minor}"


def _digits(node: str) -> int:
    tail = node[len(node.rstrip("0123456789")) :]
    return int(tail) if tail else 0


class FakeSysfs:
    """Builds one fake sysfs tree under ``root`` (created if missing)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._devnum: dict[int, int] = {}  # bus -> last devnum handed out
        self._made: set[str] = set()  # directories known to exist (skip makedirs)
        self._links: dict[str, str] = {}  # dev/{char,block}/M:m -> target (relative to the root)
        for top in ("devices", "bus", "class", "dev/char", "dev/block"):
            self._mkdir(top)
        self._dir("devices/platform", uevent={})
        self._dir("devices/system", uevent=None)
        self._dir("devices/virtual", uevent=None)

    # -- low level -------------------------------------------------------------------------------

    def abs(self, rel: str) -> str:
        """Absolute path of ``rel`` (relative to the root)."""
        return os.path.join(self.root, rel)

    def _mkdir(self, rel: str) -> None:
        if rel not in self._made:
            if rel.rpartition("/")[0] in self._made:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(os.path.join(self.root, rel))  # the common case, one syscall
            else:
                os.makedirs(os.path.join(self.root, rel), exist_ok=True)
            self._made.add(rel)

    def write(self, rel: str, data: str | bytes) -> None:
        """Write a file exactly (``data`` as given; attributes get their newline in :meth:`device`)."""
        fd = os.open(f"{self.root}/{rel}", _WRITE, 0o644)
        try:
            os.write(fd, data.encode() if isinstance(data, str) else data)
        finally:
            os.close(fd)

    def symlink(self, rel: str, target: str) -> None:
        """A relative symlink at ``rel`` to ``target`` (both relative to the root), as the kernel makes."""
        up = "../" * rel.count("/")
        os.symlink(up + target, f"{self.root}/{rel}")

    def _dir(self, rel: str, uevent: Mapping[str, str] | None) -> None:
        self._mkdir(rel)
        if uevent is not None:
            self.write(f"{rel}/uevent", "".join(f"{k}={v}\n" for k, v in uevent.items()))

    def device(self, rel: str, *, subsystem: str | None = None, driver: str | None = None,
               attrs: Mapping[str, str] | None = None, uevent: Mapping[str, str] | None = None,
               parent_link: bool = False) -> str:
        """A device dir: ``uevent`` (always: that is what makes a dir a device), attribute files (value +
        newline), ``subsystem``/``driver`` links, and with ``parent_link`` a ``device`` link to its parent
        device as class devices have. Returns ``rel``."""
        self._dir(rel, uevent or {})
        for name, value in (attrs or {}).items():
            self.write(f"{rel}/{name}", value + "\n")
        if subsystem is not None:
            home = f"bus/{subsystem}" if subsystem in BUSES else f"class/{subsystem}"
            self._mkdir(home)
            self.symlink(f"{rel}/subsystem", home)
        if driver is not None and subsystem is not None:
            bus = subsystem if subsystem in BUSES else "platform"
            drivers = f"bus/{bus}/drivers/{driver}"
            self._mkdir(drivers)
            self.symlink(f"{rel}/driver", drivers)
        if parent_link:
            self.symlink(f"{rel}/device", rel.rpartition("/")[0].rpartition("/")[0])
        return rel

    def class_device(self, rel: str, cls: str, node: str, major: int, minor: int, *,
                     attrs: Mapping[str, str] | None = None, devtype: str | None = None,
                     block: bool = False, usb: str | None = None, lean: bool = False) -> FakeDevice:
        """A class device with a node: uevent MAJOR/MINOR/DEVNAME(/DEVTYPE), ``dev``, a ``power`` dir
        (a subdirectory, not an attribute), its ``class/<cls>/<name>`` entry and its dev/char link."""
        uevent = {"MAJOR": str(major), "MINOR": str(minor), "DEVNAME": node}
        if devtype:
            uevent["DEVTYPE"] = devtype
        self.device(rel, subsystem=cls, attrs={"dev": f"{major}:{minor}", **(attrs or {})}, uevent=uevent,
                    parent_link=not lean and not rel.startswith("devices/virtual/"))
        if not lean:
            self._mkdir(f"{rel}/power")
            self.write(f"{rel}/power/runtime_status", "unsupported\n")
            entry = f"class/{cls}/{rel.rpartition('/')[2]}"
            if not os.path.lexists(self.abs(entry)):
                self.symlink(entry, rel)
        device = FakeDevice(node, rel, major, minor, usb, block)
        self.dev_link(block, major, minor, rel)
        return device

    def dev_link(self, block: bool, major: int, minor: int, target: str) -> None:
        """``dev/{char,block}/M:m`` -> ``target`` (relative link), replacing any old one."""
        link = f"dev/{'block' if block else 'char'}/{major}:{minor}"
        if os.path.lexists(self.abs(link)):
            os.unlink(self.abs(link))
        self.symlink(link, target)
        self._links[link] = target

    def unlink_dev(self, block: bool, major: int, minor: int) -> None:
        """Remove a ``dev/{char,block}/M:m`` link (the node's sysfs entry is gone)."""
        link = f"dev/{'block' if block else 'char'}/{major}:{minor}"
        os.unlink(self.abs(link))
        self._links.pop(link, None)

    def unplug(self, device: FakeDevice) -> None:
        """What the kernel does when an adapter goes away: its USB device dir (or, for a built-in
        device, its class dir) disappears with everything below it, and so do the dev links into it."""
        gone = device.usb or device.path
        shutil.rmtree(self.abs(gone))
        self._made = {d for d in self._made if d != gone and not d.startswith(gone + "/")}
        for link, target in list(self._links.items()):
            if target == gone or target.startswith(gone + "/"):
                os.unlink(self.abs(link))
                del self._links[link]
        for cls in os.listdir(self.abs("class")):
            entry = self.abs(f"class/{cls}")
            for name in os.listdir(entry):
                if not os.path.exists(os.path.join(entry, name)):
                    os.unlink(os.path.join(entry, name))

    # -- USB topology ----------------------------------------------------------------------------

    def _next_devnum(self, bus: int) -> int:
        self._devnum[bus] = self._devnum.get(bus, 0) + 1
        return self._devnum[bus]

    def usb_bus(self, bus: int = 1) -> str:
        """The Pi 4's xHCI with root hub ``usb<bus>`` (devnum 1), created once. Returns its path."""
        rel = f"{PI4_XHCI}/usb{bus}"
        if rel in self._made:
            return rel
        self.device("devices/platform/scb", subsystem="platform",
                    uevent={"OF_NAME": "scb", "OF_FULLNAME": "/scb", "OF_COMPATIBLE_0": "simple-bus"})
        self.device("devices/platform/scb/fd500000.pcie", subsystem="platform", driver="brcm-pcie",
                    uevent={"DRIVER": "brcm-pcie", "OF_NAME": "pcie", "OF_COMPATIBLE_0": "brcm,bcm2711-pcie"})
        self.device("devices/platform/scb/fd500000.pcie/pci0000:00", uevent={})
        self.device(f"{PI4_XHCI.rpartition('/')[0]}", subsystem="pci", driver="pcieport",
                    attrs={"vendor": "0x14e4", "device": "0x2711", "class": "0x060400"},
                    uevent={"DRIVER": "pcieport", "PCI_ID": "14E4:2711", "PCI_SLOT_NAME": "0000:00:00.0"})
        self.device(PI4_XHCI, subsystem="pci", driver="xhci_hcd",
                    attrs={"vendor": "0x1106", "device": "0x3483", "class": "0x0c0330"},
                    uevent={"DRIVER": "xhci_hcd", "PCI_ID": "1106:3483", "PCI_SLOT_NAME": "0000:01:00.0"})
        self._usb_device(rel, bus, "0", vid="1d6b", pid="0002" if bus % 2 else "0003",
                         manufacturer="Linux 6.1.0-rpi7-rpi-v8 xhci-hcd", product="xHCI Host Controller",
                         serial="0000:01:00.0", device_class="09", bcd="0601", maxchild="1")
        self._interface(rel, f"usb{bus}-0:1.0", number=0, cls="09", driver="hub")
        return rel

    def usb_hub(self, port: str) -> str:
        """The hub at port path ``port`` (``1-1`` is the Pi 4's VL805 hub, 2109:3431) and every hub
        above it, created once each. Returns its path."""
        bus, _, ports = port.partition("-")
        above = port.rpartition(".")[0] if "." in ports else ""
        parent = self.usb_hub(above) if above else self.usb_bus(int(bus))
        rel = f"{parent}/{port}"
        if rel in self._made:
            return rel
        self._usb_device(rel, int(bus), ports, vid="2109", pid="3431", manufacturer=None,
                         product="USB2.0 Hub", serial=None, device_class="09", bcd="0421", maxchild="4")
        self._interface(rel, f"{port}:1.0", number=0, cls="09", driver="hub")
        return rel

    def usb_device(self, port: str, *, vid: str, pid: str, manufacturer: str | None, product: str | None,
                   serial: str | None, interfaces: int = 1, devnum: int | None = None,
                   bcd: str = "0600", device_class: str = "00", lean: bool = False) -> str:
        """A USB device at port path ``port`` (e.g. ``1-1.3``; hubs above it are made as needed).
        ``serial=None`` leaves the attribute out, as CH340s do. ``lean`` writes only the attributes
        rules and identities read (for the 1,000-adapter benchmark). Returns its path."""
        bus, _, ports = port.partition("-")
        above = port.rpartition(".")[0] if "." in ports else ""
        parent = self.usb_hub(above) if above else self.usb_bus(int(bus))
        rel = f"{parent}/{port}"
        self._usb_device(rel, int(bus), ports, vid=vid, pid=pid, manufacturer=manufacturer, product=product,
                         serial=serial, interfaces=interfaces, devnum=devnum, bcd=bcd,
                         device_class=device_class, lean=lean)
        return rel

    def _usb_device(self, rel: str, bus: int, devpath: str, *, vid: str, pid: str, manufacturer: str | None,
                    product: str | None, serial: str | None, interfaces: int = 1, devnum: int | None = None,
                    bcd: str = "0600", device_class: str = "00", maxchild: str = "0",
                    lean: bool = False) -> None:
        devnum = self._next_devnum(bus) if devnum is None else devnum
        minor = (bus - 1) * 128 + devnum - 1
        attrs = {"idVendor": vid, "idProduct": pid, "bNumInterfaces": f"{interfaces:2d}", "busnum": str(bus),
                 "devnum": str(devnum), "devpath": devpath, "dev": f"189:{minor}"}
        if not lean:
            attrs.update({
                "bcdDevice": bcd, "bDeviceClass": device_class, "bDeviceSubClass": "00",
                "bDeviceProtocol": "00", "bNumConfigurations": "1", "bConfigurationValue": "1",
                "bMaxPower": "90mA", "speed": "12", "version": " 2.00", "maxchild": maxchild,
                "removable": "unknown", "authorized": "1",
            })
        if manufacturer is not None:
            attrs["manufacturer"] = manufacturer
        if product is not None:
            attrs["product"] = product
        if serial is not None:
            attrs["serial"] = serial
        self.device(rel, subsystem="usb", driver="usb", attrs=attrs, uevent={
            "MAJOR": "189", "MINOR": str(minor), "DEVNAME": f"bus/usb/{bus:03d}/{devnum:03d}",
            "DEVTYPE": "usb_device", "DRIVER": "usb",
            "PRODUCT": f"{int(vid, 16):x}/{int(pid, 16):x}/{int(bcd, 16):x}",
            "TYPE": f"{int(device_class, 16)}/0/0", "BUSNUM": f"{bus:03d}", "DEVNUM": f"{devnum:03d}",
        })
        if not lean:  # The raw descriptors: binary, not UTF-8 (0xa0 is bMaxPower's byte), as on a device.
            self.write(f"{rel}/descriptors", bytes.fromhex(
                "12010002000000080304016000060102030109022000010100a02d"))
            self.dev_link(False, 189, minor, rel)

    def _interface(self, usb: str, name: str, *, number: int, cls: str, driver: str | None,
                   interface: str | None = None, lean: bool = False) -> str:
        rel = f"{usb}/{name}"
        attrs = {"bInterfaceNumber": f"{number:02x}", "bInterfaceClass": cls}
        if not lean:
            attrs.update({"bAlternateSetting": " 0", "bInterfaceSubClass": "00", "bInterfaceProtocol": "00",
                          "bNumEndpoints": "02", "authorized": "1", "supports_autosuspend": "1"})
        if interface is not None:
            attrs["interface"] = interface
        uevent = {"DEVTYPE": "usb_interface", "INTERFACE": f"{int(cls, 16)}/0/0"}
        if driver:
            uevent["DRIVER"] = driver
        self.device(rel, subsystem="usb", driver=driver, attrs=attrs, uevent=uevent)
        return rel

    # -- models ----------------------------------------------------------------------------------

    def usb_serial(self, port: str, node: str, minor: int | None, *, vid: str, pid: str,
                   manufacturer: str | None, product: str | None, serial: str | None, driver: str,
                   devnum: int | None = None, port_attrs: Mapping[str, str] | None = None,
                   lean: bool = False) -> FakeDevice:
        """A single-interface usb-serial adapter: USB device, interface :1.0, the usb-serial port
        ``ttyUSBn`` and the tty class device ``ttyUSBn/tty/ttyUSBn`` (188:n)."""
        minor = _digits(node) if minor is None else minor
        usb = self.usb_device(port, vid=vid, pid=pid, manufacturer=manufacturer, product=product,
                              serial=serial, devnum=devnum, lean=lean)
        intf = self._interface(usb, f"{port}:1.0", number=0, cls="ff", driver=driver, interface=product,
                               lean=lean)
        serial_port = self.device(f"{intf}/{node}", subsystem="usb-serial", driver=driver,
                                  attrs={"port_number": "0", **(port_attrs or {})}, uevent={"DRIVER": driver})
        self._mkdir(f"{serial_port}/tty")
        return self.class_device(f"{serial_port}/tty/{node}", "tty", node, 188, minor, usb=usb, lean=lean)

    def multiport(self, port: str = "1-1.5", nodes: tuple[str, ...] = ("ttyUSB4", "ttyUSB5", "ttyUSB6",
                                                                    "ttyUSB7"),
                  serial: str | None = None, devnum: int | None = None) -> list[FakeDevice]:
        """A MosChip MCS7840 4-port adapter (9710:7840, driver mos7840): ONE interface :1.0 with one
        usb-serial port dir per port, each with its ``port_number`` (0, 1, ...), as the usb-serial
        core makes them (FTDI quad chips look so on some kernels too). No serial by default."""
        usb = self.usb_device(port, vid="9710", pid="7840", manufacturer=None, product="MCS7840",
                              serial=serial, devnum=devnum)
        intf = self._interface(usb, f"{port}:1.0", number=0, cls="ff", driver="mos7840",
                               interface="MCS7840")
        devices = []
        for number, node in enumerate(nodes):
            serial_port = self.device(f"{intf}/{node}", subsystem="usb-serial", driver="mos7840",
                                      attrs={"port_number": str(number)}, uevent={"DRIVER": "mos7840"})
            self._mkdir(f"{serial_port}/tty")
            devices.append(self.class_device(f"{serial_port}/tty/{node}", "tty", node, 188, _digits(node),
                                             usb=usb))
        return devices

    def ftdi(self, port: str = "1-1.3", node: str = "ttyUSB0", minor: int | None = None,
             serial: str | None = "A50285BI", devnum: int | None = None, lean: bool = False) -> FakeDevice:
        """FTDI FT232R (0403:6001, driver ftdi_sio) at the reference's Pi 4 path by default."""
        return self.usb_serial(port, node, minor, vid="0403", pid="6001", manufacturer="FTDI",
                               product="FT232R USB UART", serial=serial, driver="ftdi_sio", devnum=devnum,
                               port_attrs=None if lean else {"latency_timer": "16"}, lean=lean)

    def cp2102(self, port: str = "1-1.4", node: str = "ttyUSB1", minor: int | None = None,
               serial: str | None = "0001", devnum: int | None = None) -> FakeDevice:
        """Silicon Labs CP2102 (10c4:ea60, driver cp210x); "0001" is the serial many of them ship with."""
        return self.usb_serial(port, node, minor, vid="10c4", pid="ea60", manufacturer="Silicon Labs",
                               product="CP2102 USB to UART Bridge Controller", serial=serial, driver="cp210x",
                               devnum=devnum)

    def ch340(self, port: str = "1-1.2", node: str = "ttyUSB2", minor: int | None = None,
              devnum: int | None = None) -> FakeDevice:
        """WCH CH340 (1a86:7523, driver ch341): no ``serial`` and no ``manufacturer`` attribute at all."""
        return self.usb_serial(port, node, minor, vid="1a86", pid="7523", manufacturer=None,
                               product="USB Serial", serial=None, driver="ch341", devnum=devnum)

    def ublox(self, port: str = "1-1.1", node: str = "ttyACM0", minor: int | None = None,
              serial: str | None = "7A3F21C4", devnum: int | None = None) -> FakeDevice:
        """u-blox 7 GPS (1546:01a7, driver cdc_acm): two interfaces (CDC control :1.0 with the tty,
        CDC data :1.1), tty directly under the interface: ``1-1.1:1.0/tty/ttyACM0`` (166:n)."""
        minor = _digits(node) if minor is None else minor
        usb = self.usb_device(port, vid="1546", pid="01a7", manufacturer="u-blox AG - www.u-blox.com",
                              product="u-blox 7 - GPS/GNSS Receiver", serial=serial, interfaces=2,
                              devnum=devnum, device_class="02", bcd="0100")
        control = self._interface(usb, f"{port}:1.0", number=0, cls="02", driver="cdc_acm")
        self.write(f"{control}/bmCapabilities", "2\n")
        self._interface(usb, f"{port}:1.1", number=1, cls="0a", driver="cdc_acm")
        self._mkdir(f"{control}/tty")
        return self.class_device(f"{control}/tty/{node}", "tty", node, 166, minor, usb=usb)

    def uvc_camera(self, port: str = "1-1.2", nodes: tuple[str, str] = ("video0", "video1"),
                   minors: tuple[int, int] | None = None, serial: str | None = "SN0001",
                   devnum: int | None = None) -> tuple[FakeDevice, FakeDevice]:
        """A UVC camera (0c45:636b, driver uvcvideo): video control :1.0 holds two video4linux nodes,
        the capture node (index 0) and its metadata node (index 1), both named "USB Camera"; video
        streaming :1.1 has none (81:n)."""
        usb = self.usb_device(port, vid="0c45", pid="636b", manufacturer="Sonix Technology Co., Ltd.",
                              product="USB 2.0 Camera", serial=serial, interfaces=2, devnum=devnum,
                              device_class="ef", bcd="0100")
        control = self._interface(usb, f"{port}:1.0", number=0, cls="0e", driver="uvcvideo",
                                  interface="USB Camera")
        self._interface(usb, f"{port}:1.1", number=1, cls="0e", driver="uvcvideo")
        self._mkdir(f"{control}/video4linux")
        minors = minors or (_digits(nodes[0]), _digits(nodes[1]))
        capture, metadata = (
            self.class_device(f"{control}/video4linux/{node}", "video4linux", node, 81, minor, usb=usb,
                              attrs={"name": "USB Camera", "index": str(index), "dev_debug": "0"})
            for index, (node, minor) in enumerate(zip(nodes, minors, strict=True))
        )
        return capture, metadata

    def jetson_gpus(self, names: Iterable[str] = ("gpu.0",)) -> None:
        """A Jetson's top-level ``devices/gpu.0`` (driver gk20a) next to ``platform``/``system``/
        ``virtual`` and a few other non-matching entries."""
        for name in names:
            self.device(f"devices/{name}", subsystem="platform", driver="gk20a",
                        uevent={"DRIVER": "gk20a", "OF_NAME": "gpu", "OF_COMPATIBLE_0": "nvidia,gv11b"})
        for other in ("breakpoint", "software", "tracepoint", "armv8_pmuv3"):
            self.device(f"devices/{other}", uevent={})

    def builtin_uart(self, node: str = "ttyAMA0", major: int = 204, minor: int = 64,
                     device: str = "devices/platform/soc/fe201000.serial", bus: str = "amba",
                     driver: str = "uart-pl011") -> FakeDevice:
        """A built-in UART, no USB anywhere: by default the Pi 4's PL011 with ``tty/ttyAMA0`` (204:64).
        The Pi's mini UART is ``node="ttyS0", major=4, device="devices/platform/soc/fe215040.serial",
        bus="platform", driver="bcm2835-aux-uart"``."""
        if "devices/platform/soc" not in self._made:
            self.device("devices/platform/soc", subsystem="platform",
                        uevent={"OF_NAME": "soc", "OF_COMPATIBLE_0": "simple-bus"})
        self.device(device, subsystem=bus, driver=driver, uevent={"DRIVER": driver})
        self._mkdir(f"{device}/tty")
        return self.class_device(f"{device}/tty/{node}", "tty", node, major, minor,
                                 attrs={"type": "0", "line": "0", "irq": "14"})

    def null(self) -> FakeDevice:
        """``/dev/null`` (1:3) at ``devices/virtual/mem/null``: ``virtual`` and ``mem`` are grouping
        directories without ``uevent``."""
        self._mkdir("devices/virtual/mem")
        return self.class_device("devices/virtual/mem/null", "mem", "null", 1, 3)

    def adapters(self, count: int, hubs: int = 4, first_minor: int = 0) -> list[FakeDevice]:
        """``count`` FTDI-like adapters with distinct serials spread over ``hubs`` hubs on bus 1
        (ports ``1-1.<hub>.<n>``; the fake does not enforce USB's 127-devices-per-bus limit). Lean:
        the same levels, uevents and subsystem/driver links, only the attributes rules and identities
        read; no ``device`` links, ``class/`` entries or USB device nodes. Each costs a block on ext4."""
        found: list[FakeDevice] = []
        for i in range(count):
            port = f"1-1.{1 + i % hubs}.{1 + i // hubs}"
            minor = first_minor + i
            found.append(self.ftdi(port=port, node=f"ttyUSB{minor}", minor=minor, serial=f"FT{i:06X}",
                                   lean=True))
        return found

    # -- trouble ---------------------------------------------------------------------------------

    def attribute_raw(self, rel: str, name: str, data: bytes) -> None:
        """An attribute with exactly these bytes (binary, not UTF-8, too large...)."""
        self.write(f"{rel}/{name}", data)

    def attribute_dir(self, rel: str, name: str) -> None:
        """An "attribute" that is a directory."""
        os.mkdir(self.abs(f"{rel}/{name}"))

    def attribute_fifo(self, rel: str, name: str) -> None:
        """An "attribute" that is a FIFO: opening it for reading without O_NONBLOCK would hang."""
        os.mkfifo(self.abs(f"{rel}/{name}"))

    def attribute_symlink(self, rel: str, name: str, target: str) -> None:
        """An "attribute" that is a symlink to ``target`` (absolute: e.g. a file outside the root)."""
        os.symlink(target, self.abs(f"{rel}/{name}"))

    def dangling_link(self, major: int, minor: int, block: bool = False) -> None:
        """``dev/char/M:m`` to a device dir that does not exist."""
        self.dev_link(block, major, minor, "devices/platform/gone.0")

    def loop_link(self, major: int, minor: int) -> None:
        """``dev/char/M:m`` into a loop: ``devices/loop-a`` -> ``loop-b`` -> ``loop-a``."""
        if not os.path.lexists(self.abs("devices/loop-a")):
            os.symlink("loop-b", self.abs("devices/loop-a"))
            os.symlink("loop-a", self.abs("devices/loop-b"))
        self.dev_link(False, major, minor, "devices/loop-a")

    def self_loop_link(self, major: int, minor: int) -> None:
        """``dev/char/M:m`` pointing at itself."""
        os.symlink(f"{major}:{minor}", self.abs(f"dev/char/{major}:{minor}"))

    def escaping_link(self, major: int, minor: int, outside: str) -> None:
        """``dev/char/M:m`` to ``outside``, an existing directory outside the root, through a symlinked
        directory inside ``devices`` (``devices/platform/evil``): the link itself looks harmless."""
        evil = self.abs("devices/platform/evil")
        if not os.path.lexists(evil):
            os.symlink(outside, evil)
        self.dev_link(False, major, minor, "devices/platform/evil")

    def absolute_escaping_link(self, major: int, minor: int, outside: str) -> None:
        """``dev/char/M:m`` with an absolute target outside the root."""
        os.symlink(outside, self.abs(f"dev/char/{major}:{minor}"))

    def file_link(self, major: int, minor: int) -> None:
        """``dev/char/M:m`` to a regular file inside ``devices``."""
        self.write("devices/platform/not-a-dir", "x\n")
        self.dev_link(False, major, minor, "devices/platform/not-a-dir")

    def outside_devices_link(self, major: int, minor: int) -> None:
        """``dev/char/M:m`` to a directory inside the root but not under ``devices`` (``bus/usb``)."""
        self._mkdir("bus/usb")
        self.dev_link(False, major, minor, "bus/usb")

"""DRA devices: what discovery found -> named devices with typed attributes and CDI edits.

Both modes read the same :class:`~smarter_device_manager.discovery.Inventory`, so what ``list``
prints is what DRA mode publishes. Here each resource becomes one or more DRA devices:

* a device node, a symlink, a ``nvidia-gpu`` entry: one device;
* a directory resource (``/dev/snd``): one device whose CDI edits carry every node inside it;
* a pool: one device per member, so a claim can ask for "two distinct adapters";
* ``nummaxdevices: 0``: not published (it would be a device nothing may use; device-plugin mode
  shows it with capacity 0, DRA has no such state), and said so once per rescan.

**Names** are DNS labels (what the API requires) made from the stable identity, never the
enumeration order: the resource name, and for pool members the pool's name plus the member's
identity (its USB serial or port). A device node that a rule selects without naming it (a path
rule such as ``^ttyACM[0-9]*$``: its resource is named after the kernel's name) is named after
its kernel name without the number plus its identity when sysfs shows a USB device above it
(``ttyacm-7a3f21c4-if00``, not ``ttyacm0``, which after a re-enumeration is another device);
two such devices that share a serial get serial and port (``ttyusb-0001-usb-1-1-4``).
Each device also carries a ``fingerprint`` (its serial and port) that NodePrepareResources
compares with the device behind the node when it prepares: another device there is refused.
Lowercasing and reading '.' and '_' as '-' is enough for
most (``ttyUSB0`` -> ``ttyusb0``, port ``1-1.2`` -> ``1-1-2``); anything else that had to be
replaced, or a name over 63 characters, gets a crc32 of the original so that two identities can
not fold into one name. Two devices that still collide are both renamed with their node path's
crc and reported.

**Attributes** (all under the driver's domain, so a CEL selector reads
``device.attributes["smarter-devices.io"].idVendor``): the node (``path``, ``type``, ``major``,
``minor``), what selected it (``resource``, ``rule``, ``kind``, ``identity``), sysfs facts of the
device and its parents up to its USB device (``subsystem``, ``driver``, ``idVendor``,
``idProduct``, ``serial``, ``manufacturer``, ``product``, ``bInterfaceNumber``, PCI ``vendor`` and
``device``, video4linux ``name`` and ``index``), ``usb`` (a bool), ``usbPort`` and ``usbHub`` (the
USB port path of the device and of the hub it hangs off, for "on the same hub" constraints) and
``bcdDevice`` as a version. Names follow the API's rule (C identifiers of at most 32
bytes); string values are cut to the API's 64 bytes of UTF-8, on a character boundary
(``validation.cut``).
"""

from __future__ import annotations

import binascii
import os
import re
import stat
from dataclasses import dataclass, replace
from typing import Any

from smarter_device_manager.cdi import CdiDevice, NodeEdit
from smarter_device_manager.discovery import (
    KIND_DEVICE,
    KIND_DIRECTORY,
    KIND_NVIDIA,
    KIND_POOL,
    DeviceNode,
    Inventory,
    Member,
    Resource,
)
from smarter_device_manager.dra.validation import VALUE_MAX, cut
from smarter_device_manager.handover import numbered
from smarter_device_manager.identity import Identity, identities
from smarter_device_manager.sysfs import Level, Sysfs, SysfsError
from smarter_device_manager.udevmatch import lookup

LABEL_MAX = 63
# sysfs attributes published as strings when the device or a parent up to its USB device has them.
STRING_ATTRIBUTES = ("idVendor", "idProduct", "serial", "manufacturer", "product", "bInterfaceNumber",
                     "vendor", "device", "name")
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
_VERSION = re.compile(r"^[0-9]{4}$")

Attribute = dict[str, Any]  # {"string": "0403"}, {"int": 188}, {"bool": True}, {"version": "6.0.0"}


@dataclass(frozen=True, slots=True)
class DraDevice:
    """One device of this node's pool, as published and as prepared.

    ``member`` is set for pool members: their container paths and env depend on which other
    members the same claim got, so their CDI edits are written per claim.
    """

    name: str
    resource: Resource
    attributes: tuple[tuple[str, Attribute], ...]
    nodes: tuple[DeviceNode, ...]
    member: Member | None = None
    fingerprint: str = ""  # the serial and port of the device behind its node; "" if sysfs has none

    @property
    def shares(self) -> int:
        """How many claims may hold the device at once (the rule's nummaxdevices)."""
        return self.resource.count

    @property
    def where(self) -> str:
        return f"/dev/{self.member.path}" if self.member else self.resource.where


def label(text: str) -> str:
    """A DNS label (lowercase, digits, '-', at most 63) for ``text``, the same every time."""
    lower = text.lower()
    readable = lower.replace(".", "-").replace("_", "-")  # USB ports (1-1.2), resource names (net_tun)
    core = _NOT_LABEL.sub("-", readable).strip("-")
    if core == readable and 0 < len(core) <= LABEL_MAX:
        return core
    digest = f"{binascii.crc32(text.encode('utf-8', 'surrogateescape')):08x}"
    core = core[:LABEL_MAX - len(digest) - 1].strip("-")
    return f"{core}-{digest}" if core else f"d-{digest}"


def env_name(prefix: str, resource_name: str) -> str:
    """``smarter-devices``, ``usb-serial`` -> ``SMARTER_DEVICES_USB_SERIAL`` (as device-plugin mode)."""
    full = f"{prefix}/{resource_name}".upper()
    return "".join(c if c.isalnum() and c.isascii() else "_" for c in full)


def _string(value: str) -> Attribute:
    return {"string": cut(value, VALUE_MAX)}


def _own(sysfs: Sysfs, chain: tuple[Level, ...]) -> tuple[tuple[Level, ...], int | None]:
    """The levels describing the device itself (up to its USB device) and that device's position."""
    for number, level in enumerate(chain):
        if sysfs.attribute(level.path, "idVendor") is not None and \
                sysfs.attribute(level.path, "idProduct") is not None:
            return chain[:number + 1], number
    return chain, None


def sysfs_attributes(sysfs: Sysfs, chain: tuple[Level, ...]) -> dict[str, Attribute]:
    """The typed attributes sysfs gives one device (its chain, device first)."""
    found: dict[str, Attribute] = {}
    if not chain:
        return found
    if chain[0].subsystem:
        found["subsystem"] = _string(chain[0].subsystem)
    own, usb_at = _own(sysfs, chain)
    driver = lookup(sysfs, own, "driver")
    if driver:
        found["driver"] = _string(driver)
    for key in STRING_ATTRIBUTES:
        value = lookup(sysfs, own, key)
        if value is not None and value.strip():
            found[key] = _string(value.strip())
    index = sysfs.attribute(chain[0].path, "index")
    if index is not None and index.strip().isdigit():
        found["index"] = {"int": int(index.strip())}
    found["usb"] = {"bool": usb_at is not None}
    if usb_at is not None:
        usb = chain[usb_at]
        found["usbPort"] = _string(usb.path.rpartition("/")[2])
        for parent in chain[usb_at + 1:]:
            if sysfs.attribute(parent.path, "idVendor") is not None:
                found["usbHub"] = _string(parent.path.rpartition("/")[2])
                break
        bcd = (sysfs.attribute(usb.path, "bcdDevice") or "").strip()
        if _VERSION.match(bcd):
            found["bcdDevice"] = {"version": f"{int(bcd[:2])}.{int(bcd[2:])}.0"}
    return found


def _node_attributes(dev_dir: str, sysfs: Sysfs | None,
                     node: DeviceNode) -> tuple[dict[str, Attribute], str, Identity | None]:
    """Attributes of a device node: type, numbers and sysfs; then a problem or '', and the node's
    stable identities when sysfs knows it."""
    try:
        st = os.stat(os.path.join(dev_dir, node.source))
    except OSError as exc:
        return {}, f"/dev/{node.source}: {exc.strerror}", None
    block = stat.S_ISBLK(st.st_mode)
    found: dict[str, Attribute] = {
        "type": _string("block" if block else "char"),
        "major": {"int": os.major(st.st_rdev)},
        "minor": {"int": os.minor(st.st_rdev)},
        "usb": {"bool": False},  # until sysfs shows a USB device above it
    }
    if sysfs is None:
        return found, "", None
    try:
        chain = sysfs.chain(sysfs.device_dir(block, os.major(st.st_rdev), os.minor(st.st_rdev)))
    except SysfsError:
        return found, "", None  # a device sysfs does not know (a test's mknod, /dev/null copies)
    found.update(sysfs_attributes(sysfs, chain))
    return found, "", identities(sysfs, chain, node.source)


def fingerprint_now(dev_dir: str, sys_dir: str | None, node: DeviceNode) -> str:
    """The fingerprint of the device behind ``node`` as sysfs shows it now ("" if none): what
    prepare compares with the fingerprint the device was published with."""
    sysfs = Sysfs(sys_dir) if sys_dir is not None and os.path.isdir(sys_dir) else None
    found = _node_attributes(dev_dir, sysfs, node)[2]
    return found.located if found is not None and found.usb else ""


def dra_devices(inventory: Inventory, prefix: str, dev_dir: str,
                sys_dir: str | None) -> tuple[list[DraDevice], list[str]]:
    """Every device DRA mode publishes for ``inventory``, sorted by name, and the problems met."""
    sysfs = Sysfs(sys_dir) if sys_dir is not None and os.path.isdir(sys_dir) else None
    problems: list[str] = []
    devices: list[DraDevice] = []
    kernel_named: list[tuple[int, Identity]] = []  # (index in devices, identity): renamed at the end
    for resource in inventory.resources.values():
        if resource.count <= 0:
            problems.append(f"{prefix}/{resource.name} ({resource.where}) is not published in DRA mode: "
                            "its rule has nummaxdevices 0")
            continue
        common: dict[str, Attribute] = {
            "resource": _string(f"{prefix}/{resource.name}"),
            "rule": {"int": resource.rule.index},
            "kind": _string(resource.kind),
        }
        if resource.kind == KIND_POOL:
            for member in resource.members:
                attributes = dict(common, kind=_string("pool-member"), identity=_string(member.identity),
                                  path=_string(f"/dev/{member.path}"))
                fingerprint = ""
                if member.nodes:
                    found, problem, ident = _node_attributes(dev_dir, sysfs, member.nodes[0])
                    attributes.update(found)
                    if problem:
                        problems.append(problem)
                    fingerprint = ident.located if ident is not None and ident.usb else ""
                devices.append(_device(label(f"{resource.name}-{member.identity}"), resource,
                                       attributes, member.nodes, member, fingerprint))
            continue
        attributes = dict(common, identity=_string(resource.name))
        ident = None
        if resource.kind == KIND_NVIDIA:
            gpu = resource.gpu
            attributes["gpu"] = {"int": int(gpu)} if gpu.isdigit() else _string(gpu)
            attributes["path"] = _string(resource.path)
        else:
            attributes["path"] = _string(f"/dev/{resource.path}")
            if resource.kind != KIND_DIRECTORY and resource.nodes:
                found, problem, ident = _node_attributes(dev_dir, sysfs, resource.nodes[0])
                attributes.update(found)
                if problem:
                    problems.append(problem)
            elif resource.kind == KIND_DIRECTORY:
                attributes["type"] = _string("directory")
                attributes["nodes"] = {"int": len(resource.nodes)}
        if ident is not None and ident.usb:
            fingerprint = ident.located
            if resource.kind == KIND_DEVICE and not resource.rule.name:
                # Named after the kernel's name: named after the device instead.
                attributes["identity"] = _string(ident.base)
                kernel_named.append((len(devices), ident))
        else:
            fingerprint = ""
        devices.append(_device(label(resource.name), resource, attributes, resource.nodes,
                               fingerprint=fingerprint))
    _name_by_identity(devices, kernel_named)
    return _unique(devices, problems), problems


def _name_by_identity(devices: list[DraDevice], kernel_named: list[tuple[int, Identity]]) -> None:
    """Devices whose resource is named after the kernel's name: ``<name without its number>-<serial>``,
    or with serial and port for devices of one kind that share a serial (in place)."""
    def stem(device: DraDevice) -> str:
        return device.resource.name.rstrip("0123456789") or device.resource.name

    proposed = {at: label(f"{stem(devices[at])}-{ident.base}") for at, ident in kernel_named}
    count: dict[str, int] = {}
    for name in proposed.values():
        count[name] = count.get(name, 0) + 1
    for at, ident in kernel_named:
        name = proposed[at] if count[proposed[at]] == 1 else label(f"{stem(devices[at])}-{ident.located}")
        devices[at] = replace(devices[at], name=name)


def keep_names(devices: list[DraDevice], bound: dict[str, str]) -> list[DraDevice]:
    """A name published for one device is never published for another while this daemon runs.

    ``bound`` (name -> fingerprint, owned by the daemon) remembers who had each name. Twins
    (adapters sharing a serial) are named from each scan: when the one named ``...-0001`` is
    unplugged the other is proposed that name, and a claim allocated against the old slice would
    be prepared with the wrong adapter. A device whose name belongs to another fingerprint is
    published as ``<name>-<its fingerprint>`` instead; the owner coming back gets its name back.
    """
    result: list[DraDevice] = []
    for device in devices:
        if device.fingerprint and bound.setdefault(device.name, device.fingerprint) != device.fingerprint:
            device = replace(device, name=label(f"{device.name}-{device.fingerprint}"))
            bound.setdefault(device.name, device.fingerprint)
        result.append(device)
    return sorted(result, key=lambda d: d.name)


def _device(name: str, resource: Resource, attributes: dict[str, Attribute],
            nodes: tuple[DeviceNode, ...], member: Member | None = None, fingerprint: str = "") -> DraDevice:
    return DraDevice(name, resource, tuple(sorted(attributes.items())), nodes, member, fingerprint)


def _unique(devices: list[DraDevice], problems: list[str]) -> list[DraDevice]:
    """Every device under a name of its own: devices whose names collide are renamed with a crc of
    their node path, and again (with a counter in the crc) until the name is free.

    One pass of renaming is not enough: serials ``abc`` and ``ABC`` both give ``…-abc``, and the
    renamed ``…-abc-<crc>`` can be exactly what serial ``abc-<crc>`` gives on its own; the API
    server then refuses the slice and the CDI spec has a device "defined twice". The result is
    the same for the same devices, whatever their order.
    """
    by_name: dict[str, list[DraDevice]] = {}
    for device in devices:
        by_name.setdefault(device.name, []).append(device)
    taken = set(by_name)
    result = [same[0] for same in by_name.values() if len(same) == 1]
    for name, same in sorted(by_name.items()):
        if len(same) == 1:
            continue
        for device in sorted(same, key=lambda d: d.where):
            salt = device.where
            renamed = label(f"{name}-{binascii.crc32(salt.encode()):08x}")
            attempt = 0
            while renamed in taken:
                attempt += 1
                renamed = label(f"{name}-{binascii.crc32(f'{salt}#{attempt}'.encode()):08x}")
            taken.add(renamed)
            problems.append(f"{device.where}: DRA device name {name} is taken by "
                            f"{len(same) - 1} other device(s); published as {renamed}")
            result.append(replace(device, name=renamed))
    return sorted(result, key=lambda d: d.name)


@dataclass(frozen=True)
class Paths:
    """Where device nodes are for this daemon (``dev_dir``) and for the node's runtime (``host_dev_dir``)."""

    dev_dir: str
    host_dev_dir: str
    sys_dir: str | None = None  # read again at prepare: is the device behind a node still the one?


def _node_edit(paths: Paths, node: DeviceNode, container_path: str) -> NodeEdit:
    return NodeEdit(container_path, f"{paths.host_dev_dir.rstrip('/')}/{node.source}",
                    os.path.join(paths.dev_dir, node.source))


def _container_path(device: DraDevice, node: DeviceNode) -> str:
    resource = device.resource
    rule = resource.rule
    if rule.container_path and resource.kind != KIND_NVIDIA:
        return rule.container_path + node.path[len(resource.path):]
    return f"/dev/{node.path}"


def cdi_device(device: DraDevice, paths: Paths, prefix: str, nodes: tuple[DeviceNode, ...] | None = None,
               cdi_name: str | None = None) -> CdiDevice:
    """The CDI edits of a device whose edits do not depend on the claim: its nodes where
    device-plugin mode would put them, the rule's env and mounts, ``<PREFIX>_<NAME>``.

    ``nodes`` overrides the nodes (a directory's, listed again at prepare time).
    """
    resource = device.resource
    chosen = nodes if nodes is not None else device.nodes
    placed = [(node, _container_path(device, node)) for node in chosen]
    env = dict(resource.rule.env)
    if resource.kind == KIND_NVIDIA:
        env["NVIDIA_VISIBLE_DEVICES"] = resource.gpu
    else:
        env[env_name(prefix, resource.name)] = ",".join(path for _, path in placed)
    return CdiDevice(
        cdi_name or device.name,
        tuple(_node_edit(paths, node, path) for node, path in placed),
        tuple(sorted(env.items())),
        tuple((m.host_path, m.container_path) for m in resource.rule.mounts),
    )


def claim_cdi_devices(members: list[DraDevice], paths: Paths, prefix: str,
                      claim_uid: str) -> dict[str, CdiDevice]:
    """The claim-specific CDI devices of the pool members one claim got, by DRA device name.

    As in device-plugin mode, the k-th member of a pool handed to one claim appears at the
    rule's container path numbered k (``/dev/gps0``, ``/dev/gps1``), and every container sees
    ``<PREFIX>_<NAME>`` (the container paths) and ``<PREFIX>_<NAME>_IDS`` (the identities) of
    all the members of that pool in the claim. Each CDI device carries the same env, so a
    container that gets several of them sees one consistent value.
    """
    by_pool: dict[str, list[DraDevice]] = {}
    for device in members:
        by_pool.setdefault(device.resource.name, []).append(device)
    result: dict[str, CdiDevice] = {}
    for pool, group in by_pool.items():
        rule = group[0].resource.rule
        placed: list[list[tuple[DeviceNode, str]]] = []
        for number, device in enumerate(group):
            placed.append([(node, numbered(rule.container_path, number, len(device.nodes), node))
                           for node in device.nodes])
        env = dict(rule.env)
        name = env_name(prefix, pool)
        env[name] = ",".join(path for nodes in placed for _, path in nodes)
        env[name + "_IDS"] = ",".join(d.member.identity for d in group if d.member is not None)
        for device, nodes in zip(group, placed, strict=True):
            result[device.name] = CdiDevice(
                f"{claim_uid}-{device.name}",
                tuple(_node_edit(paths, node, path) for node, path in nodes),
                tuple(sorted(env.items())),
                tuple((m.host_path, m.container_path) for m in rule.mounts),
            )
    return result



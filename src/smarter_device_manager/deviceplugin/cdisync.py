"""Keeps the node's CDI spec equal to what the daemon serves (``--cdi on``).

The CDI spec is how a runtime learns what a name like
``smarter-devices.io/device=gps`` means; it reads it when it creates a
container. So the spec is rewritten after every rescan *before* reconcile
tells the kubelet of a change (an Allocate can never name a device the spec
lacks), and it is checked again whenever the file is touched behind our back.

What goes in (one kind, one file, ``<kind with / as ->.json``):

* one device per resource, named like the resource (``gps``, ``net_tun``),
  with what ``handover`` gives a container: nodes at their container paths,
  env, read-only mounts;
* for a pool, one device per member (``usb-serial:A50285BI``), and one per set
  of members handed to one container (``usb-serial:0001:A50285BI``), written
  at Allocate time, because a pool numbers its container paths per container;
* devices that were served before but no longer are (a rule removed by a
  reload) stay while their nodes still exist: a container given one keeps the
  CDI name in the kubelet's checkpoint and needs it again when it restarts.

Nothing is removed on a clean stop: containers that were given our devices are
restarted by the kubelet with the same CDI names while the daemon is being
upgraded or restarted, and a runtime refuses to create a container whose CDI
device it cannot resolve. ``smarter-device-manager cdi --remove`` deletes the
file for good (on uninstall).

A CDI directory that is missing or not writable is an error the daemon reports
(log, ``/readyz``, metrics) while it keeps serving without CDI: Allocate then
answers with DeviceSpecs alone, which every runtime understands. It never
creates the directory: one the runtime does not read (a path not mounted from
the host) would make every CDI name unresolvable.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import Any

from smarter_device_manager.cdi import (
    CdiDevice,
    CdiError,
    NodeEdit,
    assemble,
    device_entry,
    device_name,
    qualified,
    read_spec,
    remove_spec,
    spec_file_name,
    write_spec,
)
from smarter_device_manager.discovery import KIND_POOL, Inventory, Member, Resource
from smarter_device_manager.handover import handover

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CdiSettings:
    cdi_dir: str
    kind: str
    prefix: str
    dev_dir: str
    host_dev_dir: str


def resource_device(resource: Resource) -> str:
    """The CDI device name of a whole (non-pool) resource: the resource name itself."""
    return device_name(resource.name)


def pool_device(resource: Resource, members: list[Member]) -> str:
    """The CDI device of pool members handed over together, in that order.

    ``:`` cannot occur in a resource name or an identity, so these names never
    collide with a resource's."""
    return device_name(":".join([resource.name, *(m.identity for m in members)]))


class CdiKeeper:
    """Owns one spec file; every write goes through here, so the file is what we last wrote."""

    def __init__(self, settings: CdiSettings, *, daemon: bool = True) -> None:
        self.settings = settings
        # The daemon logs when CDI stops and starts working; the `cdi` command reports
        # ``error`` itself and has no Allocate to speak of.
        self.daemon = daemon
        self.file_name = spec_file_name(settings.kind)
        self.path = os.path.join(settings.cdi_dir, self.file_name)
        self.error: str | None = None  # why CDI is not usable right now
        self.writes = 0
        self.problems: tuple[str, ...] = ()
        self._devices: dict[str, CdiDevice] = {}  # what the file holds, by name
        self._combos: dict[str, tuple[str, tuple[str, ...]]] = {}  # name -> (resource, identities)
        self._inventory: Inventory | None = None
        self._spec: dict[str, Any] | None = None
        self._entries: dict[str, dict[str, Any]] = {}  # checked spec entries, by device name
        self._qualified: dict[str, str] = {}

    @property
    def usable(self) -> bool:
        return self.error is None and bool(self._devices)

    # --- the inventory -> the file -----------------------------------------------------
    def wanted(self, inventory: Inventory) -> tuple[dict[str, CdiDevice], list[str]]:
        """The devices the file must hold for ``inventory`` (plus what running containers may
        still need), and the devices left out, with why."""
        problems: list[str] = []
        wanted: dict[str, CdiDevice] = {}
        self._entries = {}
        for resource in inventory.resources.values():
            if resource.kind == KIND_POOL:
                for member in resource.members:
                    self._add(wanted, self._device(resource, [member]), problems)
            else:
                self._add(wanted, self._device(resource, None), problems)
        for resource_name, identities in list(self._combos.values()):
            found = self._members(inventory, resource_name, identities)
            if found is not None:
                self._add(wanted, self._device(*found), problems)
        for name, old in self._devices.items():
            if name not in wanted and _nodes_exist(old):
                self._add(wanted, old, problems)  # a container given it may restart and need it
        return wanted, problems

    def spec(self, wanted: dict[str, CdiDevice]) -> dict[str, Any]:
        """The spec of devices that ``wanted`` (or ``_add``) already checked."""
        return assemble(self.settings.kind, {n: self._entries[n] for n in wanted})

    def sync(self, inventory: Inventory) -> None:
        """Make the file describe ``inventory``."""
        self._inventory = inventory
        wanted, problems = self.wanted(inventory)
        self._combos = {n: c for n, c in self._combos.items() if n in wanted}
        self.problems = tuple(problems)
        self._write(wanted)

    def device_names(self) -> list[str]:
        return list(self._devices)

    def names(self, resource: Resource, members: list[Member] | None) -> list[str]:
        """The qualified CDI names for an Allocate answer; writes a pool's new set first.

        Raises CdiError when the spec cannot hold them (the caller answers without CDI)."""
        if self.error is not None:
            raise CdiError(self.error)
        if resource.kind != KIND_POOL:
            name = resource_device(resource)
        else:
            given = members or []
            name = pool_device(resource, given)
            if name not in self._devices:
                self._combos[name] = (resource.name, tuple(m.identity for m in given))
                devices = dict(self._devices)
                problems: list[str] = []
                self._add(devices, self._device(resource, given), problems)
                if problems:
                    raise CdiError(problems[0])
                self._write(devices)
                if self.error is not None:
                    raise CdiError(self.error)
        if name not in self._devices:
            raise CdiError(f"{name} is not in the CDI spec ({'; '.join(self.problems) or 'no nodes'})")
        full = self._qualified.get(name)
        if full is None:
            full = self._qualified[name] = qualified(self.settings.kind, name)
        return [full]

    def repair(self) -> None:
        """The file changed behind our back (or the directory came back): write it again."""
        if self._inventory is not None and (self.error is not None or self._spec is None):
            self.sync(self._inventory)
            return
        if self._spec is not None and read_spec(self.settings.cdi_dir, self.file_name) != self._spec:
            log.warning("CDI spec %s was changed or removed by someone else; writing it again", self.path)
            self._spec = None
            self._write(dict(self._devices))

    def remove(self) -> bool:
        """Delete the file; False when there was none."""
        return remove_spec(self.settings.cdi_dir, self.file_name)

    # --- helpers ----------------------------------------------------------------------
    def _device(self, resource: Resource, members: list[Member] | None) -> CdiDevice:
        s = self.settings
        name = pool_device(resource, members) if members is not None else resource_device(resource)
        given = handover(f"{s.prefix}/{resource.name}", resource, None, members)
        nodes = tuple(NodeEdit(target, f"{s.host_dev_dir.rstrip('/')}/{node.source}",
                               os.path.join(s.dev_dir, node.source)) for node, target in given.nodes)
        mounts = tuple((m.host_path, m.container_path) for m in given.mounts)
        return CdiDevice(name, nodes, given.env, mounts)

    @staticmethod
    def _members(inventory: Inventory, resource_name: str,
                 identities: tuple[str, ...]) -> tuple[Resource, list[Member]] | None:
        resource = inventory.resources.get(resource_name)
        if resource is None or resource.kind != KIND_POOL:
            return None
        by_identity = {m.identity: m for m in resource.members}
        if not all(i in by_identity for i in identities):
            return None
        return resource, [by_identity[i] for i in identities]

    def _add(self, wanted: dict[str, CdiDevice], device: CdiDevice, problems: list[str]) -> None:
        """Check ``device`` alone: one bad node spoils only its own device, not the file."""
        try:
            self._entries[device.name] = device_entry(device)
        except CdiError as exc:
            if all(os.path.lexists(n.local_path) for n in device.nodes):
                problems.append(f"not in the CDI spec: {exc}")
            # else: unplugged since the walk saw it; the rescan its event brings settles it
            return
        wanted[device.name] = device

    def _write(self, devices: dict[str, CdiDevice]) -> None:
        s = self.settings
        try:
            if not devices:
                remove_spec(s.cdi_dir, self.file_name)
                spec = None
            else:
                spec = self.spec(devices)
                # write_spec compares with the file itself: a burst that changes nothing writes nothing.
                if write_spec(s.cdi_dir, self.file_name, spec):
                    self.writes += 1
        except OSError as exc:
            error = f"cannot write the CDI spec in {s.cdi_dir}: {exc.strerror or exc}"
            if not os.path.exists(s.cdi_dir):
                error = (f"CDI directory {s.cdi_dir} does not exist (mount the host's CDI directory "
                         "there, or run with --cdi off)")
            if error != self.error and self.daemon:
                log.error("%s; answering Allocate without CDI until it works", error)
            self.error = error
            return
        except CdiError as exc:  # cannot happen for devices that passed _add; say so if it does
            self.error = str(exc)
            if self.daemon:
                log.error("CDI spec not written: %s", exc)
            return
        if self.error is not None and self.daemon:
            log.info("CDI spec %s written; CDI is in use again", self.path)
        self.error = None
        self._devices, self._spec = devices, spec


def _nodes_exist(device: CdiDevice) -> bool:
    for node in device.nodes:
        try:
            mode = os.stat(node.local_path).st_mode
        except OSError:
            return False
        if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            return False
    return bool(device.nodes)

"""Pinning: a pool member's ID stays on its physical device for as long as the kubelet may count it.

Discovery names pool members from what each scan sees: a device whose serial no other member has
gets its serial (``0001``), devices that share one get serial and port (``0001-usb-1-1.3``). That
alone would rename a device when a twin arrives or leaves (``0001`` -> ``0001-usb-1-1.3``) while a
pod may hold its old ID: the kubelet would then see a new, free ID for a device in use and hand it
to a second pod; and the twin left behind would take over a bare ``0001`` that the kubelet counts
as held by the pod of the one unplugged. So the daemon pins IDs across rescans:

* a device keeps the ID it had (the same serial and port, or the same serial alone for a serial
  never seen on two devices at once: such an adapter may move to another port);
* an ID still *held* (its device present at the last scan, or unplugged within the removal grace,
  advertised Unhealthy) never goes to another device: a newcomer whose proposed ID is held gets
  its serial-and-port ID instead.

Pure functions of (this scan, what was held, serials seen shared), so the reconcile loop owns the
state and tests can drive it directly. Known limit (docs/decisions.md): the state lives in the
process; a daemon restart while two adapters share a serial derives IDs afresh from the devices.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from smarter_device_manager.discovery import Member
from smarter_device_manager.naming import sanitize


def note_shared(members: Iterable[Member], shared: set[str]) -> None:
    """Add to ``shared`` the serials (``own`` identities) that two present devices have at once."""
    seen: dict[str, str] = {}
    for member in members:
        where = seen.setdefault(member.own, member.where)
        if where != member.where:
            shared.add(member.own)


def _owns(new: Member, held: Member, shared: set[str]) -> bool:
    """Is ``new`` the physical device that held ``held``'s ID?"""
    if new.where == held.where:
        return True
    # Held under its bare serial, and that serial has never been on two devices at once: the
    # serial names one adapter, which may have been moved to another port.
    return held.identity == held.own == new.own and new.own not in shared


def pin(members: tuple[Member, ...], held: Iterable[Member], shared: set[str]) -> tuple[Member, ...]:
    """``members`` (one scan's pool) with the IDs pinned: see the module docstring.

    ``held``: the members the kubelet may still count (present at the last scan, or unplugged
    within the removal grace). ``shared`` is updated with this scan's shared serials first.
    """
    note_shared(members, shared)
    holders = {m.identity: m for m in held}
    taken: dict[str, Member] = {}
    # Devices that held an ID keep it: exact serial-and-port matches first, then by serial.
    for exact in (True, False):
        for member in rest_of(members, taken):
            for holder in holders.values():
                if holder.identity not in taken and (
                        holder.where == member.where if exact else _owns(member, holder, shared)):
                    taken[holder.identity] = member
                    break
    # Newcomers: the proposed ID unless another device holds it, else serial and port.
    for member in rest_of(members, taken):
        for candidate in (member.identity, member.where, f"{member.where}-{sanitize(member.path)}"):
            owner = holders.get(candidate)
            if candidate not in taken and (owner is None or _owns(member, owner, shared)):
                taken[candidate] = member
                break
        else:  # not reachable with real devices (node paths are unique); never drop a device
            taken[f"{member.where}-{sanitize(member.path)}-{len(taken)}"] = member
    pinned = [m if m.identity == identity else replace(m, identity=identity) for identity, m in taken.items()]
    return tuple(sorted(pinned, key=lambda m: m.identity))


def rest_of(members: tuple[Member, ...], taken: dict[str, Member]) -> list[Member]:
    """The members that have no ID yet."""
    placed = {id(m) for m in taken.values()}
    return [m for m in members if id(m) not in placed]

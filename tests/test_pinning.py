"""Pinning pool IDs to physical devices across rescans (src/smarter_device_manager/pinning.py).

The invariants, checked over every order of plugging and unplugging three adapters that share the
serial "0001": a device that stays plugged never changes its ID (a pod holding the old one would
otherwise share the device with the next pod given the new one); no device is ever behind two IDs
the kubelet counts (present, or unplugged within the removal grace); and a held ID goes to
another port only as a bare serial never seen on two devices at once (the adapter was moved:
the same adapter as far as anything can tell), never once the serial is known to be shared.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from smarter_device_manager.discovery import Member
from smarter_device_manager.pinning import pin


def adapter(port: str, node: str, serial: str = "0001") -> Member:
    """A member as discovery proposes it when it is the only one with its serial."""
    return Member(serial, node, (), serial, f"{serial}-usb-{port}")


def proposed(present: list[Member]) -> tuple[Member, ...]:
    """What discovery proposes for a scan: shared serials get serial and port."""
    count = {m.own: sum(1 for o in present if o.own == m.own) for m in present}
    return tuple(Member(m.own if count[m.own] == 1 else m.where, m.path, (), m.base, m.located)
                 for m in present)


A, B, C = adapter("1-1.3", "ttyUSB0"), adapter("1-1.4", "ttyUSB1"), adapter("1-1.5", "ttyUSB2")


def test_a_twin_arriving_does_not_rename_the_first_and_cannot_take_its_id() -> None:
    shared: set[str] = set()
    first = pin(proposed([A]), (), shared)
    assert [(m.identity, m.where) for m in first] == [("0001", A.where)]
    both = pin(proposed([A, B]), first, shared)
    assert {m.where: m.identity for m in both} == {A.where: "0001", B.where: B.where}
    # A unplugged: its ID stays held (Unhealthy, within the grace); B keeps its own, never "0001".
    held = both
    alone = pin(proposed([B]), held, shared)
    assert [(m.identity, m.where) for m in alone] == [(B.where, B.where)]
    # A third adapter with the same serial cannot take the held "0001" either.
    third = pin(proposed([B, C]), (*alone, *[m for m in both if m.where == A.where]), shared)
    assert {m.where: m.identity for m in third} == {B.where: B.where, C.where: C.where}
    # A back on its port within the grace: its ID again.
    back = pin(proposed([A, B]), (*alone, *[m for m in both if m.where == A.where]), shared)
    assert {m.where: m.identity for m in back} == {A.where: "0001", B.where: B.where}


def test_a_unique_serial_may_move_to_another_port() -> None:
    shared: set[str] = set()
    ftdi = adapter("1-1.3", "ttyUSB0", serial="A50285BI")
    moved = adapter("1-1.4", "ttyUSB3", serial="A50285BI")
    first = pin(proposed([ftdi]), (), shared)
    assert [m.identity for m in pin(proposed([moved]), first, shared)] == ["A50285BI"]


def test_no_id_ever_moves_to_another_device_in_any_order() -> None:
    """Every sequence of plug/unplug steps of three adapters sharing one serial, with a removal
    grace of two scans: a held ID keeps its device, a present device keeps its ID."""
    devices = (A, B, C)
    steps = [(d, plugged) for d in devices for plugged in (True, False)]
    checked = 0
    for order in itertools.permutations(steps, 5):
        shared: set[str] = set()
        present: list[Member] = []
        pinned: tuple[Member, ...] = ()
        gone: dict[str, tuple[Member, int]] = {}  # ID -> (member, scan it went at)
        seen_shared: set[str] = set()
        for scan, (device, plugged) in enumerate(order):
            if plugged and device not in present:
                present.append(device)
            elif not plugged and device in present:
                present.remove(device)
            else:
                continue
            held = (*pinned, *[m for m, since in gone.values() if scan - since < 2])
            before = {m.where: m.identity for m in pinned}
            owner = {m.identity: m.where for m in held}
            now = pin(proposed(present), held, shared)
            assert sorted(m.where for m in now) == sorted(d.where for d in present)
            assert len({m.identity for m in now}) == len(now)
            for member in now:
                if member.where in before:
                    assert member.identity == before[member.where], (order, scan)
                if member.identity in owner and owner[member.identity] != member.where:
                    assert member.identity == "0001" and "0001" not in seen_shared, (order, scan)
            # What the reconcile loop does: members no longer present are gone, within the grace.
            present_ids = {m.identity for m in now}
            for member in pinned:
                if member.identity not in present_ids:
                    gone.setdefault(member.identity, (member, scan))
            for identity, (_, since) in list(gone.items()):
                if identity in present_ids or scan - since >= 2:
                    del gone[identity]
            counted = [(m.identity, m.where) for m in now] + [(i, m.where) for i, (m, _) in gone.items()]
            assert len({where for _, where in counted}) == len(counted), (order, scan, counted)
            assert len({identity for identity, _ in counted}) == len(counted), (order, scan, counted)
            seen_shared = set(shared)
            pinned = now
            checked += 1
    assert checked > 1000


def test_pins_on_disk_keep_the_removal_grace_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deviceplugin/pinstore.py: a member unplugged 100 s before the daemon stopped has 200 s of
    a 300 s grace left when it starts again 10 s later (minus those 10 s: the grace is wall time
    across the restart); a member present when it stopped is gone from the start, full grace."""
    from smarter_device_manager.deviceplugin.pinstore import Pins, PinStore

    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])  # the wall clock pinstore reads
    a = Member("0001", "ttyUSB0", (), base="0001", located="0001-usb-1-1.3")
    b = Member("0001-usb-1-1.4", "ttyUSB1", (), base="0001", located="0001-usb-1-1.4")
    before = PinStore(str(tmp_path), 300)
    before.load(5000.0)
    before.record({"usb-serial": Pins((a,), {b.identity: (b, 4900.0)}, {"0001"})}, 5000.0)
    clock[0] += 10  # the restart takes 10 s; the new process's monotonic clock starts near 0
    after = PinStore(str(tmp_path), 300)
    after.load(20.0)
    saved = after.saved("usb-serial", 20.0)
    assert saved.shared == {"0001"}
    assert {i: (m.identity, m.own, m.where) for i, (m, _) in saved.gone.items()} == {
        "0001": ("0001", "0001", "0001-usb-1-1.3"),
        "0001-usb-1-1.4": ("0001-usb-1-1.4", "0001", "0001-usb-1-1.4")}
    assert saved.gone["0001"][1] == 20.0  # present at the stop: gone from the start
    assert saved.gone["0001-usb-1-1.4"][1] == pytest.approx(20.0 - 110.0)
    assert set(after.saved("usb-serial", 20.0 + 189).gone) == {"0001", "0001-usb-1-1.4"}
    assert set(after.saved("usb-serial", 20.0 + 191).gone) == {"0001"}
    # A leftover (the pool not served yet) is kept on disk while any of it is within the grace.
    after.record({}, 20.0 + 191)
    text = (tmp_path / "pins.json").read_text()
    assert '"0001-usb-1-1.3"' in text and '"0001-usb-1-1.4"' not in text
    after.record({}, 20.0 + 301)
    assert '"usb-serial"' not in (tmp_path / "pins.json").read_text()

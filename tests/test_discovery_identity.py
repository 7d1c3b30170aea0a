"""Discovery with sysfs: attribute rules, names, pools, nvidia-gpu, and every way sysfs can be
wrong. Fake trees come from tests/fakesysfs.py (a stand-in for the kernel's /sys); one test
uses this machine's real /sys. Device nodes are real (mknod, root only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import mkdev, needs_root
from fakesysfs import FakeDevice, FakeSysfs

from smarter_device_manager.config import parse_config
from smarter_device_manager.discovery import KIND_NVIDIA, KIND_POOL, Inventory, discover

pytestmark = needs_root


class Tree:
    def __init__(self, tmp_path: Path) -> None:
        self.dev = tmp_path / "dev"
        self.dev.mkdir()
        self.sys = tmp_path / "sys"
        self.fake = FakeSysfs(str(self.sys))

    def plug(self, device: FakeDevice) -> FakeDevice:
        mkdev(self.dev / device.node, major=device.major, minor=device.minor)
        return device

    def scan(self, text: str, **kwargs: bool) -> Inventory:
        return discover(str(self.dev), parse_config(text, "c"), "smarter-devices", str(self.sys), **kwargs)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def test_attributes_select_devices_and_the_first_rule_wins(tree: Tree) -> None:
    tree.plug(tree.fake.ftdi())
    tree.plug(tree.fake.cp2102())
    found = tree.scan('- {name: ftdi, attributes: {idVendor: "0403"}, nummaxdevices: 1}\n'
                      "- {devicematch: ^ttyUSB, nummaxdevices: 2}\n")
    assert sorted(found.resources) == ["ftdi", "ttyUSB1"]
    assert found.resources["ftdi"].nodes[0].source == "ttyUSB0"
    assert any("/dev/ttyUSB0 matches rule 1 (idVendor=0403) and also rule 2 (^ttyUSB); rule 1 wins" in p
               for p in found.problems)


def test_attribute_only_rules_skip_symlinks_path_rules_follow_them(tree: Tree) -> None:
    tree.plug(tree.fake.ftdi())
    (tree.dev / "serial" / "by-id").mkdir(parents=True)
    (tree.dev / "serial" / "by-id" / "usb-FTDI").symlink_to("../../ttyUSB0")
    found = tree.scan('- {name: "f-{serial}", attributes: {idVendor: "0403"}, nummaxdevices: 1}\n')
    assert list(found.resources) == ["f-A50285BI"]  # the node, not its symlink too
    found = tree.scan('- {name: "f-{serial}", devicematch: ^serial/by-id/, attributes: {idVendor: "0403"}, '
                      "nummaxdevices: 1}\n")
    assert list(found.resources) == ["f-A50285BI"]
    assert found.resources["f-A50285BI"].nodes[0].path == "serial/by-id/usb-FTDI"


def test_pool_members_sharing_a_serial_are_told_apart_by_their_port(tree: Tree) -> None:
    """Not by their node names (the second one found used to be '0001-ttyUSB3', and the first
    bare '0001': which one got which depended on the others present)."""
    tree.plug(tree.fake.cp2102(port="1-1.4", node="ttyUSB1", serial="0001"))
    tree.plug(tree.fake.cp2102(port="1-1.5", node="ttyUSB3", serial="0001"))
    tree.plug(tree.fake.ch340(port="1-1.2", node="ttyUSB2"))
    tree.plug(tree.fake.ftdi(port="1-1.3", node="ttyUSB0"))
    found = tree.scan("- {name: serials, pool: true, devicematch: ^ttyUSB, nummaxdevices: 1}\n")
    pool = found.resources["serials"]
    assert pool.kind == KIND_POOL
    assert [(m.identity, m.path, m.own, m.where) for m in pool.members] == [
        ("0001-usb-1-1.4", "ttyUSB1", "0001", "0001-usb-1-1.4"),
        ("0001-usb-1-1.5", "ttyUSB3", "0001", "0001-usb-1-1.5"),
        ("A50285BI", "ttyUSB0", "A50285BI", "A50285BI-usb-1-1.3"),
        ("usb-1-1.2", "ttyUSB2", "usb-1-1.2", "usb-1-1.2")]
    assert not found.problems


def test_pool_of_a_single_interface_multiport_adapter(tree: Tree) -> None:
    """MCS7840: four ports on one interface; each port its own ID from its port_number (they all
    used to get the adapter's identity, and then node-name IDs)."""
    for device in tree.fake.multiport(port="1-1.5"):
        tree.plug(device)
    found = tree.scan("- {name: serials, pool: true, devicematch: ^ttyUSB, nummaxdevices: 1}\n")
    assert [(m.identity, m.path) for m in found.resources["serials"].members] == [
        ("usb-1-1.5", "ttyUSB4"), ("usb-1-1.5-port1", "ttyUSB5"), ("usb-1-1.5-port2", "ttyUSB6"),
        ("usb-1-1.5-port3", "ttyUSB7")]
    assert not found.problems


def test_devices_sysfs_cannot_tell_apart_fall_back_to_node_names_and_are_told(tree: Tree) -> None:
    """A multiport adapter whose ports have no port_number (an old kernel): one identity for all."""
    ports = tree.fake.multiport(port="1-1.5", nodes=("ttyUSB4", "ttyUSB5"))
    for device in ports:
        os.unlink(os.path.join(tree.fake.root, device.path.rsplit("/tty/", 1)[0], "port_number"))
        tree.plug(device)
    found = tree.scan("- {name: serials, pool: true, devicematch: ^ttyUSB, nummaxdevices: 1}\n")
    assert [(m.identity, m.path) for m in found.resources["serials"].members] == [
        ("usb-1-1.5", "ttyUSB4"), ("usb-1-1.5-ttyUSB5", "ttyUSB5")]
    assert any("/dev/ttyUSB5 has the same identity as /dev/ttyUSB4 (usb-1-1.5)" in p for p in found.problems)


def test_sysfs_trouble_skips_only_that_device(tree: Tree, tmp_path: Path) -> None:
    tree.plug(tree.fake.ftdi())
    mkdev(tree.dev / "ttyUSB5", major=188, minor=5)
    tree.fake.loop_link(188, 5)
    mkdev(tree.dev / "ttyUSB6", major=188, minor=6)
    tree.fake.dangling_link(188, 6)
    mkdev(tree.dev / "ttyUSB7", major=188, minor=7)
    outside = tmp_path / "outside"
    outside.mkdir()
    tree.fake.escaping_link(188, 7, str(outside))
    mkdev(tree.dev / "ttyUSB8", major=188, minor=8)  # no dev/char link at all
    found = tree.scan('- {name: "s-{serial}", subsystem: tty, nummaxdevices: 1}\n')
    assert list(found.resources) == ["s-A50285BI"]
    text = "\n".join(found.problems)
    for node in ("ttyUSB5", "ttyUSB6", "ttyUSB7", "ttyUSB8"):
        assert f"/dev/{node}: " in text


def test_a_device_unplugged_between_the_walk_and_its_sysfs_read(tree: Tree) -> None:
    device = tree.plug(tree.fake.ftdi())
    tree.fake.unplug(device)  # the node is still in /dev, its sysfs entry is gone
    found = tree.scan('- {name: gps, attributes: {idVendor: "0403"}, nummaxdevices: 1}\n')
    assert found.resources == {}
    assert any(p.startswith("/dev/ttyUSB0: ") for p in found.problems)


def test_missing_sys_dir_leaves_plain_rules_working(tree: Tree, tmp_path: Path) -> None:
    mkdev(tree.dev / "ttyUSB0", major=188, minor=0)
    config = parse_config("- {devicematch: ^ttyUSB0$, nummaxdevices: 1}\n"
                          '- {name: x, attributes: {idVendor: "0403"}, nummaxdevices: 1}\n', "c")
    found = discover(str(tree.dev), config, "smarter-devices", str(tmp_path / "no-sys"))
    assert list(found.resources) == ["ttyUSB0"]


def test_nvidia_gpu_lists_gpus_and_passes_device_specs(tree: Tree) -> None:
    tree.fake.jetson_gpus(("gpu.0", "gpu.1"))
    mkdev(tree.dev / "nvidiactl", major=195, minor=255)
    mkdev(tree.dev / "nvidia-modeset", major=195, minor=254)
    found = tree.scan("- {devicematch: nvidia-gpu, nummaxdevices: 2}\n", pass_device_specs=True)
    assert sorted(found.resources) == ["nvidia-gpu0", "nvidia-gpu1"]
    gpu = found.resources["nvidia-gpu1"]
    assert (gpu.kind, gpu.gpu, gpu.count, gpu.path) == (KIND_NVIDIA, "1", 2, "gpu.1")
    assert [n.path for n in gpu.nodes] == ["nvidiactl", "nvidia-modeset"]
    plain = tree.scan("- {devicematch: nvidia-gpu, nummaxdevices: 2}\n")
    assert plain.resources["nvidia-gpu0"].nodes == ()


def test_this_machines_real_sysfs(tmp_path: Path) -> None:
    """/dev/null is 1:3 on every Linux: its sysfs device is devices/virtual/mem/null."""
    if not os.path.exists("/sys/dev/char/1:3"):
        pytest.skip("this machine's /sys has no dev/char links")
    dev = tmp_path / "dev"
    mkdev(dev / "null", major=1, minor=3)
    mkdev(dev / "zero", major=1, minor=5)
    config = parse_config("- {name: 'mem-{dev}', subsystem: mem, devicematch: ^null$, "
                          "nummaxdevices: 1}\n", "c")
    found = discover(str(dev), config, "smarter-devices", "/sys")
    assert list(found.resources) == ["mem-1_3"]


def test_list_quotes_what_is_not_printable(tree: Tree) -> None:
    """A product string with newlines and escape codes drew a fake "not selected by any rule"
    section (and could clear the screen); a /dev name can hold the same. `list` shows them
    escaped, one token each; the JSON output keeps the real strings."""
    import json
    import subprocess
    import sys

    # No space in it (a value with a space was quoted already): tabs look the same on a terminal.
    forged = "FT232R\n\nnot\tselected\tby\tany\trule:\n\t/dev/forged\x1b[2J\x1b[31mred"
    tree.plug(tree.fake.usb_serial("1-1.3", "ttyUSB0", None, vid="0403", pid="6001",
                                   manufacturer="FTDI", product=forged, serial="A1\u202eB",
                                   driver="ftdi_sio"))
    mkdev(tree.dev / "odd\nname", major=1, minor=3)
    config = tree.dev.parent / "c.yaml"
    config.write_text('- {name: "f-{idVendor}", attributes: {idVendor: "0403"}, nummaxdevices: 1}\n'
                      "- {devicematch: '^odd', nummaxdevices: 1}\n")
    base = [sys.executable, "-m", "smarter_device_manager", "list", "--config", str(config),
            "--dev-dir", str(tree.dev), "--sys-dir", str(tree.sys)]
    table = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert "\nnot\tselected" not in table.stdout and "\x1b" not in table.stdout
    assert all(c.isprintable() for line in table.stdout.splitlines() for c in line)
    assert all(c.isprintable() for line in table.stderr.splitlines() for c in line)
    assert f"product={forged!r}" in table.stdout
    assert "serial='A1\\u202eB'" in table.stdout
    assert "'/dev/odd\\nname'" in table.stdout
    listed = json.loads(subprocess.run([*base, "-o", "json"], capture_output=True, text=True,
                                       timeout=60, check=True).stdout)
    assert [d["summary"]["product"] for r in listed for d in r["devices"] if "summary" in d
            and "product" in d["summary"]] == [forged]

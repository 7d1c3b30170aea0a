"""Devices by what they are, end to end: the daemon as a process, a fake sysfs tree
(tests/fakesysfs.py, modelled on a Raspberry Pi 4's), real mknod device nodes, and
the kubelet stand-in (tests/kubelet_standin.py) over real unix sockets.

The fake sysfs is a stand-in for the kernel's /sys (a tmp dir handed to the daemon
with --sys-dir); everything else is real.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import Node, mkdev, needs_root
from fakesysfs import FakeDevice, FakeSysfs
from grpclib import GRPCError, Status
from kubelet_standin import KubeletStandin

pytestmark = [needs_root, pytest.mark.e2e]

GPS = "smarter-devices/gps"
ZIGBEE = "smarter-devices/zigbee"
POOL = "smarter-devices/usb-serial"


def run(coro: Coroutine[Any, Any, None], timeout: float = 90) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def config(gpio: Path) -> str:
    return f"""\
- name: gps
  subsystem: tty
  attributes:
    idVendor: "0403"
    idProduct: "6001"
    serial: "A50285BI"
  nummaxdevices: 1
  containerpath: /dev/gps
  env:
    GPS_BAUD: "9600"
  mounts:
    - hostpath: {gpio}
      containerpath: /sys/class/gpio
- name: zigbee
  attributes: {{idVendor: "10c4", idProduct: "ea60"}}
  nummaxdevices: 1
  containerpath: /dev/zigbee
- devicematch: ^ttyUSB[0-9]+$
  nummaxdevices: 1
"""


def plug(node: Node, device: FakeDevice) -> None:
    """The kernel's order: the sysfs entry exists before devtmpfs makes the node."""
    mkdev(node.dev / device.node, major=device.major, minor=device.minor)


def unplug(node: Node, sysfs: FakeSysfs, device: FakeDevice) -> None:
    (node.dev / device.node).unlink()
    sysfs.unplug(device)


def start(node: Node, sys_root: Path, *extra: str) -> None:
    # The GPIO mount's stand-in lives in the test's directory: outside the trees a mount may
    # expose, so the deployer's escape hatch allows it.
    node.start("--sys-dir", str(sys_root), "--removal-grace", "60", "--allow-mount-prefix",
               str(node.root), *extra)


def healthy(kubelet: KubeletStandin, resource: str, ids: list[str]) -> bool:
    state = kubelet.plugins.get(resource)
    return bool(state and state.streaming and state.devices == {i: "Healthy" for i in ids})


def test_identity_follows_the_device_when_node_names_swap(node: Node, tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    sysfs = FakeSysfs(str(sys_root))
    gpio = tmp_path / "gpio"
    gpio.mkdir()
    ftdi = sysfs.ftdi(port="1-1.3", node="ttyUSB0")
    cp = sysfs.cp2102(port="1-1.4", node="ttyUSB1")
    for device in (ftdi, cp):
        plug(node, device)
    node.write_config(config(gpio))

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        start(node, sys_root)
        await kubelet.wait_for(lambda: healthy(kubelet, GPS, ["0"]) and healthy(kubelet, ZIGBEE, ["0"]),
                               timeout=30)
        # Neither adapter is also served under its node name: the named rules come first.
        assert "smarter-devices/ttyUSB0" not in kubelet.plugins
        [gps] = (await kubelet.allocate(GPS, ["0"])).container_responses
        assert [(d.container_path, d.host_path, d.permissions) for d in gps.devices] == [
            ("/dev/gps", f"{node.dev}/ttyUSB0", "rw")]
        assert dict(gps.envs) == {"GPS_BAUD": "9600", "SMARTER_DEVICES_GPS": "/dev/gps"}
        assert [(m.container_path, m.host_path, m.read_only) for m in gps.mounts] == [
            ("/sys/class/gpio", str(gpio), True)]

        # Both unplugged: the same IDs turn Unhealthy, nothing is withdrawn.
        unplug(node, sysfs, ftdi)
        unplug(node, sysfs, cp)
        await kubelet.wait_for(lambda: kubelet.plugins[GPS].devices == {"0": "Unhealthy"}
                               and kubelet.plugins[ZIGBEE].devices == {"0": "Unhealthy"}, timeout=30)
        with pytest.raises(GRPCError) as error:
            await kubelet.allocate(GPS, ["0"])
        assert error.value.status is Status.FAILED_PRECONDITION

        # Back in the other order: the kernel names them the other way round.
        cp2 = sysfs.cp2102(port="1-1.4", node="ttyUSB0", minor=0)
        ftdi2 = sysfs.ftdi(port="1-1.3", node="ttyUSB1", minor=1)
        plug(node, cp2)
        plug(node, ftdi2)
        await kubelet.wait_for(lambda: healthy(kubelet, GPS, ["0"]) and healthy(kubelet, ZIGBEE, ["0"]),
                               timeout=30)
        [gps] = (await kubelet.allocate(GPS, ["0"])).container_responses
        assert [(d.container_path, d.host_path) for d in gps.devices] == [("/dev/gps", f"{node.dev}/ttyUSB1")]
        [zigbee] = (await kubelet.allocate(ZIGBEE, ["0"])).container_responses
        assert [(d.container_path, d.host_path) for d in zigbee.devices] == [
            ("/dev/zigbee", f"{node.dev}/ttyUSB0")]
        assert dict(zigbee.envs) == {"SMARTER_DEVICES_ZIGBEE": "/dev/zigbee"}
        assert len(kubelet.register_requests) == 2  # never re-registered: same resources throughout
        await kubelet.stop()

    run(scenario())


POOL_CONFIG = """\
- name: usb-serial
  pool: true
  subsystem: tty
  devicematch: ^ttyUSB[0-9]+$
  nummaxdevices: 2
  containerpath: /dev/serial
"""


def test_pool_gives_distinct_devices_with_stable_ids(node: Node, tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    sysfs = FakeSysfs(str(sys_root))
    devices = [sysfs.ftdi(port="1-1.3", node="ttyUSB0"), sysfs.cp2102(port="1-1.4", node="ttyUSB1"),
               sysfs.ch340(port="1-1.2", node="ttyUSB2")]
    for device in devices:
        plug(node, device)
    node.write_config(POOL_CONFIG)
    ids = sorted(f"{i}-{k}" for i in ("A50285BI", "0001", "usb-1-1.2") for k in (0, 1))

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        start(node, sys_root)
        await kubelet.wait_for(lambda: healthy(kubelet, POOL, ids), timeout=30)

        # A container asking for two gets two distinct devices; the least shared first.
        chosen = await kubelet.preferred(POOL, ids, 2)
        assert len({c.rsplit("-", 1)[0] for c in chosen}) == 2
        busy = [i for i in ids if i.startswith("A50285BI")][:1]  # one copy of the FTDI in use
        free = [i for i in ids if i not in busy]
        chosen = await kubelet.preferred(POOL, free, 2)
        assert not any(c.startswith("A50285BI") for c in chosen)
        assert len({c.rsplit("-", 1)[0] for c in chosen}) == 2
        # Only one device left free: distinct while possible, then copies.
        assert await kubelet.preferred(POOL, ["0001-0", "0001-1"], 2) == ["0001-0", "0001-1"]

        [answer] = (await kubelet.allocate(POOL, ["0001-1", "A50285BI-0"])).container_responses
        assert [(d.container_path, d.host_path) for d in answer.devices] == [
            ("/dev/serial0", f"{node.dev}/ttyUSB1"), ("/dev/serial1", f"{node.dev}/ttyUSB0")]
        assert dict(answer.envs) == {"SMARTER_DEVICES_USB_SERIAL": "/dev/serial0,/dev/serial1",
                                     "SMARTER_DEVICES_USB_SERIAL_IDS": "0001,A50285BI"}

        # One member unplugged: only its IDs turn Unhealthy.
        unplug(node, sysfs, devices[0])
        expected = {i: ("Unhealthy" if i.startswith("A50285BI") else "Healthy") for i in ids}
        await kubelet.wait_for(lambda: kubelet.plugins[POOL].devices == expected, timeout=30)
        with pytest.raises(GRPCError) as error:
            await kubelet.allocate(POOL, ["A50285BI-0"])
        assert "unplugged" in str(error.value.message)
        # ... and back under another node name, with the same IDs.
        plug(node, sysfs.ftdi(port="1-1.3", node="ttyUSB7", minor=7))
        await kubelet.wait_for(lambda: healthy(kubelet, POOL, ids), timeout=30)
        [answer] = (await kubelet.allocate(POOL, ["A50285BI-1"])).container_responses
        assert [d.host_path for d in answer.devices] == [f"{node.dev}/ttyUSB7"]

        # The kubelet restarts: the same IDs come back.
        await kubelet.restart()
        await kubelet.wait_for(lambda: healthy(kubelet, POOL, ids), timeout=30)
        await kubelet.stop()

    run(scenario())

    # The daemon restarts: the same IDs again.
    node.procs[0].stop()

    async def again() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        start(node, sys_root)
        await kubelet.wait_for(lambda: healthy(kubelet, POOL, ids), timeout=30)
        await kubelet.stop()

    run(again())


XAVIER = """\
- devicematch: ^snd$
  nummaxdevices: 20
- devicematch: ^video[0-9]*$
  nummaxdevices: 20
- devicematch: ^ttyTHS[0-9]*$
  nummaxdevices: 1
- devicematch: nvidia-gpu
  nummaxdevices: 10
"""


def test_nvidia_gpu_keyword_as_the_original(node: Node, tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    FakeSysfs(str(sys_root)).jetson_gpus()
    mkdev(node.dev / "ttyTHS0", major=238, minor=0)
    mkdev(node.dev / "nvidiactl", major=195, minor=255)
    mkdev(node.dev / "nvidia-uvm", major=510, minor=0)
    node.write_config(XAVIER)
    gpu = "smarter-devices/nvidia-gpu0"

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        start(node, sys_root, "--pass-device-specs")
        await kubelet.wait_for(lambda: healthy(kubelet, gpu, [str(i) for i in range(10)])
                               and healthy(kubelet, "smarter-devices/ttyTHS0", ["0"]), timeout=30)
        assert next(r for r in kubelet.register_requests if r.resource_name == gpu).endpoint == \
            "smarter-nvidia-gpu0.sock"
        [answer] = (await kubelet.allocate(gpu, ["3"])).container_responses
        assert dict(answer.envs) == {"NVIDIA_VISIBLE_DEVICES": "0"}
        assert [(d.container_path, d.host_path) for d in answer.devices] == [
            ("/dev/nvidiactl", f"{node.dev}/nvidiactl"), ("/dev/nvidia-uvm", f"{node.dev}/nvidia-uvm")]
        await kubelet.stop()

    run(scenario())
    log = node.procs[0].log
    assert "not supported" not in log


def test_bad_devices_are_skipped_and_the_rest_is_served(node: Node, tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    sysfs = FakeSysfs(str(sys_root))
    good = sysfs.ftdi(port="1-1.3", node="ttyUSB0")
    no_serial = sysfs.ch340(port="1-1.2", node="ttyUSB2")
    twin_a = sysfs.ublox(port="1-1.1", node="ttyACM0")
    twin_b = sysfs.ublox(port="1-1.5", node="ttyACM1", serial="OTHER")
    for device in (good, no_serial, twin_a, twin_b):
        plug(node, device)
    mkdev(node.dev / "ttyUSB9", major=188, minor=9)  # a node with no sysfs entry at all
    node.write_config("""\
- name: serial-{serial}
  devicematch: ^ttyUSB
  nummaxdevices: 1
- name: gps
  attributes: {idVendor: "1546"}
  nummaxdevices: 1
- name: gpio
  devicematch: ^ttyS
  nummaxdevices: 1
  mounts: [{hostpath: /sys/class/nonexistent-gpio, containerpath: /sys/class/gpio}]
""")
    mkdev(node.dev / "ttyS0", major=4, minor=64)

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        start(node, sys_root)
        await kubelet.wait_for(lambda: healthy(kubelet, "smarter-devices/serial-A50285BI", ["0"]),
                               timeout=30)
        log = node.procs[0]
        log.wait_log("name 'serial-{serial}' needs attribute 'serial', which the device and its "
                     "parents lack", timeout=30)
        log.wait_log("/dev/ttyACM0, /dev/ttyACM1 all map to the resource name smarter-devices/gps; give "
                     "the rule 'pool: true', or a name template such as 'gps-{serial}'", timeout=30)
        log.wait_log("rule 3: mount source /sys/class/nonexistent-gpio does not exist on this node",
                     timeout=30)
        log.wait_log("/dev/ttyUSB9 (rule 1): name 'serial-{serial}' needs attribute 'serial', which the "
                     "device and its parents lack (no sysfs entry for it)", timeout=30)
        assert sorted(kubelet.plugins) == ["smarter-devices/serial-A50285BI"]
        await kubelet.stop()

    run(scenario())


def test_list_shows_attributes_to_write_rules_from(node: Node, tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    sysfs = FakeSysfs(str(sys_root))
    plug(node, sysfs.ftdi(port="1-1.3", node="ttyUSB0"))
    plug(node, sysfs.uvc_camera()[0])
    node.write_config(POOL_CONFIG)
    proc = node.start(args=["list", "--config", str(node.config), "--dev-dir", str(node.dev),
                            "--sys-dir", str(sys_root), "--all"])
    assert proc.popen.wait(30) == 0, proc.log
    out = proc.log
    assert "smarter-devices/usb-serial      2  /dev/ttyUSB0" in out
    assert ("    /dev/ttyUSB0 [A50285BI]  subsystem=tty driver=ftdi_sio idVendor=0403 idProduct=6001 "
            "serial=A50285BI manufacturer=FTDI product='FT232R USB UART'") in out
    assert "not selected by any rule:" in out
    assert "/dev/video0  subsystem=video4linux driver=uvcvideo idVendor=0c45" in out

    proc = node.start(args=["list", "-o", "json", "--config", str(node.config), "--dev-dir",
                            str(node.dev), "--sys-dir", str(sys_root)])
    assert proc.popen.wait(30) == 0, proc.log
    import json

    [row] = json.loads(proc.log)
    [device] = row["devices"]
    assert device["identity"] == "A50285BI" and (device["major"], device["minor"]) == (188, 0)
    levels = device["sysfs"]
    assert levels[0]["subsystem"] == "tty"
    usb = next(level for level in levels if "idVendor" in level["attributes"])
    assert usb["attributes"]["serial"] == "A50285BI" and usb["driver"] == "usb"
    assert os.path.basename(usb["path"]) == "1-1.3"


TWINS = """\
- name: usb-serial
  pool: true
  subsystem: tty
  devicematch: ^ttyUSB[0-9]+$
  nummaxdevices: 1
"""
TWIN_POOL = "smarter-devices/usb-serial"


def test_adapters_sharing_a_serial_never_trade_ids(node: Node, tmp_path: Path) -> None:
    """Issue 16, item 1: CP2102s that all ship serial 0001, one ID each (nummaxdevices 1), pods
    holding IDs, adapters unplugged and plugged again in turn. An ID never moves to another
    adapter while the kubelet counts it, and a held ID stays Unhealthy while its adapter is gone.
    (The unit test tests/test_pinning.py goes through every order; this is the daemon doing it.)"""
    sys_root = tmp_path / "sys"
    sysfs = FakeSysfs(str(sys_root))
    a = sysfs.cp2102(port="1-1.3", node="ttyUSB0", minor=0)
    plug(node, a)
    node.write_config(TWINS)
    b_id, c_id = "0001-usb-1-1.4", "0001-usb-1-1.5"

    async def host_path(kubelet: KubeletStandin, device_id: str) -> str:
        [answer] = (await kubelet.allocate(TWIN_POOL, [device_id])).container_responses
        [device] = answer.devices
        return str(device.host_path)

    def shows(kubelet: KubeletStandin, devices: dict[str, str]) -> bool:
        state = kubelet.plugins.get(TWIN_POOL)
        return bool(state and state.streaming and state.devices == devices)

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        start(node, sys_root)
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Healthy"}), timeout=30)
        assert await host_path(kubelet, "0001") == f"{node.dev}/ttyUSB0"  # pod 1 holds A

        # B arrives: A keeps "0001" (pod 1 holds it); B gets its serial and port.
        b = sysfs.cp2102(port="1-1.4", node="ttyUSB1", minor=1)
        plug(node, b)
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Healthy", b_id: "Healthy"}), timeout=30)
        assert await host_path(kubelet, b_id) == f"{node.dev}/ttyUSB1"  # pod 2 holds B

        # A unplugged: "0001" stays, Unhealthy; B does not take it over.
        mark = len(kubelet.plugins[TWIN_POOL].updates)
        unplug(node, sysfs, a)
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Unhealthy", b_id: "Healthy"}), timeout=30)
        with pytest.raises(GRPCError) as error:
            await kubelet.allocate(TWIN_POOL, ["0001"])
        assert error.value.status is Status.FAILED_PRECONDITION
        assert await host_path(kubelet, b_id) == f"{node.dev}/ttyUSB1"

        # A third twin, under the node name A had: a new ID, not the held "0001".
        c = sysfs.cp2102(port="1-1.5", node="ttyUSB0", minor=0)
        plug(node, c)
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Unhealthy", b_id: "Healthy",
                                                       c_id: "Healthy"}), timeout=30)
        assert await host_path(kubelet, c_id) == f"{node.dev}/ttyUSB0"
        # While A was away, "0001" was never Healthy, and B and C never changed IDs.
        for update in kubelet.plugins[TWIN_POOL].updates[mark:]:
            assert update.devices.get("0001") == "Unhealthy", update
            assert set(update.devices) <= {"0001", b_id, c_id}, update

        # A back on its port under yet another node name: its own ID, Healthy again.
        a2 = sysfs.cp2102(port="1-1.3", node="ttyUSB2", minor=2)
        plug(node, a2)
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Healthy", b_id: "Healthy",
                                                       c_id: "Healthy"}), timeout=30)
        assert await host_path(kubelet, "0001") == f"{node.dev}/ttyUSB2"

        # B and C out, B back as ttyUSB3; C's ID stays held; A keeps "0001" throughout.
        unplug(node, sysfs, b)
        unplug(node, sysfs, c)
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Healthy", b_id: "Unhealthy",
                                                       c_id: "Unhealthy"}), timeout=30)
        plug(node, sysfs.cp2102(port="1-1.4", node="ttyUSB3", minor=3))
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Healthy", b_id: "Healthy",
                                                       c_id: "Unhealthy"}), timeout=30)
        assert await host_path(kubelet, b_id) == f"{node.dev}/ttyUSB3"
        assert await host_path(kubelet, "0001") == f"{node.dev}/ttyUSB2"
        await kubelet.stop()

    run(scenario())


def test_twins_keep_their_ids_across_daemon_and_kubelet_restarts(node: Node, tmp_path: Path) -> None:
    """Issue 16, item 1, across restarts: the pins are on disk (pinstore.py). A pod holds twin A's
    bare "0001"; the daemon is killed (SIGKILL: no clean stop) and started again with both twins
    plugged: "0001" still names A, not a new free ID. A kubelet restart (which deletes every file
    in the plugin dir) keeps the state (a subdirectory). A killed while unplugged: "0001" stays
    held, Unhealthy, across the next start, and a new twin does not get it."""
    sys_root = tmp_path / "sys"
    sysfs = FakeSysfs(str(sys_root))
    a = sysfs.cp2102(port="1-1.3", node="ttyUSB0", minor=0)
    plug(node, a)
    node.write_config(TWINS)
    b_id, c_id = "0001-usb-1-1.4", "0001-usb-1-1.5"
    state = node.plugins / "smarter-device-manager" / "pins.json"

    def shows(kubelet: KubeletStandin, devices: dict[str, str]) -> bool:
        state = kubelet.plugins.get(TWIN_POOL)
        return bool(state and state.streaming and state.devices == devices)

    async def host_path(kubelet: KubeletStandin, device_id: str) -> str:
        [answer] = (await kubelet.allocate(TWIN_POOL, [device_id])).container_responses
        return str(answer.devices[0].host_path)

    async def saved(*ids: str) -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while not (state.exists() and all(f'"{i}"' in state.read_text() for i in ids)):
            assert asyncio.get_running_loop().time() < deadline, "pins never written"
            await asyncio.sleep(0.02)

    def kill() -> None:
        node.procs[-1].popen.kill()
        node.procs[-1].popen.wait()

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        start(node, sys_root)
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Healthy"}), timeout=30)
        assert await host_path(kubelet, "0001") == f"{node.dev}/ttyUSB0"  # pod 1 holds A
        plug(node, b := sysfs.cp2102(port="1-1.4", node="ttyUSB1", minor=1))
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Healthy", b_id: "Healthy"}), timeout=30)
        await saved("0001", b_id)

        kill()
        mark = len(kubelet.register_requests)
        start(node, sys_root)
        await kubelet.wait_for(lambda: len(kubelet.register_requests) > mark
                               and shows(kubelet, {"0001": "Healthy", b_id: "Healthy"}), timeout=30)
        assert await host_path(kubelet, "0001") == f"{node.dev}/ttyUSB0"
        assert await host_path(kubelet, b_id) == f"{node.dev}/ttyUSB1"

        await kubelet.restart()  # deletes every file in the plugin dir, not directories
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Healthy", b_id: "Healthy"}), timeout=30)
        assert state.exists()

        kill()
        unplug(node, sysfs, a)  # while the daemon is down
        start(node, sys_root)
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Unhealthy", b_id: "Healthy"}), timeout=30)
        with pytest.raises(GRPCError):
            await kubelet.allocate(TWIN_POOL, ["0001"])
        plug(node, sysfs.cp2102(port="1-1.5", node="ttyUSB0", minor=0))
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Unhealthy", b_id: "Healthy",
                                                       c_id: "Healthy"}), timeout=30)
        await saved("0001", b_id, c_id)

        kill()  # A's removal grace goes on across this start too; A back: its own ID again
        start(node, sys_root)
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Unhealthy", b_id: "Healthy",
                                                       c_id: "Healthy"}), timeout=30)
        plug(node, sysfs.cp2102(port="1-1.3", node="ttyUSB2", minor=2))
        await kubelet.wait_for(lambda: shows(kubelet, {"0001": "Healthy", b_id: "Healthy",
                                                       c_id: "Healthy"}), timeout=30)
        assert await host_path(kubelet, "0001") == f"{node.dev}/ttyUSB2"
        del b
        await kubelet.stop()

    run(scenario())


def test_a_bad_state_file_is_a_warning_and_a_fresh_start(node: Node, tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    sysfs = FakeSysfs(str(sys_root))
    plug(node, sysfs.cp2102(port="1-1.3", node="ttyUSB0", minor=0))
    node.write_config(TWINS)
    state = node.plugins / "smarter-device-manager" / "pins.json"
    state.parent.mkdir()
    for number, text in enumerate(('{"kind": "smarter-device-manager/pool-pins", "vers',
                                   '{"kind": "smarter-device-manager/pool-pins", "version": 99}',
                                   '{"kind": "something-else", "version": 1}',
                                   '{"kind": "smarter-device-manager/pool-pins", "version": 1, '
                                   '"pools": {"usb-serial": {"members": [{"id": 5}], "shared": []}}}')):
        state.write_text(text)

        async def scenario() -> None:
            kubelet = KubeletStandin(str(node.plugins))
            await kubelet.start()
            start(node, sys_root)
            await kubelet.wait_for(lambda: healthy(kubelet, TWIN_POOL, ["0001"]), timeout=30)
            await kubelet.stop()

        run(scenario())
        node.procs[-1].wait_log("state file")
        assert "WARNING" in next(line for line in node.procs[-1].log.splitlines() if "state file" in line)
        assert node.procs[-1].stop() == 0, number
        assert '"0001"' in state.read_text()  # written afresh

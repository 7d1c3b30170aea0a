"""DRA mode as a black box: the daemon as a subprocess (``smarter-device-manager dra``), real unix
sockets, real device nodes, the kubelet DRA stand-in (tests/kubelet_dra_standin.py) and the API
server stand-in (tests/fake_apiserver.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiorun import run as bounded_run
from conftest import DaemonProcess, Node, mkdev, needs_root
from fake_apiserver import FakeApiServer
from fakesysfs import FakeSysfs
from kubelet_dra_standin import KubeletDraStandin, wait_for

pytestmark = [needs_root, pytest.mark.e2e]

DRIVER = "smarter-devices.io"
NODE = "node-a"
SLICE = f"{NODE}-{DRIVER}-0"
NODE_UID = "5b0f8a7c-2d41-4e57-9a0e-0c1d2e3f4a5b"
CONFIG = """\
- name: usb-serial
  pool: true
  subsystem: tty
  attributes: {idVendor: "10c4"}
  nummaxdevices: 1
  containerpath: /dev/usb-serial
- devicematch: ^video[0-9]*$
  nummaxdevices: 3
- devicematch: ^ttyUSB[0-9]+$
  nummaxdevices: 1
- devicematch: ^snd$
  nummaxdevices: 1
"""


def run(coro: Coroutine[Any, Any, None], timeout: float = 180) -> None:
    bounded_run(coro, timeout)


@dataclass
class Dra:
    node: Node
    api: FakeApiServer
    kubelet: KubeletDraStandin
    proc: DaemonProcess
    http_port: int
    sys_root: Path
    extra: tuple[str, ...] = ()

    @property
    def cdi(self) -> Path:
        return self.node.root / "cdi"

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def restart_daemon(self) -> None:
        assert self.proc.stop() == 0
        self.proc = start_daemon(self.node, self.api, self.http_port, self.sys_root, *self.extra)


def answers(dra: Dra, path: str) -> tuple[int, str]:
    """``dra.http(path)``, or (0, why) while the daemon is not listening yet."""
    try:
        return dra.http(path)
    except urllib.error.URLError as exc:
        return 0, str(exc)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_daemon(node: Node, api: FakeApiServer, http_port: int, sys_root: Path, *extra: str,
                 env: dict[str, str] | None = None, prelude: str | None = None) -> DaemonProcess:
    kubeconfig = api.kubeconfig(str(node.root / "kubeconfig"))
    argv = ["dra", "--dev-dir", str(node.dev), "--config", str(node.config), "--sys-dir", str(sys_root),
            "--node-name", NODE, "--kubeconfig", kubeconfig,
            "--kubelet-plugins-dir", str(node.root / "plugins"),
            "--kubelet-registry-dir", str(node.root / "plugins_registry"),
            "--cdi-dir", str(node.root / "cdi"), "--state-dir", str(node.root / "state"),
            "--http-address", f"127.0.0.1:{http_port}", "--log-level", "debug", *extra]
    proc = DaemonProcess.spawn(argv, node.root / f"dra{len(node.procs)}.log", env, prelude)
    node.procs.append(proc)
    return proc


def make_devices(node: Node, sys_root: Path) -> FakeSysfs:
    sysfs = FakeSysfs(str(sys_root))
    mkdev(node.dev / "video0", major=81, minor=0)
    mkdev(node.dev / "ttyUSB0", major=188, minor=0)
    mkdev(node.dev / "snd" / "controlC0", major=116, minor=0)
    mkdev(node.dev / "snd" / "pcmC0D0p", major=116, minor=16)
    for device in (sysfs.cp2102(port="1-1.4", node="ttyUSB1", minor=1),
                   sysfs.cp2102(port="1-1.1", node="ttyUSB2", minor=2, serial="0002")):
        mkdev(node.dev / device.node, major=device.major, minor=device.minor)
    return sysfs


@asynccontextmanager
async def dra_node(node: Node, sys_root: Path, config: str = CONFIG, cdi_dir: bool = True,
                   extra: tuple[str, ...] = (),
                   kubelet: KubeletDraStandin | None = None,
                   prelude: str | None = None) -> AsyncIterator[Dra]:
    node.write_config(config)
    if cdi_dir:  # the host's, mounted by the chart (hostPath DirectoryOrCreate); never the daemon's job
        (node.root / "cdi").mkdir(exist_ok=True)
    api = FakeApiServer()
    api.add_node(NODE, NODE_UID)
    await api.start()
    if kubelet is None:
        kubelet = KubeletDraStandin(str(node.root / "plugins_registry"), NODE, api)
    await kubelet.start()
    port = free_port()
    proc = start_daemon(node, api, port, sys_root, *extra, prelude=prelude)
    dra = Dra(node, api, kubelet, proc, port, sys_root, extra)
    try:
        await wait_for(lambda: DRIVER in kubelet.registered, 10, "registration")
        yield dra
    finally:
        await kubelet.stop()
        await api.stop()


EXPECTED_NAMES = {"video0", "ttyusb0", "snd", "usb-serial-0001", "usb-serial-0002"}


def test_publishes_registers_prepares_and_unprepares(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys") as dra:
            api = dra.api
            await wait_for(lambda: set(api.devices(NODE)) == EXPECTED_NAMES, 10, "slices")
            assert list(api.slices) == [SLICE]
            spec = api.slices[SLICE]["spec"]
            assert spec["driver"] == DRIVER and spec["nodeName"] == NODE
            assert spec["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 1}
            devices = api.devices(NODE)
            video = devices["video0"]
            assert video["allowMultipleAllocations"] is True
            assert video["capacity"]["shares"]["value"] == "3"
            assert video["attributes"]["path"] == {"string": "/dev/video0"}
            assert video["attributes"]["major"] == {"int": 81}
            assert video["attributes"]["resource"] == {"string": "smarter-devices/video0"}
            assert "allowMultipleAllocations" not in devices["ttyusb0"]
            serial = devices["usb-serial-0001"]["attributes"]
            assert serial["idVendor"] == {"string": "10c4"}
            assert serial["usb"] == {"bool": True} and serial["usbHub"] == {"string": "1-1"}
            assert serial["kind"] == {"string": "pool-member"}
            assert devices["snd"]["attributes"]["type"] == {"string": "directory"}
            assert len(api.writes) == 1

            # the node-wide CDI spec: one device per non-pool device
            spec_file = json.loads((dra.cdi / f"{DRIVER}-device.json").read_text())
            assert spec_file["kind"] == f"{DRIVER}/device"
            assert {d["name"] for d in spec_file["devices"]} == {"video0", "ttyusb0", "snd"}
            snd = next(d for d in spec_file["devices"] if d["name"] == "snd")
            assert [n["path"] for n in snd["containerEdits"]["deviceNodes"]] == \
                ["/dev/snd/controlC0", "/dev/snd/pcmC0D0p"]

            # prepare: a plain device and two pool members
            api.add_claim("default", "cam", "uid-cam", [
                {"request": "cam", "driver": DRIVER, "pool": NODE, "device": "video0", "shareID": "s-1"}])
            api.add_claim("default", "pair", "uid-pair", [
                {"request": "serial", "driver": DRIVER, "pool": NODE, "device": "usb-serial-0001"},
                {"request": "serial", "driver": DRIVER, "pool": NODE, "device": "usb-serial-0002"}])
            answer = await dra.kubelet.prepare(DRIVER, ("default", "cam", "uid-cam"),
                                               ("default", "pair", "uid-pair"))
            cam = answer.claims["uid-cam"]
            assert cam.error == ""
            assert [(d.device_name, d.pool_name, list(d.cdi_device_ids), d.share_id)
                    for d in cam.devices] == [("video0", NODE, [f"{DRIVER}/device=video0"], "s-1")]
            pair = answer.claims["uid-pair"]
            assert pair.error == ""
            ids = [list(d.cdi_device_ids) for d in pair.devices]
            assert ids == [[f"{DRIVER}/claim=uid-pair-usb-serial-0001"],
                           [f"{DRIVER}/claim=uid-pair-usb-serial-0002"]]
            claim_spec = json.loads((dra.cdi / f"{DRIVER}-claim_uid-pair.json").read_text())
            paths = [d["containerEdits"]["deviceNodes"][0]["path"] for d in claim_spec["devices"]]
            assert paths == ["/dev/usb-serial0", "/dev/usb-serial1"]
            env = claim_spec["devices"][0]["containerEdits"]["env"]
            assert "SMARTER_DEVICES_USB_SERIAL=/dev/usb-serial0,/dev/usb-serial1" in env
            assert "SMARTER_DEVICES_USB_SERIAL_IDS=0001,0002" in env

            # idempotent: asked again, the same answer without reading the claim again
            reads = len([r for r in api.requests if "resourceclaims" in r[1]])
            again = await dra.kubelet.prepare(DRIVER, ("default", "pair", "uid-pair"))
            assert [list(d.cdi_device_ids) for d in again.claims["uid-pair"].devices] == ids
            assert len([r for r in api.requests if "resourceclaims" in r[1]]) == reads

            _, text = dra.http("/metrics")
            assert 'smarter_device_manager_dra_prepares_total{result="success"} 3' in text
            assert "smarter_device_manager_dra_prepared_claims 2" in text
            # ready once the slice watch is running too, which may come after the prepares
            await wait_for(lambda: dra.http("/readyz")[0] == 200, 30, "ready")

            # unprepare: the claim spec goes, and asking again is fine
            gone = await dra.kubelet.unprepare(DRIVER, ("default", "pair", "uid-pair"))
            assert gone.claims["uid-pair"].error == ""
            assert not (dra.cdi / f"{DRIVER}-claim_uid-pair.json").exists()
            twice = await dra.kubelet.unprepare(DRIVER, ("default", "pair", "uid-pair"))
            assert twice.claims["uid-pair"].error == ""
            assert "was not prepared here" in dra.proc.log
    run(scenario())


def test_hotplug_unplug_and_config_reload_update_the_slice_with_one_write(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys") as dra:
            api = dra.api
            await wait_for(lambda: set(api.devices(NODE)) == EXPECTED_NAMES, 10)
            mkdev(node.dev / "video1", major=81, minor=1)
            took = await wait_for(lambda: "video1" in api.devices(NODE), 5, "hotplug")
            assert took < 1.0
            assert [w.verb for w in api.writes] == ["create", "update"]
            assert api.slices[SLICE]["spec"]["pool"]["generation"] == 2
            (node.dev / "video1").unlink()  # stays through the removal grace, tainted
            await wait_for(lambda: "taints" in api.devices(NODE)["video1"], 5, "unplug")
            assert len(api.writes) == 3
            node.config.write_text(CONFIG.replace("^video[0-9]*$", "^nothing$"))
            await wait_for(lambda: "video0" not in api.devices(NODE), 5, "config reload")
            assert len(api.writes) == 4
            # a burst of events is one rescan and one write
            for i in range(2, 12):
                mkdev(node.dev / f"ttyUSB{i + 10}", major=188, minor=i + 10)
            await wait_for(lambda: "ttyusb21" in api.devices(NODE), 5, "burst")
            await asyncio.sleep(0.3)
            assert len(api.writes) <= 6
    run(scenario())


def test_kubelet_restart_wipe_and_foreign_edits_are_repaired(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys") as dra:
            api = dra.api
            await wait_for(lambda: set(api.devices(NODE)) == EXPECTED_NAMES, 10)
            api.add_claim("default", "tty", "uid-tty", [
                {"request": "r", "driver": DRIVER, "pool": NODE, "device": "ttyusb0"}])
            before = await dra.kubelet.prepare(DRIVER, ("default", "tty", "uid-tty"))
            await dra.kubelet.restart()
            assert api.slices == {}
            took = await wait_for(lambda: set(api.devices(NODE)) == EXPECTED_NAMES, 5, "slices back")
            assert took < 1.0
            assert "was deleted (the kubelet does so when it starts)" in dra.proc.log
            # the restarted kubelet prepares its claims again, then unprepares them
            await wait_for(lambda: DRIVER in dra.kubelet.registered, 5, "registered again")
            after = await dra.kubelet.prepare(DRIVER, ("default", "tty", "uid-tty"))
            assert after.claims["uid-tty"] == before.claims["uid-tty"]
            done = await dra.kubelet.unprepare(DRIVER, ("default", "tty", "uid-tty"))
            assert done.claims["uid-tty"].error == ""
            api.edit(SLICE, {"devices": []})
            await wait_for(lambda: set(api.devices(NODE)) == EXPECTED_NAMES, 5, "edit repaired")
            # a conflicting write is retried on a fresh read
            api.conflict_next = 1
            mkdev(node.dev / "video7", major=81, minor=7)
            await wait_for(lambda: "video7" in api.devices(NODE), 10, "after a conflict")
            assert "HTTP 409 Conflict" in dra.proc.log
    run(scenario())


def _api_error_shown(status: int, text: str) -> bool:
    return status == 503 and "API server:" in text and "503" in text


def test_daemon_restart_keeps_prepared_claims_even_without_the_api_server(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys") as dra:
            api = dra.api
            await wait_for(lambda: set(api.devices(NODE)) == EXPECTED_NAMES, 10)
            api.add_claim("default", "tty", "uid-tty", [
                {"request": "r", "driver": DRIVER, "pool": NODE, "device": "ttyusb0"}])
            first = await dra.kubelet.prepare(DRIVER, ("default", "tty", "uid-tty"))
            writes = len(api.writes)
            registrations = dra.kubelet.registrations
            dra.restart_daemon()
            await wait_for(lambda: "serving" in dra.proc.log, 10)
            api.fail_next = [503] * 1000  # the API server is down from now on
            dra.kubelet._seen.clear()  # the new registration socket is found again
            # the new daemon's socket registered: a registration completed since (the old one
            # is still listed until then, and a call now would go to the old daemon's socket)
            await wait_for(lambda: dra.kubelet.registrations > registrations, 30, "registered again")
            again = await dra.kubelet.prepare(DRIVER, ("default", "tty", "uid-tty"))
            assert again.claims["uid-tty"] == first.claims["uid-tty"]
            assert "from the checkpoint" in dra.proc.log
            # the daemon says so once it has met the error (not at once: wait for it)
            await wait_for(lambda: _api_error_shown(*dra.http("/readyz")), 30, "/readyz shows the 503")
            # a new claim cannot be prepared, with a message saying why
            api.add_claim("default", "new", "uid-new", [
                {"request": "r", "driver": DRIVER, "pool": NODE, "device": "video0"}])
            failed = await dra.kubelet.prepare(DRIVER, ("default", "new", "uid-new"))
            assert "cannot read ResourceClaim default/new" in failed.claims["uid-new"].error
            api.fail_next = []
            await wait_for(lambda: dra.http("/readyz")[0] == 200, 40, "ready again")
            assert len(api.writes) == writes, "nothing changed: a restarted daemon writes nothing"
    run(scenario())


def test_unplugged_device_rbac_and_bad_claims_are_clear_errors(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys") as dra:
            api = dra.api
            await wait_for(lambda: set(api.devices(NODE)) == EXPECTED_NAMES, 10)
            api.add_claim("default", "cam", "uid-cam", [
                {"request": "r", "driver": DRIVER, "pool": NODE, "device": "video0"}])
            api.add_claim("default", "tty", "uid-tty", [
                {"request": "r", "driver": DRIVER, "pool": NODE, "device": "ttyusb0"}])
            (node.dev / "video0").unlink()
            answer = await dra.kubelet.prepare(
                DRIVER, ("default", "cam", "uid-cam"), ("default", "tty", "uid-tty"),
                ("default", "cam", "uid-other"), ("default", "none", "uid-none"))
            assert "device video0" in answer.claims["uid-cam"].error
            assert "unplugged" in answer.claims["uid-cam"].error
            assert answer.claims["uid-tty"].error == "", "the other claim is not disturbed"
            assert "has UID uid-cam, the kubelet asked for uid-other" in answer.claims["uid-other"].error
            assert "not found" in answer.claims["uid-none"].error
            api.forbid.add(("update", "resourceslices"))
            mkdev(node.dev / "video3", major=81, minor=3)
            await wait_for(lambda: "RBAC" in dra.http("/readyz")[1], 10, "RBAC in /readyz")
            status, text = dra.http("/readyz")
            assert status == 503
            assert "needs the verb 'update' on 'resourceslices.resource.k8s.io'" in text
            assert "cannot update resource" in dra.proc.log
            api.forbid.clear()
            await wait_for(lambda: "video3" in api.devices(NODE), 40, "after RBAC fixed")
    run(scenario())


def test_sigterm_removes_sockets_and_keeps_slices(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys") as dra:
            await wait_for(lambda: set(dra.api.devices(NODE)) == EXPECTED_NAMES, 10)
            dra.proc.signal(signal.SIGTERM)
            assert dra.proc.popen.wait(5) == 0
            assert not os.path.exists(node.root / "plugins_registry" / f"{DRIVER}-reg.sock")
            assert not os.path.exists(node.root / "plugins" / DRIVER / "dra.sock")
            assert dra.api.slices, "slices stay for a restart; the kubelet wipes them if we never return"
    run(scenario())


def test_a_path_rule_device_is_named_by_identity_and_prepare_checks_it(node: Node, tmp_path: Path) -> None:
    """Issue 16, item 3, with the default config's ^ttyACM[0-9]*$: the u-blox at ttyACM0 is published
    by its identity, not as ttyacm0. Then another modem takes its place behind the same node
    (166:0) without any event under /dev, so the daemon's last scan still says u-blox: prepare
    reads sysfs again and refuses the claim instead of handing the modem over."""
    sys_root = tmp_path / "sys"
    sysfs = FakeSysfs(str(sys_root))
    ublox = sysfs.ublox(port="1-1.1", node="ttyACM0")
    mkdev(node.dev / "ttyACM0", major=ublox.major, minor=ublox.minor)
    name = "ttyacm-7a3f21c4-if00"

    async def scenario() -> None:
        async with dra_node(node, sys_root, "- devicematch: ^ttyACM[0-9]*$\n  nummaxdevices: 1\n") as dra:
            api = dra.api
            await wait_for(lambda: set(api.devices(NODE)) == {name}, 10, "slices")
            attributes = api.devices(NODE)[name]["attributes"]
            assert attributes["identity"] == {"string": "7A3F21C4-if00"}
            assert attributes["idVendor"] == {"string": "1546"}
            sysfs.unplug(ublox)
            sysfs.ublox(port="1-1.5", node="ttyACM0", minor=0, serial="OTHER")
            api.add_claim("default", "gps", "uid-gps", [
                {"request": "gps", "driver": DRIVER, "pool": NODE, "device": name}])
            answer = await dra.kubelet.prepare(DRIVER, ("default", "gps", "uid-gps"))
            error = answer.claims["uid-gps"].error
            assert (f"device {name} was allocated as 7A3F21C4-usb-1-1.1-if00, but /dev/ttyACM0 is now "
                    "OTHER-usb-1-1.5-if00; refused") in error, error
            assert not answer.claims["uid-gps"].devices
            # A rescan (SIGHUP) publishes the modem under its own name; the u-blox is gone (kept
            # tainted through the removal grace, in case it comes back).
            dra.proc.popen.send_signal(signal.SIGHUP)
            await wait_for(lambda: set(api.devices(NODE)) == {name, "ttyacm-other-if00"}, 10, "slices")
            published = api.devices(NODE)
            assert "taints" in published[name] and "taints" not in published["ttyacm-other-if00"]
            again = await dra.kubelet.prepare(DRIVER, ("default", "gps", "uid-gps"))
            assert f"device {name} is no longer on node {NODE}" in again.claims["uid-gps"].error
    run(scenario())


def test_a_missing_cdi_dir_is_reported_not_created(node: Node, tmp_path: Path) -> None:
    """As in device-plugin mode: the daemon never creates the CDI directory (one the runtime does
    not read would make every CDI name unresolvable); it says so in /readyz and in each prepare,
    and serves as soon as the directory is there."""
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys", cdi_dir=False) as dra:
            api = dra.api
            await wait_for(lambda: set(api.devices(NODE)) == EXPECTED_NAMES, 10)
            await wait_for(lambda: "does not exist" in dra.http("/readyz")[1], 30, "/readyz: the CDI dir")
            status, text = dra.http("/readyz")
            assert status == 503 and f"CDI directory {dra.cdi} does not exist" in text
            assert not dra.cdi.exists()
            api.add_claim("default", "cam", "uid-cam", [
                {"request": "r", "driver": DRIVER, "pool": NODE, "device": "video0"}])
            failed = await dra.kubelet.prepare(DRIVER, ("default", "cam", "uid-cam"))
            assert f"CDI directory {dra.cdi} does not exist" in failed.claims["uid-cam"].error
            assert not dra.cdi.exists()
            dra.cdi.mkdir()
            answer = await dra.kubelet.prepare(DRIVER, ("default", "cam", "uid-cam"))
            assert answer.claims["uid-cam"].error == ""
            spec = json.loads((dra.cdi / f"{DRIVER}-device.json").read_text())
            assert "video0" in {d["name"] for d in spec["devices"]}
            await wait_for(lambda: dra.http("/readyz")[0] == 200, 30, "ready once the CDI dir is there")
    run(scenario())


def test_a_watch_that_ends_at_once_shows_in_readyz_and_metrics(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys") as dra:
            await wait_for(lambda: dra.http("/readyz")[0] == 200, 30, "ready")
            dra.api.end_watches_at_once = True
            dra.api.drop_watches()
            await wait_for(lambda: "ended at once without any event" in dra.http("/readyz")[1], 30,
                           "/readyz says the watch ends at once")
            assert "smarter_device_manager_dra_watch_ended_empty_total " in dra.http("/metrics")[1]
            dra.api.end_watches_at_once = False
            mkdev(node.dev / "video5", major=81, minor=5)  # an event for the next watch to deliver
            await wait_for(lambda: dra.http("/readyz")[0] == 200, 60, "ready again")
    run(scenario())


CJK_MAKER = "深圳市沁恒微电子有限公司南京分公司制造的串口转换器"  # 25 characters, 75 bytes of UTF-8


def test_what_the_api_server_would_refuse_never_stops_the_other_devices(node: Node, tmp_path: Path) -> None:
    """A CJK manufacturer string (64 characters were cut, the server counts 64 bytes) and names that
    collide even after one renaming (serials abc, ABC and abc-<the crc the renaming picks>) made the
    API server refuse the node's whole slice: every device of the node was gone from DRA."""
    import binascii

    async def scenario() -> None:
        sysfs = FakeSysfs(str(tmp_path / "sys"))
        made = [sysfs.usb_serial("1-1.1", "ttyUSB1", 1, vid="1a86", pid="7523", manufacturer=CJK_MAKER,
                                 product="USB Serial", serial="abc", driver="ch341"),
                sysfs.usb_serial("1-1.2", "ttyUSB2", 2, vid="1a86", pid="7523", manufacturer=CJK_MAKER,
                                 product="USB Serial", serial="ABC", driver="ch341")]
        # what the one-pass renaming gave the second of the colliding two, as a serial of its own
        crc = f"{binascii.crc32(b'/dev/ttyUSB2'):08x}"
        made.append(sysfs.usb_serial("1-1.3", "ttyUSB3", 3, vid="1a86", pid="7523", manufacturer=None,
                                     product="USB Serial", serial=f"abc-{crc}", driver="ch341"))
        for device in made:
            mkdev(node.dev / device.node, major=device.major, minor=device.minor)
        mkdev(node.dev / "video0", major=81, minor=0)
        config = """\
- name: ch34x
  pool: true
  subsystem: tty
  attributes: {idVendor: "1a86"}
  nummaxdevices: 1
- devicematch: ^video[0-9]*$
  nummaxdevices: 1
"""
        async with dra_node(node, tmp_path / "sys", config) as dra:
            await wait_for(lambda: len(dra.api.devices(NODE)) == 4, 30, "all four devices published")
            published = dra.api.devices(NODE)
            assert dra.api.rejected == [], dra.api.rejected
            assert "video0" in published
            makers = [d["attributes"]["manufacturer"]["string"] for d in published.values()
                      if "manufacturer" in d["attributes"]]
            assert len(makers) == 2
            for maker in makers:
                assert len(maker.encode()) <= 64 and CJK_MAKER.startswith(maker) and len(maker) == 21
            await wait_for(lambda: dra.http("/readyz")[0] == 200, 30, "ready")
            spec = json.loads((dra.cdi / f"{DRIVER}-device.json").read_text())
            assert "video0" in {d["name"] for d in spec["devices"]}
            # each of the three adapters can be prepared under its own name
            members = sorted(n for n in published if n != "video0")
            for number, name in enumerate(members):
                dra.api.add_claim("default", f"c{number}", f"uid-{number}", [
                    {"request": "r", "driver": DRIVER, "pool": NODE, "device": name}])
                answer = await dra.kubelet.prepare(DRIVER, ("default", f"c{number}", f"uid-{number}"))
                assert answer.claims[f"uid-{number}"].error == "", name
    run(scenario())


def test_a_firstavailable_subrequest_reaches_the_container_naming_its_request(node: Node,
                                                                              tmp_path: Path) -> None:
    """Prioritized lists: the allocation result says ``<request>/<subrequest>``; a container names
    the request only, and the kubelet matches names exactly, so the answer must name the request."""
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys") as dra:
            await wait_for(lambda: set(dra.api.devices(NODE)) == EXPECTED_NAMES, 10)
            # the first subrequest ("exotic") was unsatisfiable; the allocator chose "any-camera"
            dra.api.add_claim("default", "cam", "uid-cam", [
                {"request": "camera/any-camera", "driver": DRIVER, "pool": NODE, "device": "video0"},
                {"request": "tty", "driver": DRIVER, "pool": NODE, "device": "ttyusb0"}])
            answer = await dra.kubelet.prepare(DRIVER, ("default", "cam", "uid-cam"))
            claim = answer.claims["uid-cam"]
            assert claim.error == ""
            assert [list(d.request_names) for d in claim.devices] == [["camera"], ["tty"]]
            assert dra.kubelet.container_cdi_ids(claim, "camera") == [f"{DRIVER}/device=video0"]
            assert dra.kubelet.container_cdi_ids(claim, "tty") == [f"{DRIVER}/device=ttyusb0"]
            registrations = dra.kubelet.registrations
            dra.restart_daemon()  # answered from the checkpoint: the same names
            dra.kubelet._seen.clear()
            # the new daemon's socket registered: a registration completed since (the old one
            # is still listed until then, and a call now would go to the old daemon's socket)
            await wait_for(lambda: dra.kubelet.registrations > registrations, 30, "registered again")
            again = await dra.kubelet.prepare(DRIVER, ("default", "cam", "uid-cam"))
            assert dra.kubelet.container_cdi_ids(again.claims["uid-cam"], "camera") == [
                f"{DRIVER}/device=video0"]
    run(scenario())


def test_a_name_never_goes_to_another_twin_across_a_daemon_restart(node: Node, tmp_path: Path) -> None:
    """Issue 16, item 1 follow-up, DRA: twin A (serial 0001) is published as usb-serial-0001 and a
    claim is allocated that name. The daemon is killed; A is unplugged and its twin B plugged
    while it is down. Started again, it must not publish B as usb-serial-0001 (the allocation
    names only that), so the names it bound are kept in <state dir>/names.json. A bad file there
    is a warning and a fresh start."""
    sys_root = tmp_path / "sys"
    sysfs = FakeSysfs(str(sys_root))
    a = sysfs.cp2102(port="1-1.3", node="ttyUSB1", minor=1)
    mkdev(node.dev / a.node, major=a.major, minor=a.minor)

    async def scenario() -> None:
        async with dra_node(node, sys_root) as dra:
            api = dra.api
            await wait_for(lambda: set(api.devices(NODE)) == {"usb-serial-0001"}, 10, "A published")
            api.add_claim("default", "serial", "uid-serial", [
                {"request": "r", "driver": DRIVER, "pool": NODE, "device": "usb-serial-0001"}])
            dra.proc.popen.kill()
            dra.proc.popen.wait()
            (node.dev / a.node).unlink()
            sysfs.unplug(a)
            b = sysfs.cp2102(port="1-1.4", node="ttyUSB1", minor=1)
            mkdev(node.dev / b.node, major=b.major, minor=b.minor)
            dra.proc = start_daemon(node, api, dra.http_port, sys_root)
            dra.proc.wait_log("1 devices: ")  # the old slice stays until the new daemon writes
            [scanned] = [line for line in dra.proc.log.splitlines() if "1 devices: " in line]
            name = scanned.split("1 devices: ")[1]
            assert name.startswith("usb-serial-0001-"), scanned  # never B as usb-serial-0001
            await wait_for(lambda: set(api.devices(NODE)) == {name}, 30, "B published")
            answer = await dra.kubelet.prepare(DRIVER, ("default", "serial", "uid-serial"))
            assert "device usb-serial-0001 is no longer on node" in answer.claims["uid-serial"].error

            # A damaged file: a warning, a fresh start, and the daemon serves.
            dra.proc.popen.kill()
            dra.proc.popen.wait()
            (node.root / "state" / "names.json").write_text('{"kind": "smarter-device-manager/dra-n')
            dra.proc = start_daemon(node, api, dra.http_port, sys_root)
            await wait_for(lambda: answers(dra, "/readyz")[0] == 200, 30, "ready with a bad state file")
            dra.proc.wait_log("WARNING")
            assert "state file" in dra.proc.log and "is unreadable" in dra.proc.log
    run(scenario())


def test_a_bug_in_a_background_task_is_logged_shown_counted_and_retried(node: Node, tmp_path: Path) -> None:
    """Seen on a real cluster: a LookupError (ssl/idna, an image without the codec) inside the
    publisher ended its task silently; /readyz said 503 for ever with no reason. Injected here
    into the slice writer's write path (a prelude in the daemon's process) for as long as a flag
    file exists: the traceback is logged once at ERROR though it fails again and again, /readyz
    names it, the metric counts it; once the flag goes the writer, started again with backoff,
    publishes the slice and the daemon is ready."""
    flag = tmp_path / "fail-writes"
    flag.write_text("")
    prelude = f"""
import os
from smarter_device_manager.dra import publisher
real = publisher.Publisher._apply
async def failing(self, write):
    if os.path.exists({str(flag)!r}):
        raise LookupError("unknown encoding: idna (injected by the test)")
    return await real(self, write)
publisher.Publisher._apply = failing
"""
    metric = 'smarter_device_manager_dra_internal_errors_total{task="the slice writer"} '

    def failures(dra: Dra) -> int:
        lines = [line for line in answers(dra, "/metrics")[1].splitlines() if line.startswith(metric)]
        return int(float(lines[0].split()[-1])) if lines else 0

    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys", prelude=prelude) as dra:
            reason = "internal error in the slice writer: LookupError: unknown encoding: idna"
            await wait_for(lambda: reason in answers(dra, "/readyz")[1], 30, "/readyz names the bug")
            assert answers(dra, "/readyz")[0] == 503
            await wait_for(lambda: failures(dra) >= 2, 30, "retried, and counted each time")
            log = dra.proc.log
            assert log.count("Traceback (most recent call last)") == 1, log
            [line] = [line for line in log.splitlines() if "internal error in the slice writer" in line]
            assert line.split()[1] == "ERROR", line
            assert "in failing\nLookupError: unknown encoding: idna (injected by the test)" in log
            assert dra.api.devices(NODE) == {}
            flag.unlink()
            await wait_for(lambda: set(dra.api.devices(NODE)) == EXPECTED_NAMES, 60, "published")
            await wait_for(lambda: answers(dra, "/readyz")[0] == 200, 30, "ready once it recovered")
            assert "slice writer has run" in dra.proc.log
    run(scenario(), timeout=120)


def test_a_bug_in_the_rescan_worker_loses_no_change(node: Node, tmp_path: Path) -> None:
    """The rescan worker used to log a bug and wait for the next event, which on an idle node may
    never come: the device plugged stayed unpublished. Now the supervisor starts it again with
    backoff and the change it had taken is still there to do."""
    flag = tmp_path / "fail-rescans"
    prelude = f"""
import os
from smarter_device_manager.dra import daemon
real = daemon.DraDaemon._rescan
def failing(self, reason):
    if reason == "hotplug" and os.path.exists({str(flag)!r}):
        raise KeyError("injected by the test")
    return real(self, reason)
daemon.DraDaemon._rescan = failing
"""

    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys", prelude=prelude) as dra:
            await wait_for(lambda: set(dra.api.devices(NODE)) == EXPECTED_NAMES, 30, "published")
            flag.write_text("")
            mkdev(node.dev / "video7", major=81, minor=7)
            reason = "internal error in the rescan worker: KeyError"
            await wait_for(lambda: reason in answers(dra, "/readyz")[1], 30, "/readyz names the bug")
            flag.unlink()  # no event follows: the retry alone must publish video7
            await wait_for(lambda: "video7" in dra.api.devices(NODE), 60, "video7 published")
            await wait_for(lambda: answers(dra, "/readyz")[0] == 200, 30, "ready once it recovered")
    run(scenario(), timeout=120)

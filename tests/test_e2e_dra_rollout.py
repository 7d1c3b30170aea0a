"""A rolling update of DRA mode as a black box: two daemon processes at once on one node (the old
pod and the new one, each with its pod UID), the kubelet DRA stand-in holding both registrations,
the API server stand-in counting slice writes per daemon."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from conftest import DaemonProcess, Node, mkdev, needs_root
from fake_apiserver import FakeApiServer
from kubelet_dra_standin import KubeletDraStandin, wait_for
from test_e2e_dra import DRIVER, NODE, NODE_UID, SLICE, free_port, run, start_daemon

pytestmark = [needs_root, pytest.mark.e2e]

UID_A = "0a0a0a0a-1111-4111-8111-aaaaaaaaaaaa"
UID_B = "0b0b0b0b-2222-4222-8222-bbbbbbbbbbbb"
CONFIG = """\
- name: usb-serial
  pool: true
  subsystem: tty
  attributes: {idVendor: "10c4"}
  nummaxdevices: 1
  containerpath: /dev/usb-serial
- devicematch: ^video[0-9]*$
  nummaxdevices: 100
- devicematch: ^ttyUSB[0-9]+$
  nummaxdevices: 1
"""


def http(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def daemon(node: Node, api: FakeApiServer, sys_root: Path, kubelet_dir: Path, client: str, pod_uid: str,
           port: int) -> DaemonProcess:
    kubeconfig = api.kubeconfig(str(node.root / f"kubeconfig-{client}"), client)
    return start_daemon(node, api, port, sys_root, "--kubeconfig", kubeconfig,
                        "--kubelet-registry-dir", str(kubelet_dir / "plugins_registry"),
                        "--kubelet-plugins-dir", str(kubelet_dir / "plugins"), env={"SDM_POD_UID": pod_uid})


def test_two_daemons_share_claims_and_one_publishes_until_it_stops(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        from fakesysfs import FakeSysfs

        sys_root = tmp_path / "sys"
        sysfs = FakeSysfs(str(sys_root))
        mkdev(node.dev / "video0", major=81, minor=0)
        mkdev(node.dev / "ttyUSB0", major=188, minor=0)
        for device in (sysfs.cp2102(port="1-1.4", node="ttyUSB1", minor=1),):
            mkdev(node.dev / device.node, major=device.major, minor=device.minor)
        node.write_config(CONFIG)
        # the host's CDI dir, mounted by the chart (hostPath DirectoryOrCreate); never the daemon's job
        (node.root / "cdi").mkdir(exist_ok=True)
        api = FakeApiServer()
        api.add_node(NODE, NODE_UID)
        await api.start()
        # sockets named with a 36-character pod UID need a short dir (sun_path: 107 bytes)
        kubelet_dir = Path(tempfile.mkdtemp(prefix="sdm-"))
        kubelet = KubeletDraStandin(str(kubelet_dir / "plugins_registry"), NODE, api)
        await kubelet.start()
        registry, plugins = kubelet_dir / "plugins_registry", kubelet_dir / "plugins" / DRIVER
        try:
            port_a, port_b = free_port(), free_port()
            old = daemon(node, api, sys_root, kubelet_dir, "a", UID_A, port_a)
            await wait_for(lambda: DRIVER in kubelet.registered, 30, "A registered")
            await wait_for(lambda: SLICE in api.slices, 30, "A published")
            assert (registry / f"{DRIVER}-{UID_A}-reg.sock").is_socket()
            assert (plugins / f"dra-{UID_A}.sock").is_socket()
            slice_uid = api.slices[SLICE]["metadata"]["uid"]
            assert api.slices[SLICE]["metadata"]["ownerReferences"] == [
                {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID, "controller": True}]

            # the new pod starts beside the old one: both registered, only the old one writes
            new = daemon(node, api, sys_root, kubelet_dir, "b", UID_B, port_b)
            endpoint_a, endpoint_b = str(plugins / f"dra-{UID_A}.sock"), str(plugins / f"dra-{UID_B}.sock")
            await wait_for(lambda: kubelet.endpoints(DRIVER) == [endpoint_a, endpoint_b], 30,
                           "both registered")
            assert kubelet.registered[DRIVER] == endpoint_b, "the kubelet calls the newest"
            new.wait_log("standing by to take over")
            await wait_for(lambda: http(port_b, "/readyz")[0] == 200, 30, "B ready while standing by")
            assert "another instance publishes them" in http(port_b, "/readyz")[1]
            assert "smarter_device_manager_dra_publishing 0" in http(port_b, "/metrics")[1]
            assert "smarter_device_manager_dra_publishing 1" in http(port_a, "/metrics")[1]
            mkdev(node.dev / "video1", major=81, minor=1)
            await wait_for(lambda: "video1" in api.devices(NODE), 30, "hotplug published by A")
            await asyncio.sleep(0.5)  # B saw it too (its own rescan) and must not have written
            assert set(api.writes_by()) == {"a"}, api.writes_by()

            # prepares interleaved across both are serialized: no entry lost in the checkpoint
            names = [f"c{i}" for i in range(24)]
            for name in names:
                api.add_claim("default", name, f"uid-{name}", [
                    {"request": "r", "driver": DRIVER, "pool": NODE, "device": "video0"}])
            answers = await asyncio.gather(*(
                kubelet.prepare(DRIVER, ("default", name, f"uid-{name}"),
                                endpoint=endpoint_a if i % 2 else endpoint_b)
                for i, name in enumerate(names)))
            assert all(a.claims[f"uid-{n}"].error == "" for a, n in zip(answers, names, strict=True))
            saved = json.loads((node.root / "state" / "checkpoint.json").read_text())["claims"]
            assert set(saved) == {f"uid-{name}" for name in names}

            # one device of one claim at a time, across both daemons
            for name in ("tty1", "tty2"):
                api.add_claim("default", name, f"uid-{name}", [
                    {"request": "r", "driver": DRIVER, "pool": NODE, "device": "ttyusb0"}])
            first = await kubelet.prepare(DRIVER, ("default", "tty1", "uid-tty1"), endpoint=endpoint_a)
            assert first.claims["uid-tty1"].error == ""
            second = await kubelet.prepare(DRIVER, ("default", "tty2", "uid-tty2"), endpoint=endpoint_b)
            assert "still prepared on this node for default/tty1" in second.claims["uid-tty2"].error

            # a claim with a claim-specific CDI spec, prepared by the old daemon
            api.add_claim("default", "pair", "uid-pair", [
                {"request": "s", "driver": DRIVER, "pool": NODE, "device": "usb-serial-0001"}])
            pair = await kubelet.prepare(DRIVER, ("default", "pair", "uid-pair"), endpoint=endpoint_a)
            assert pair.claims["uid-pair"].error == ""
            claim_spec = node.root / "cdi" / f"{DRIVER}-claim_uid-pair.json"
            assert claim_spec.exists()
            again = await kubelet.prepare(DRIVER, ("default", "pair", "uid-pair"), endpoint=endpoint_b)
            assert again.claims["uid-pair"] == pair.claims["uid-pair"]
            new.wait_log("default/pair (uid uid-pair) from the checkpoint")

            # the old pod goes: the new one takes over publishing; the slice stays the same object
            writes = len(api.writes)
            old.signal(signal.SIGTERM)
            assert old.popen.wait(30) == 0
            await wait_for(lambda: kubelet.endpoints(DRIVER) == [endpoint_b], 30, "A deregistered")
            new.wait_log("this one publishes the ResourceSlices now")
            await wait_for(lambda: "smarter_device_manager_dra_publishing 1" in http(port_b, "/metrics")[1],
                           30, "B publishes")
            await wait_for(lambda: http(port_b, "/readyz")[0] == 200, 30, "B in sync")
            assert len(api.writes) == writes, "the takeover found the slice as it should be: no write"
            mkdev(node.dev / "video2", major=81, minor=2)
            await wait_for(lambda: "video2" in api.devices(NODE), 30, "hotplug published by B")
            assert [w.verb for w in api.writes[writes:]] == ["update"]
            assert api.writes[-1].client == "b"
            assert "delete" not in {w.verb for w in api.writes}
            assert api.slices[SLICE]["metadata"]["uid"] == slice_uid

            # claims prepared by the old daemon are unprepared by the new one
            gone = await kubelet.unprepare(DRIVER, ("default", "pair", "uid-pair"),
                                           ("default", "tty1", "uid-tty1"))
            assert gone.claims["uid-pair"].error == "" and gone.claims["uid-tty1"].error == ""
            assert not claim_spec.exists()
            saved = json.loads((node.root / "state" / "checkpoint.json").read_text())["claims"]
            assert "uid-pair" not in saved and "uid-tty1" not in saved
            retry = await kubelet.prepare(DRIVER, ("default", "tty2", "uid-tty2"))
            assert retry.claims["uid-tty2"].error == "", "released by the unprepare"
        finally:
            await kubelet.stop()
            await api.stop()
            for proc in node.procs:
                proc.stop()
            shutil.rmtree(kubelet_dir)
    run(scenario(), timeout=120)

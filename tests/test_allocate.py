"""Allocate hands over nothing from outside the dev dir, whatever changed since the scan.

A plugin is built from a real discovery walk, served on a unix socket and called
with the reference protobuf client. Between the scan and Allocate, a directory on
the way to the resource's nodes (or the matched directory itself) is swapped for a
symlink to an outside directory holding a real device node at the same relative
path: Allocate must refuse rather than hand that node over.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deviceplugin_pb2 as pb
import pytest
from conftest import IS_ROOT, mkdev, needs_root
from deviceplugin_grpc import DevicePluginStub
from grpclib import GRPCError, Status
from grpclib.client import Channel

from smarter_device_manager.config import parse_config
from smarter_device_manager.deviceplugin.plugin import DevicePlugin, Paths, PluginServer
from smarter_device_manager.discovery import directory_nodes, discover

pytestmark = needs_root


@dataclass
class Case:
    pattern: str
    resource: str
    make: Callable[[Path], object]  # the devices at scan time
    swapped: str  # the directory replaced by a symlink to <outside>/<same path>
    handed: list[str]  # container paths Allocate gives before the swap


def serial_link(dev: Path) -> None:
    mkdev(dev / "tty" / "ACM0", major=166)
    (dev / "serial" / "by-id").mkdir(parents=True)
    (dev / "serial" / "by-id" / "usb-X").symlink_to("../../tty/ACM0")


CASES = {
    "the directory itself": Case(
        "^snd$", "snd", lambda dev: mkdev(dev / "snd" / "controlC0", major=116), "snd",
        ["/dev/snd/controlC0"]),
    "a parent of the directory": Case(
        "^bus/usb$", "bus_usb", lambda dev: mkdev(dev / "bus" / "usb" / "001", major=189), "bus",
        ["/dev/bus/usb/001"]),
    "a parent of a device": Case(
        "^net/tun$", "net_tun", lambda dev: mkdev(dev / "net" / "tun", major=10, minor=200), "net",
        ["/dev/net/tun"]),
    "a parent of a symlink's target": Case(
        "^serial/by-id/", "serial_by-id_usb-X", serial_link, "tty",
        ["/dev/serial/by-id/usb-X"]),
}


def swap_for_outside_symlink(root: Path, rel: str) -> Path:
    """Move ``dev/<rel>`` away; put a symlink to ``outside/<rel>`` in its place, where the
    outside tree mirrors the original's nodes with real devices of its own."""
    dev, outside = root / "dev", root / "outside"
    original = dev / rel
    for path in sorted(original.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            (outside / rel / path.relative_to(original)).mkdir(parents=True, exist_ok=True)
        elif path.is_char_device():
            mkdev(outside / rel / path.relative_to(original), major=1, minor=7)  # /dev/full
    mkdev(outside / rel / "extra", major=1, minor=7)
    os.rename(original, dev / f"{rel}.moved")
    original.symlink_to(os.path.relpath(outside / rel, original.parent))
    return outside


async def allocate(plugin: DevicePlugin, socket: Path) -> list[str]:
    server = PluginServer(plugin, str(socket))
    await server.start()
    channel = Channel(path=str(socket))
    try:
        request = pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=["0"])])
        response = await DevicePluginStub(channel).Allocate(request, timeout=30)
        return sorted(d.container_path for d in response.container_responses[0].devices)
    finally:
        channel.close()
        await server.stop()


@pytest.mark.parametrize("case", sorted(CASES))
def test_allocate_refuses_nodes_reached_through_a_swapped_directory(case: str, tmp_path: Path) -> None:
    spec = CASES[case]
    dev = tmp_path / "dev"
    spec.make(dev)
    config = parse_config(f"- devicematch: {spec.pattern}\n  nummaxdevices: 1\n", "c")
    resource = discover(str(dev), config, "smarter-devices").resources[spec.resource]
    refused: list[str | None] = []
    plugin = DevicePlugin("smarter-devices/" + spec.resource, resource, Paths(str(dev), str(dev)),
                          lambda _name, _ids, _paths, error: refused.append(error))
    socket = tmp_path / "plugin.sock"

    assert asyncio.run(allocate(plugin, socket)) == spec.handed
    swap_for_outside_symlink(tmp_path, spec.swapped)
    with pytest.raises(GRPCError) as error:
        asyncio.run(allocate(plugin, socket))
    assert error.value.status is Status.FAILED_PRECONDITION
    message = str(error.value.message)
    assert f"/dev/{spec.swapped} is no longer a directory inside the dev dir" in message
    assert refused == [None, message]


def test_a_node_replaced_by_a_symlink_to_a_device_is_refused(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    mkdev(dev / "video0", major=81)
    config = parse_config("- devicematch: ^video0$\n  nummaxdevices: 1\n", "c")
    resource = discover(str(dev), config, "p").resources["video0"]
    plugin = DevicePlugin("p/video0", resource, Paths(str(dev), str(dev)))
    (dev / "video0").unlink()
    mkdev(tmp_path / "outside" / "video0", major=1, minor=7)
    (dev / "video0").symlink_to(tmp_path / "outside" / "video0")
    with pytest.raises(GRPCError) as error:
        asyncio.run(allocate(plugin, tmp_path / "plugin.sock"))
    assert "/dev/video0 is no longer a device node (a symlink)" in str(error.value.message)


def test_directory_nodes_now_skips_symlinks_and_reports_what_it_cannot_read(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    mkdev(dev / "snd" / "controlC0", major=116)
    mkdev(dev / "snd" / "by-path" / "pcm", major=116, minor=2)
    mkdev(tmp_path / "outside" / "evil", major=1, minor=7)
    (dev / "snd" / "link").symlink_to(tmp_path / "outside")
    nodes, problems = directory_nodes(str(dev), "snd")
    assert [n.path for n in nodes] == ["snd/by-path/pcm", "snd/controlC0"]
    assert problems == ()
    assert directory_nodes(str(dev), "nope") == ((), ("/dev/nope: No such file or directory",))


@pytest.mark.skipif(not IS_ROOT, reason="needs root to drop privileges")
def test_directory_nodes_reports_an_unreadable_subdirectory(reachable_tmp: Path) -> None:
    root = reachable_tmp  # reachable for nobody
    mkdev(root / "snd" / "controlC0", major=116)
    mkdev(root / "snd" / "secret" / "pcm", major=116, minor=2)
    (root / "snd").chmod(0o755)
    (root / "snd" / "secret").chmod(0)
    code = ("import json; from smarter_device_manager.discovery import directory_nodes;"
            f"nodes, problems = directory_nodes({str(root)!r}, 'snd');"
            "print(json.dumps([[n.path for n in nodes], list(problems)]))")
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=60)
    if result.returncode != 0 and "setpriv" in result.stderr:
        pytest.skip("setpriv unavailable")
    assert json.loads(result.stdout) == [["snd/controlC0"],
                                         ["/dev/snd/secret: Permission denied"]]


async def prepare_in_dra(tmp_path: Path, dev: Path, scanned: dict[str, Any], device: str, uid: str) -> str:
    """NodePrepareResources of one claim for ``device`` through DRA mode's node service, against
    the API server stand-in; the answer's error ('' when prepared)."""
    from fake_apiserver import FakeApiServer

    from smarter_device_manager.api import dra as dra_pb
    from smarter_device_manager.dra import kube
    from smarter_device_manager.dra.devices import Paths as DraPaths
    from smarter_device_manager.dra.locks import FileLock
    from smarter_device_manager.dra.node import Checkpoint, NodeService
    from smarter_device_manager.metrics import Metrics

    api = FakeApiServer()
    await api.start()
    client = kube.KubeClient(kube.load_kubeconfig(api.kubeconfig(str(tmp_path / "kc"))))
    try:
        api.add_claim("ns", uid, uid, [{"request": "r", "driver": "d.io", "pool": "n1", "device": device}])
        service = NodeService("d.io", "n1", client, lambda: scanned, lambda: None,
                              DraPaths(str(dev), str(dev)), "smarter-devices", str(tmp_path / "cdi"),
                              Checkpoint(str(tmp_path / "state")), Metrics(),
                              FileLock(str(tmp_path / "state" / "claims.lock")))
        answer = await service.prepare(dra_pb.Claim(namespace="ns", name=uid, uid=uid))
        return str(answer.error)
    finally:
        await client.close()
        await api.stop()


@pytest.mark.parametrize("case", sorted(CASES))
def test_dra_prepare_refuses_nodes_reached_through_a_swapped_directory(case: str, tmp_path: Path) -> None:
    """DRA mode's NodePrepareResources makes the same containment check as Allocate."""
    from smarter_device_manager.dra.devices import dra_devices

    spec = CASES[case]
    dev = tmp_path / "dev"
    spec.make(dev)
    (tmp_path / "cdi").mkdir()
    (tmp_path / "state").mkdir()
    config = parse_config(f"- devicematch: {spec.pattern}\n  nummaxdevices: 1\n", "c")
    devices, _ = dra_devices(discover(str(dev), config, "smarter-devices"), "smarter-devices", str(dev), None)
    scanned: dict[str, Any] = {d.name: d for d in devices}
    (name,) = scanned
    assert asyncio.run(prepare_in_dra(tmp_path, dev, scanned, name, "before")) == ""
    swap_for_outside_symlink(tmp_path, spec.swapped)
    error = asyncio.run(prepare_in_dra(tmp_path, dev, scanned, name, "after"))
    assert f"/dev/{spec.swapped} is no longer a directory inside the dev dir" in error

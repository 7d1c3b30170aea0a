"""The dra-classes controller as a black box: ``smarter-device-manager dra-classes`` as a
subprocess against the API-server stand-in (tests/fake_apiserver.py), which holds the slices of
several nodes (published by the real ``dra`` daemon in the last test, put there as another node's
daemon would in the others) and the cluster's DeviceClasses."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, Node, mkdev, needs_root
from fake_apiserver import FakeApiServer
from kubelet_dra_standin import wait_for

pytestmark = [pytest.mark.e2e]

DRIVER = "smarter-devices.io"
OURS = {"app.kubernetes.io/managed-by": "smarter-device-manager-dra-classes",
        "smarter-device-manager/driver": DRIVER}
DEADLINE = 30.0
TTY = "smarter-devices.io-ttyusb0"
I2C = "smarter-devices.io-i2c-1"


def run(coro: Coroutine[Any, Any, None], timeout: float = 90) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def device(name: str, resource: str) -> dict[str, Any]:
    return {"name": name, "attributes": {"resource": {"string": resource},
                                         "path": {"string": f"/dev/{name}"}}}


def node_slice(node: str, *devices: dict[str, Any]) -> dict[str, Any]:
    """What another node's daemon publishes."""
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": f"{node}-{DRIVER}-0"},
            "spec": {"driver": DRIVER, "nodeName": node,
                     "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                     "devices": list(devices)}}


def foreign_class(name: str, resource: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"selectors": [{"cel": {"expression": 'device.driver == "gpu.example.com"'}}]}
    if resource:
        spec["extendedResourceName"] = resource
    return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
            "metadata": {"name": name, "labels": {"owner": "admin"}}, "spec": spec}


@asynccontextmanager
async def controller(tmp_path: Path, api: FakeApiServer,
                     *extra: str) -> AsyncIterator[tuple[DaemonProcess, int]]:
    port = free_port()
    kubeconfig = api.kubeconfig(str(tmp_path / "kubeconfig"))
    proc = DaemonProcess.spawn(["dra-classes", "--kubeconfig", kubeconfig, "--http-address",
                                f"127.0.0.1:{port}", "--log-level", "debug", *extra],
                               tmp_path / f"dra-classes-{port}.log", None)
    try:
        yield proc, port
    finally:
        assert proc.stop() == 0, proc.log


def class_writes(api: FakeApiServer, name: str) -> list[str]:
    return [w.verb for w in api.writes
            if w.name == name and (w.obj is None or w.obj.get("kind") != "ResourceSlice")]


def test_classes_follow_the_fleet_and_foreign_classes_are_left_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        api = FakeApiServer()
        await api.start()
        try:
            api.put_slice(node_slice("node-a", device("ttyusb0", "smarter-devices/ttyUSB0"),
                                     device("video0", "smarter-devices/video0")))
            api.put_slice(node_slice("node-b", device("ttyusb0", "smarter-devices/ttyUSB0"),
                                     device("gps", "smarter-devices/gps"),
                                     device("i2c-1", "smarter-devices/i2c-1"),
                                     device("odd", "other-prefix/odd")))
            foreign = {c["metadata"]["name"]: c["metadata"]["resourceVersion"] for c in (
                api.put_class(foreign_class("smarter-devices.io-video0")),       # our name, not ours
                api.put_class(foreign_class("admin-gps", "smarter-devices/gps")),  # our resource, not ours
                api.put_class(foreign_class("gpu.example.com")))}
            async with controller(tmp_path, api, "--grace", "2") as (proc, port):
                await wait_for(lambda: http(port, "/readyz")[0] == 200, DEADLINE, "ready")
                await wait_for(lambda: {TTY, I2C} <= set(api.classes), DEADLINE, "classes of both nodes")
                tty = api.classes[TTY]
                assert tty["metadata"]["labels"] == OURS
                assert tty["spec"] == {
                    "extendedResourceName": "smarter-devices/ttyUSB0", "selectors": [{"cel": {"expression": (
                        'device.driver == "smarter-devices.io" && '
                        'device.attributes["smarter-devices.io"].resource == "smarter-devices/ttyUSB0"')}}]}
                # foreign classes: not written, and nothing of ours under their name or resource
                assert set(api.classes) == {TTY, I2C, *foreign}
                assert {n: api.classes[n]["metadata"]["resourceVersion"] for n in foreign} == foreign
                assert all(class_writes(api, n) == ["create"] for n in foreign)
                note = "DeviceClass admin-gps (not managed by this controller) already maps it"
                await wait_for(lambda: note in proc.log, DEADLINE, "the note about admin-gps")
                assert "a DeviceClass named smarter-devices.io-video0 exists and is not managed" in proc.log
                assert "resource 'other-prefix/odd' cannot be an extended resource name" in proc.log
                assert proc.log.count("admin-gps (not managed") == 1  # said once, not per event
                # node-b goes away: i2c-1's class goes after the grace, ttyUSB0's stays (node-a has it)
                gone_at = time.monotonic()
                api.remove_slice(f"node-b-{DRIVER}-0")
                await wait_for(lambda: I2C not in api.classes, DEADLINE, "i2c-1 removed")
                deleted = next(w for w in api.writes if w.name == I2C and w.verb == "delete")
                assert deleted.at - gone_at >= 2.0
                assert TTY in api.classes
                assert class_writes(api, TTY) == ["create"]
                # node-b back: the class again
                api.put_slice(node_slice("node-b", device("i2c-1", "smarter-devices/i2c-1")))
                await wait_for(lambda: I2C in api.classes, DEADLINE, "i2c-1 again")
                in_sync = "smarter_device_manager_dra_classes_in_sync 1"
                await wait_for(lambda: in_sync in http(port, "/metrics")[1], DEADLINE, "in sync")
                metrics = http(port, "/metrics")[1]
                assert 'smarter_device_manager_dra_class_writes_total{verb="create"} 3' in metrics
                assert 'smarter_device_manager_dra_class_writes_total{verb="delete"} 1' in metrics
                assert "smarter_device_manager_dra_classes_managed 2" in metrics
                # someone edits one of ours: put back
                api.put_class({**api.classes[TTY], "spec": {"selectors": [{"cel": {"expression": "true"}}]}})
                await wait_for(lambda: api.classes[TTY]["spec"] == tty["spec"], DEADLINE, "edit reverted")
        finally:
            await api.stop()

    run(scenario())


def test_a_device_back_within_the_grace_keeps_its_class(tmp_path: Path) -> None:
    async def scenario() -> None:
        api = FakeApiServer()
        await api.start()
        try:
            api.put_slice(node_slice("node-a", device("ttyusb0", "smarter-devices/ttyUSB0")))
            api.put_slice(node_slice("node-b", device("gps", "smarter-devices/gps")))
            async with controller(tmp_path, api, "--grace", "60") as (_, port):
                await wait_for(lambda: "smarter-devices.io-gps" in api.classes, DEADLINE, "class")

                def resources() -> str:
                    found = re.search(r"^smarter_device_manager_dra_classes_resources (\d+)",
                                      http(port, "/metrics")[1], re.M)
                    return found.group(1) if found else ""

                await wait_for(lambda: resources() == "2", DEADLINE, "two resources")
                api.remove_slice(f"node-b-{DRIVER}-0")  # unplugged, or the kubelet restarted
                await wait_for(lambda: resources() == "1", DEADLINE, "the controller saw it go")
                api.put_slice(node_slice("node-b", device("gps", "smarter-devices/gps")))
                await wait_for(lambda: resources() == "2", DEADLINE, "the controller saw it back")
                assert class_writes(api, "smarter-devices.io-gps") == ["create"]
        finally:
            await api.stop()

    run(scenario())


def test_rbac_refusal_is_reported_and_retried_and_a_compacted_watch_lists_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        api = FakeApiServer()
        await api.start()
        try:
            api.forbid.add(("create", "deviceclasses"))
            api.put_slice(node_slice("node-a", device("ttyusb0", "smarter-devices/ttyUSB0")))
            async with controller(tmp_path, api) as (proc, port):
                await wait_for(lambda: "cannot create" in http(port, "/readyz")[1], DEADLINE, "RBAC shown")
                status, text = http(port, "/readyz")
                assert status == 503
                assert ("needs the verb 'create' on 'deviceclasses.resource.k8s.io' in its ClusterRole "
                        "(the chart's templates/dra-classes.yaml)") in text
                assert "the dra-classes controller's ServiceAccount" in text
                api.forbid.clear()
                await wait_for(lambda: "smarter-devices.io-ttyusb0" in api.classes, DEADLINE, "retried")
                await wait_for(lambda: http(port, "/readyz")[0] == 200, DEADLINE, "ready again")
                # the watches are cut and their resourceVersion compacted away (410): list again
                api.drop_watches()
                api.put_class(foreign_class("one.example.com"))
                api.put_slice(node_slice("node-b", device("gps", "smarter-devices/gps")))
                del api.class_history[:-1]
                del api.history[:-1]
                await wait_for(lambda: "smarter-devices.io-gps" in api.classes, DEADLINE, "after a relist")
                await wait_for(lambda: "listing again" in proc.log, DEADLINE, "relist logged")
        finally:
            await api.stop()

    run(scenario())


def test_a_server_without_extended_resources_is_said_once_and_not_rewritten(tmp_path: Path) -> None:
    async def scenario() -> None:
        api = FakeApiServer(extended_resource_gate=False)  # Kubernetes 1.34/1.35 by default
        await api.start()
        try:
            api.put_slice(node_slice("node-a", device("ttyusb0", "smarter-devices/ttyUSB0")))
            async with controller(tmp_path, api) as (proc, port):
                await wait_for(lambda: TTY in api.classes, DEADLINE, "class")
                await wait_for(lambda: "DRAExtendedResource feature is off" in proc.log, DEADLINE, "said")
                api.put_slice(node_slice("node-b", device("gps", "smarter-devices/gps")))  # more events
                await wait_for(lambda: "smarter-devices.io-gps" in api.classes, DEADLINE, "second class")
                in_sync = "smarter_device_manager_dra_classes_in_sync 1"
                await wait_for(lambda: in_sync in http(port, "/metrics")[1], DEADLINE, "in sync")
                assert class_writes(api, TTY) == ["create"]
                assert class_writes(api, "smarter-devices.io-gps") == ["create"]
                assert proc.log.count("DRAExtendedResource feature is off") == 1
        finally:
            await api.stop()

    run(scenario())


_SELECTOR = re.compile(r'device\.driver == "([^"]+)" && '
                       r'device\.attributes\["([^"]+)"\]\.resource == "([^"]+)"')


def selects(expression: str, driver: str, dev: dict[str, Any]) -> bool:
    """Our selector's one form, evaluated as CEL would (the real CEL runs in scripts/dra-smoke.sh)."""
    match = _SELECTOR.fullmatch(expression)
    assert match, expression
    value = (dev.get("attributes") or {}).get("resource", {}).get("string")
    return match.group(1) == driver and match.group(2) == driver and value == match.group(3)


@needs_root
def test_classes_select_exactly_what_the_real_daemon_publishes(node: Node, tmp_path: Path) -> None:
    """The node daemon (subprocess, real device nodes, kubelet stand-in) publishes; the controller's
    class for each resource name selects exactly the devices device-plugin mode advertised under it."""
    from test_e2e_dra import NODE, dra_node, make_devices

    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        # --removal-grace 0: the unplugged device leaves the slice at once (no taint, no grace)
        async with dra_node(node, tmp_path / "sys", extra=("--removal-grace", "0")) as dra:
            api = dra.api
            await wait_for(lambda: len(api.devices(NODE)) == 5, DEADLINE, "slices")
            async with controller(tmp_path, api, "--grace", "1") as (proc, _):
                wanted = {"smarter-devices/ttyUSB0": {"ttyusb0"}, "smarter-devices/video0": {"video0"},
                          "smarter-devices/snd": {"snd"},
                          "smarter-devices/usb-serial": {"usb-serial-0001", "usb-serial-0002"}}

                def mapped() -> dict[str, set[str]]:
                    return {c["spec"]["extendedResourceName"]: {
                        name for name, dev in api.devices().items()
                        if selects(c["spec"]["selectors"][0]["cel"]["expression"], DRIVER, dev)}
                        for c in api.classes.values()}

                await wait_for(lambda: mapped() == wanted, DEADLINE, f"classes {wanted}")
                (node.dev / "ttyUSB0").unlink()  # unplugged: its class goes after the grace
                await wait_for(lambda: "smarter-devices/ttyUSB0" not in mapped(), DEADLINE, "ttyUSB0 gone")
                mkdev(node.dev / "ttyUSB0", major=188, minor=0)
                await wait_for(lambda: mapped() == wanted, DEADLINE, "ttyUSB0 back")
                assert "DeviceClass smarter-devices.io-ttyusb0: deleted" in proc.log

    run(scenario())

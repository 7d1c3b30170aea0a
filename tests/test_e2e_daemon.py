"""The daemon as a black box: a subprocess, real unix sockets, the kubelet stand-in.

Every step waits for a condition (conftest.DEADLINE); none asserts how long it took: the
latency targets (start, kubelet restart, SIGTERM) are measured by bench/run.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import deviceplugin_pb2 as pb
import pytest
from conftest import DEADLINE, Node, mkdev, needs_root
from grpclib import GRPCError, Status
from kubelet_standin import KubeletStandin

pytestmark = [needs_root, pytest.mark.e2e]

CONFIG = """\
- devicematch: ^video[0-9]*$
  nummaxdevices: 3
- devicematch: ^net/tun$
  nummaxdevices: 2
- devicematch: ^snd$
  nummaxdevices: 2
- devicematch: ^sda$
  nummaxdevices: 1
- devicematch: ^serial/by-id/
  nummaxdevices: 1
- devicematch: ^ttyUSB[0-9]+$
  nummaxdevices: 1
"""
VIDEO = "smarter-devices/video0"


def run(coro: Coroutine[Any, Any, None], timeout: float = 300) -> None:
    """Run a scenario; ``timeout`` only stops one that hangs (each wait has its own deadline)."""
    asyncio.run(asyncio.wait_for(coro, timeout))


def make_devices(dev: Path) -> None:
    mkdev(dev / "video0", major=81, minor=0)
    mkdev(dev / "net" / "tun", major=10, minor=200)
    mkdev(dev / "snd" / "controlC0", major=116, minor=0)
    mkdev(dev / "snd" / "pcmC0D0p", major=116, minor=16)
    mkdev(dev / "sda", kind="b", major=8, minor=0)
    mkdev(dev / "ttyUSB0", major=188, minor=0)
    (dev / "serial" / "by-id").mkdir(parents=True)
    (dev / "serial" / "by-id" / "usb-FTDI_ABC-if00").symlink_to("../../ttyUSB0")
    (dev / "notes.txt").write_text("regular file")  # matched by nothing


EXPECTED = {
    "smarter-devices/video0": 3,
    "smarter-devices/net_tun": 2,
    "smarter-devices/snd": 2,
    "smarter-devices/sda": 1,
    "smarter-devices/ttyUSB0": 1,
    "smarter-devices/serial_by-id_usb-FTDI_ABC-if00": 1,
}


def all_streaming(kubelet: KubeletStandin, expected: dict[str, int]) -> bool:
    return all(kubelet.healthy(name) == count and kubelet.capacity(name) == count
               for name, count in expected.items())


async def started(node: Node, *extra: str) -> KubeletStandin:
    kubelet = KubeletStandin(str(node.plugins))
    await kubelet.start()
    node.start(*extra)
    await kubelet.wait_for(lambda: all_streaming(kubelet, EXPECTED))
    return kubelet


def test_registers_every_resource_and_streams_its_devices(node: Node) -> None:
    make_devices(node.dev)
    node.write_config(CONFIG)

    async def scenario() -> None:
        kubelet = await started(node)
        requests = {r.resource_name: r for r in kubelet.register_requests}
        assert set(requests) == set(EXPECTED)
        video = requests[VIDEO]
        assert video.version == "v1beta1"
        assert video.endpoint == "smarter-video0.sock"
        assert (node.plugins / video.endpoint).is_socket()
        state = kubelet.plugins[VIDEO]
        assert state.options.get_preferred_allocation_available
        assert not state.options.pre_start_required
        assert sorted(state.devices) == ["0", "1", "2"]
        assert all(i.isprintable() for s in kubelet.plugins.values() for i in s.devices)
        assert kubelet.rejected == []
        await kubelet.stop()

    run(scenario())


def test_allocate_hands_over_device_nodes_and_rejects_unknown_ids(node: Node) -> None:
    make_devices(node.dev)
    node.write_config(CONFIG)

    async def scenario() -> None:
        kubelet = await started(node)
        response = await kubelet.allocate(VIDEO, ["1"])
        [container] = response.container_responses
        assert [(d.container_path, d.host_path, d.permissions) for d in container.devices] == [
            ("/dev/video0", f"{node.dev}/video0", "rw")]

        snd = (await kubelet.allocate("smarter-devices/snd", ["0"])).container_responses[0]
        assert sorted(d.container_path for d in snd.devices) == [
            "/dev/snd/controlC0", "/dev/snd/pcmC0D0p"]

        link = "smarter-devices/serial_by-id_usb-FTDI_ABC-if00"
        serial = (await kubelet.allocate(link, ["0"])).container_responses[0].devices[0]
        assert serial.container_path == "/dev/serial/by-id/usb-FTDI_ABC-if00"
        assert serial.host_path == f"{node.dev}/ttyUSB0"

        with pytest.raises(GRPCError) as error:
            await kubelet.allocate(VIDEO, ["1", "7", "x"])
        assert error.value.status is Status.INVALID_ARGUMENT
        assert "'7'" in str(error.value.message) and "'x'" in str(error.value.message)

        two = await kubelet.plugins[VIDEO].stub.Allocate(pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=["0"]),
            pb.ContainerAllocateRequest(devices_ids=["1", "2"])]))
        assert len(two.container_responses) == 2
        await kubelet.stop()

    run(scenario())
    assert "allocated smarter-devices/video0 IDs ['1']: /dev/video0" in node.procs[0].log


def test_allocate_refuses_a_node_replaced_by_a_regular_file(node: Node) -> None:
    make_devices(node.dev)
    node.write_config(CONFIG)

    async def scenario() -> None:
        kubelet = await started(node, "--removal-grace", "60")
        node.procs[0].signal(signal.SIGSTOP)  # swap it before the daemon can rescan
        (node.dev / "video0").unlink()
        (node.dev / "video0").write_text("not a device")
        try:
            with pytest.raises(GRPCError) as error:
                task = asyncio.create_task(kubelet.allocate(VIDEO, ["0"]))
                # Give the request a moment to reach the stopped daemon. Not a timing
                # assumption: if it arrives after the rescan, the answer is the same refusal
                # (the device is gone); Allocate's own check is tested in test_allocate.py.
                await asyncio.sleep(0.05)
                node.procs[0].signal(signal.SIGCONT)
                await task
        finally:
            node.procs[0].signal(signal.SIGCONT)
        assert error.value.status in (Status.FAILED_PRECONDITION,)
        await kubelet.stop()

    run(scenario())


def test_preferred_allocation_and_prestart(node: Node) -> None:
    make_devices(node.dev)
    node.write_config(CONFIG)

    async def scenario() -> None:
        kubelet = await started(node)
        stub = kubelet.plugins[VIDEO].stub
        answer = await stub.GetPreferredAllocation(pb.PreferredAllocationRequest(
            container_requests=[pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=["0", "1", "2"], must_include_deviceIDs=["2"],
                allocation_size=2)]))
        ids = list(answer.container_responses[0].deviceIDs)
        assert ids[0] == "2" and len(ids) == 2 and len(set(ids)) == 2
        assert await stub.PreStartContainer(pb.PreStartContainerRequest(devices_ids=["0"])) == \
            pb.PreStartContainerResponse()
        await kubelet.stop()

    run(scenario())


def test_waits_for_the_kubelet_then_registers(node: Node) -> None:
    make_devices(node.dev)
    node.write_config(CONFIG)
    proc = node.start()
    proc.wait_log("waiting for the kubelet")

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        # the real kubelet deletes every socket first: our sockets vanish too
        await kubelet.start()
        await kubelet.wait_for(lambda: all_streaming(kubelet, EXPECTED))
        await kubelet.stop()

    run(scenario())
    assert proc.popen.poll() is None, "it waited, serving, and did not exit without a kubelet"


def test_kubelet_restart_reregisters_everything(node: Node) -> None:
    make_devices(node.dev)
    node.write_config(CONFIG)

    async def scenario() -> None:
        kubelet = await started(node)
        before = len(kubelet.register_requests)
        for _ in range(2):
            await kubelet.restart()
            await kubelet.wait_for(lambda: all_streaming(kubelet, EXPECTED))
        assert len(kubelet.register_requests) >= before + 2 * len(EXPECTED)
        await kubelet.stop()

    run(scenario())


def test_kubelet_sock_recreated_while_our_sockets_survive_reregisters_everything(node: Node) -> None:
    """Only kubelet.sock tells the daemon the kubelet restarted: it must register every
    resource again on the sockets it still serves (no socket is lost to trigger it)."""
    make_devices(node.dev)
    node.write_config(CONFIG)

    def our_sockets() -> dict[str, int]:
        return {p.name: p.stat().st_ino for p in node.plugins.iterdir() if p.name != "kubelet.sock"}

    async def scenario() -> None:
        kubelet = await started(node)
        sockets = our_sockets()
        assert len(sockets) == len(EXPECTED)
        before = len(kubelet.register_requests)
        await kubelet.restart(delete_sockets=False)
        assert not any(s.streaming for s in kubelet.plugins.values()), "the old streams died"

        def reregistered() -> bool:
            names = {r.resource_name for r in kubelet.register_requests[before:]}
            return names == set(EXPECTED) and all_streaming(kubelet, EXPECTED)

        await kubelet.wait_for(reregistered)
        assert our_sockets() == sockets, "the same sockets, not new ones"
        assert {r.endpoint for r in kubelet.register_requests[before:]} == set(sockets)
        await kubelet.stop()

    run(scenario())
    assert "kubelet.sock was created" in node.procs[0].log


def test_our_socket_deleted_is_served_again_and_reregistered(node: Node) -> None:
    make_devices(node.dev)
    node.write_config(CONFIG)

    async def scenario() -> None:
        kubelet = await started(node)
        count = sum(r.resource_name == VIDEO for r in kubelet.register_requests)
        (node.plugins / "smarter-video0.sock").unlink()
        await kubelet.wait_for(
            lambda: sum(r.resource_name == VIDEO for r in kubelet.register_requests) > count
            and kubelet.healthy(VIDEO) == 3)
        assert (node.plugins / "smarter-video0.sock").is_socket()
        response = await kubelet.allocate(VIDEO, ["0"])
        assert response.container_responses[0].devices[0].container_path == "/dev/video0"
        await kubelet.stop()

    run(scenario())


def test_failed_registration_is_retried_for_that_resource_alone(node: Node) -> None:
    make_devices(node.dev)
    node.write_config(CONFIG)

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        failures = {"left": 2}
        real_register = kubelet.register

        async def flaky(request: pb.RegisterRequest) -> None:
            if request.resource_name == VIDEO and failures["left"]:
                failures["left"] -= 1
                raise GRPCError(Status.UNAVAILABLE, "kubelet busy")
            await real_register(request)

        kubelet.register = flaky  # type: ignore[method-assign]
        await kubelet.start()
        node.start()
        others = {k: v for k, v in EXPECTED.items() if k != VIDEO}
        await kubelet.wait_for(lambda: all_streaming(kubelet, others))
        await kubelet.wait_for(lambda: kubelet.healthy(VIDEO) == 3)
        assert failures["left"] == 0
        await kubelet.stop()

    run(scenario())
    log = node.procs[0].log
    assert "registering smarter-devices/video0 with the kubelet failed (attempt 1)" in log


def test_sighup_registers_again(node: Node) -> None:
    make_devices(node.dev)
    node.write_config(CONFIG)

    async def scenario() -> None:
        kubelet = await started(node)
        before = len(kubelet.register_requests)
        node.procs[0].signal(signal.SIGHUP)
        await kubelet.wait_for(
            lambda: len(kubelet.register_requests) >= before + len(EXPECTED))
        await kubelet.wait_for(lambda: all_streaming(kubelet, EXPECTED))
        await kubelet.stop()

    run(scenario())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_removes_sockets(node: Node, sig: int) -> None:
    make_devices(node.dev)
    node.write_config(CONFIG)

    async def scenario() -> None:
        kubelet = await started(node)
        proc = node.procs[0]
        proc.signal(sig)
        code = await asyncio.get_running_loop().run_in_executor(None, proc.popen.wait, DEADLINE)
        assert code == 0
        assert sorted(os.listdir(node.plugins)) == ["kubelet.sock"]
        await kubelet.wait_for(lambda: all(kubelet.healthy(n) == 0 for n in EXPECTED))
        assert all(kubelet.capacity(n) == c for n, c in EXPECTED.items())
        await kubelet.stop()

    run(scenario())


def test_bad_names_are_reported_and_the_rest_still_works(node: Node) -> None:
    make_devices(node.dev)
    mkdev(node.dev / ("video" + "9" * 70))
    mkdev(node.dev / "net" / "tun_")  # ends in '_' once sanitised
    node.write_config(CONFIG + "- devicematch: ^net/tun_$\n  nummaxdevices: 1\n")

    async def scenario() -> None:
        await (await started(node)).stop()

    run(scenario())
    log = node.procs[0].log
    assert "would be rejected by the kubelet: it is 75 characters long" in log
    assert "net/tun_: resource name smarter-devices/net_tun_ would be rejected" in log


def test_invalid_config_at_start_exits_2_with_the_errors(node: Node) -> None:
    node.write_config("- devicematc: ^video0$\n  nummaxdevices: 1\n")
    proc = node.start()
    assert proc.popen.wait(DEADLINE) == 2
    assert "conf.yaml:1: rule 1: unknown key 'devicematc'; did you mean 'devicematch'?" in proc.log
    assert "Traceback" not in proc.log


def test_missing_explicit_config_is_an_error(node: Node) -> None:
    proc = node.start()  # node.config was never written
    assert proc.popen.wait(DEADLINE) == 2
    assert "no such file" in proc.log


def test_env_variables_configure_serve(node: Node) -> None:
    make_devices(node.dev)
    node.write_config(CONFIG)

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        node.start(args=["serve"], env={
            "SDM_DEV_DIR": str(node.dev), "SDM_PLUGIN_DIR": str(node.plugins),
            "SDM_CONFIG": str(node.config), "SDM_RESOURCE_PREFIX": "edge.example.com"})
        expected = {n.replace("smarter-devices", "edge.example.com"): c for n, c in EXPECTED.items()}
        await kubelet.wait_for(lambda: all_streaming(kubelet, expected))
        assert kubelet.plugins["edge.example.com/video0"].endpoint == "edge_example_com-video0.sock"
        await kubelet.stop()

    run(scenario())


def test_host_dev_dir_and_zero_capacity(node: Node) -> None:
    mkdev(node.dev / "video0", major=81)
    mkdev(node.dev / "vcs", major=7)
    node.write_config("- {devicematch: ^video0$, nummaxdevices: 2}\n"
                      "- {devicematch: ^vcs$, nummaxdevices: 0}\n")

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        node.start("--host-dev-dir", "/host/dev")
        await kubelet.wait_for(lambda: kubelet.healthy(VIDEO) == 2
                               and kubelet.plugins.get("smarter-devices/vcs") is not None
                               and kubelet.plugins["smarter-devices/vcs"].streaming)
        assert kubelet.capacity("smarter-devices/vcs") == 0, "registered with capacity 0"
        spec = (await kubelet.allocate(VIDEO, ["0"])).container_responses[0].devices[0]
        assert (spec.container_path, spec.host_path) == ("/dev/video0", "/host/dev/video0")
        await kubelet.stop()

    run(scenario())


def test_bad_directories_and_commands_fail_clearly(node: Node) -> None:
    (node.root / "a-file").write_text("x")
    cases = [
        (["serve", "--dev-dir", str(node.root / "missing"), "--plugin-dir", str(node.plugins)], 2,
         "dev dir"),
        (["serve", "--dev-dir", str(node.dev), "--plugin-dir", str(node.root / "a-file" / "p")], 1,
         "a-file/p: Not a directory"),
        (["list", "--dev-dir", str(node.root / "missing")], 2, "is not a directory"),
        (["bogus"], 2, "invalid choice"),
    ]
    for argv, code, message in cases:
        proc = node.start(args=argv)
        assert proc.popen.wait(DEADLINE) == code, (argv, proc.log)
        assert message in proc.log and "Traceback" not in proc.log, proc.log

"""Unplugged devices in DRA mode as a black box: the daemon as a subprocess, real device nodes
(mknod, unlink), the kubelet DRA stand-in watching device health over real gRPC on the plugin
socket as 1.36's kubelet does, and the API server stand-in (which sets a taint's ``timeAdded``
and validates taints as 1.36 does)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from conftest import Node, mkdev, needs_root
from kubelet_dra_standin import HEALTH_V1, HEALTH_V1ALPHA1, KubeletDraStandin, wait_for
from test_e2e_dra import DRIVER, NODE, dra_node, make_devices, run

pytestmark = [needs_root, pytest.mark.e2e]

KEY = f"{DRIVER}/unplugged"
ALL = {"video0", "ttyusb0", "snd", "usb-serial-0001", "usb-serial-0002"}


def test_health_stream_follows_unplug_and_replug_and_ends_with_the_daemon(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys") as dra:
            kubelet = dra.kubelet

            def health(device: str) -> tuple[str, str]:
                return kubelet.health(DRIVER, NODE, device)

            # Healthy on open: every device, in the first message
            await wait_for(lambda: bool(kubelet.reports), 30, "a health report")
            first = kubelet.reports[0]
            assert {name for _, name in first.devices} == ALL
            assert {h for h, _, _ in first.devices.values()} == {"Healthy"}
            assert {t for _, _, t in first.devices.values()} == {30}
            assert kubelet.health_streams == {DRIVER: HEALTH_V1ALPHA1}

            # unplug: Unhealthy with a message, at once (not at the next re-send)
            (node.dev / "ttyUSB0").unlink()
            await wait_for(lambda: health("ttyusb0")[0] == "Unhealthy", 30, "Unhealthy")
            _, message = health("ttyusb0")
            assert message.startswith("unplugged ") and " s ago" in message, message
            assert health("video0") == ("Healthy", "")
            # the re-send keeps it Unhealthy (and says how long ago) with no event in between
            count = len(kubelet.reports)
            await wait_for(lambda: len(kubelet.reports) >= count + 1, 30, "a re-send")
            assert health("ttyusb0")[0] == "Unhealthy"

            # replug: Healthy again
            mkdev(node.dev / "ttyUSB0", major=188, minor=0)
            await wait_for(lambda: health("ttyusb0") == ("Healthy", ""), 30, "Healthy again")

            # the daemon stops: the stream ends and the kubelet shows Unknown
            dra.proc.signal(signal.SIGTERM)
            assert dra.proc.popen.wait(10) == 0
            await wait_for(lambda: health("video0") == ("Unknown", ""), 30, "Unknown")
            assert DRIVER not in kubelet.health_streams
    run(scenario(), timeout=120)


def test_a_1_37_kubelet_picks_v1_from_getinfo(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        kubelet = KubeletDraStandin(str(node.root / "plugins_registry"), NODE, kubernetes="1.37")
        async with dra_node(node, tmp_path / "sys", kubelet=kubelet):
            await wait_for(lambda: bool(kubelet.reports), 30, "a health report over v1")
            assert kubelet.health_streams == {DRIVER: HEALTH_V1}
            assert kubelet.health(DRIVER, NODE, "video0") == ("Healthy", "")
    run(scenario())


def test_unplugged_device_stays_tainted_through_its_grace_and_a_daemon_restart(
        node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys", extra=("--removal-grace", "6s")) as dra:
            api = dra.api
            await wait_for(lambda: set(api.devices(NODE)) == ALL, 30, "slices")
            (node.dev / "video0").unlink()
            await wait_for(lambda: "taints" in api.devices(NODE)["video0"], 30, "taint")
            taint = api.devices(NODE)["video0"]["taints"]
            assert [(t["key"], t["effect"]) for t in taint] == [(KEY, "NoSchedule")]
            stamp = taint[0]["timeAdded"]
            assert stamp.endswith("Z"), "set by the server"
            assert "taints" not in api.devices(NODE)["ttyusb0"]
            # a restarted daemon keeps it tainted with the same timeAdded, and writes nothing
            writes = len(api.writes)
            dra.restart_daemon()
            dra.kubelet._seen.clear()
            await wait_for(lambda: "still in their removal grace" in dra.proc.log, 30, "adopted")
            await wait_for(lambda: dra.http("/readyz")[0] == 200, 30, "ready")
            assert len(api.writes) == writes
            assert api.devices(NODE)["video0"]["taints"][0]["timeAdded"] == stamp
            await wait_for(lambda: dra.kubelet.health(DRIVER, NODE, "video0")[0] == "Unhealthy", 30)
            # the grace (from timeAdded) ends: the device leaves the slice, without any event
            await wait_for(lambda: "video0" not in api.devices(NODE), 30, "dropped after the grace")
            assert "removal grace over: video0" in dra.proc.log
            assert set(api.devices(NODE)) == ALL - {"video0"}
    run(scenario())


def test_replug_clears_the_taint_and_noexecute_is_an_option(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        make_devices(node, tmp_path / "sys")
        async with dra_node(node, tmp_path / "sys", extra=("--unplugged-taint-effect", "NoExecute")) as dra:
            api = dra.api
            await wait_for(lambda: set(api.devices(NODE)) == ALL, 30, "slices")
            (node.dev / "ttyUSB2").unlink()  # a pool member, named by its identity
            await wait_for(lambda: "taints" in api.devices(NODE)["usb-serial-0002"], 30, "taint")
            assert api.devices(NODE)["usb-serial-0002"]["taints"][0]["effect"] == "NoExecute"
            _, text = dra.http("/metrics")
            assert "smarter_device_manager_dra_unplugged_devices 1" in text
            mkdev(node.dev / "ttyUSB2", major=188, minor=2)
            await wait_for(lambda: "taints" not in api.devices(NODE)["usb-serial-0002"], 30, "untainted")
            assert "back: usb-serial-0002" in dra.proc.log
    run(scenario())


def test_slices_are_cut_at_64_devices_while_one_is_tainted(node: Node, tmp_path: Path) -> None:
    async def scenario() -> None:
        for i in range(100):
            mkdev(node.dev / f"ttyUSB{i}", major=188, minor=i)
        config = "- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 1\n"
        async with dra_node(node, tmp_path / "sys", config=config) as dra:
            api = dra.api
            await wait_for(lambda: len(api.devices(NODE)) == 100, 30, "slices")
            assert len(api.slices) == 1
            (node.dev / "ttyUSB7").unlink()
            await wait_for(lambda: len(api.slices) == 2, 30, "cut at 64")
            assert sorted(len(s["spec"]["devices"]) for s in api.slices.values()) == [36, 64]
            assert len(api.devices(NODE)) == 100 and "taints" in api.devices(NODE)["ttyusb7"]
            mkdev(node.dev / "ttyUSB7", major=188, minor=7)
            await wait_for(lambda: len(api.slices) == 1, 30, "one slice again")
    run(scenario())

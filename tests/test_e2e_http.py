"""The HTTP listener of a running daemon: /healthz, /readyz and /metrics.

Daemons listen on 127.0.0.1:0 and the test reads the port from the log (no port picked
in advance that another process could take); every wait has a deadline, no step is timed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.error import HTTPError

import pytest
from conftest import DEADLINE, DaemonProcess, Node, mkdev, needs_root
from grpclib import GRPCError
from kubelet_standin import KubeletStandin

pytestmark = [needs_root, pytest.mark.e2e]

TTY = "- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 2\n"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=DEADLINE) as response:
            return response.status, response.read().decode()
    except HTTPError as error:
        return error.code, error.read().decode()


async def aget(port: int, path: str) -> tuple[int, str]:
    return await asyncio.get_running_loop().run_in_executor(None, get, port, path)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 300))  # only stops a hung scenario


def metric(text: str, name: str, labels: str = "", default: float | None = None) -> float:
    """A sample's value; ``default`` for a counter never incremented (absent)."""
    pattern = re.escape(f"smarter_device_manager_{name}{labels}") + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.M)
    if match is None and default is not None:
        return default
    assert match, f"{name}{labels} not in:\n{text}"
    return float(match.group(1))


async def listener_port(proc: DaemonProcess) -> int:
    """The port of a daemon started with ``--http-address 127.0.0.1:0``."""
    await asyncio.get_running_loop().run_in_executor(None, proc.wait_log, "HTTP listener on")
    match = re.search(r"HTTP listener on 127\.0\.0\.1:(\d+)", proc.log)
    assert match, proc.log
    return int(match.group(1))


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)


REASONS = ("start", "overflow", "sighup", "config", "retry", "grace", "hotplug")


async def rescans(port: int) -> dict[str, float]:
    _, text = await aget(port, "/metrics")
    counts = {r: metric(text, "rescans_total", f'{{reason="{r}"}}', 0) for r in REASONS}
    counts["events"] = metric(text, "hotplug_events_total", "", 0)
    return {k: v for k, v in counts.items() if v}


def test_probes_follow_the_kubelet_and_the_config(node: Node) -> None:
    mkdev(node.dev / "ttyUSB0", major=188)
    node.write_config(TTY)

    async def scenario() -> None:
        proc = node.start("--http-address", "127.0.0.1:0")
        port = await listener_port(proc)
        assert await aget(port, "/healthz") == (200, "ok\n")
        status, body = await aget(port, "/readyz")
        assert status == 503
        assert "kubelet not running" in body
        assert "smarter-devices/ttyUSB0 not registered yet" in body

        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        await kubelet.wait_for(lambda: kubelet.healthy("smarter-devices/ttyUSB0") == 2)

        async def ready() -> bool:
            return await aget(port, "/readyz") == (200, "ready: 1 resources registered\n")
        await eventually(ready, "/readyz says ready")

        await kubelet.allocate("smarter-devices/ttyUSB0", ["1"])
        with pytest.raises(GRPCError):
            await kubelet.allocate("smarter-devices/ttyUSB0", ["9"])
        mkdev(node.dev / "ttyUSB1", major=188, minor=1)
        await kubelet.wait_for(lambda: kubelet.healthy("smarter-devices/ttyUSB1") == 2)
        (node.dev / "ttyUSB1").unlink()
        await kubelet.wait_for(lambda: kubelet.healthy("smarter-devices/ttyUSB1") == 0)
        _, text = await aget(port, "/metrics")
        assert metric(text, "allocations_total", '{resource="smarter-devices/ttyUSB0"}') == 1
        assert metric(text, "allocation_errors_total", '{resource="smarter-devices/ttyUSB0"}') == 1
        assert metric(text, "resources", '{state="registered"}') == 1
        assert metric(text, "resources", '{state="unhealthy"}') == 1
        assert metric(text, "devices", '{health="Healthy"}') == 2
        assert metric(text, "devices", '{health="Unhealthy"}') == 2
        assert metric(text, "registrations_total", '{result="success"}') >= 2
        assert metric(text, "kubelet_restarts_total") == 1
        assert metric(text, "hotplug_events_total") >= 2
        assert metric(text, "config_valid") == 1
        assert metric(text, "build_info", '{version="2.2.0"}') == 1
        assert metric(text, "listandwatch_messages_total") >= 3
        assert "# TYPE smarter_device_manager_allocations_total counter" in text

        bad = node.config.with_name("bad.yaml")
        bad.write_text("- devicematch: '('\n")
        os.rename(bad, node.config)
        await asyncio.get_running_loop().run_in_executor(None, proc.wait_log, "rejected")
        status, body = await aget(port, "/readyz")
        assert status == 503
        assert "config rejected" in body and "not a valid regular expression" in body
        _, text = await aget(port, "/metrics")
        assert metric(text, "config_valid") == 0
        assert metric(text, "config_reloads_total", '{result="rejected"}') == 1
        assert kubelet.healthy("smarter-devices/ttyUSB0") == 2, "still serving the last good config"

        assert (await aget(port, "/nope"))[0] == 404
        await kubelet.stop()

    run(scenario())


def test_bad_http_address_and_durations_are_usage_errors(node: Node) -> None:
    for args in (["--http-address", "nonsense"], ["--http-address", ":99999"],
                 ["--removal-grace", "-5"], ["--removal-grace", "soon"],
                 ["--resource-prefix", "Bad_Prefix"], ["--log-format", "xml"]):
        result = subprocess.run([sys.executable, "-m", "smarter_device_manager", "serve", *args],
                                capture_output=True, text=True, check=False, timeout=DEADLINE)
        assert result.returncode == 2, args
        assert "error:" in result.stderr and "Traceback" not in result.stderr
    env = {**os.environ, "SDM_HTTP_ADDRESS": "nope"}
    result = subprocess.run([sys.executable, "-m", "smarter_device_manager", "serve"],
                            capture_output=True, text=True, check=False, timeout=DEADLINE, env=env)
    assert result.returncode == 2 and "not HOST:PORT" in result.stderr


def test_port_in_use_fails_clearly(node: Node) -> None:
    node.write_config(TTY)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = node.start("--http-address", f"127.0.0.1:{port}")
        assert proc.popen.wait(DEADLINE) == 1
    assert "not starting:" in proc.log and "address already in use" in proc.log.lower()
    assert "Traceback" not in proc.log


def test_rescans_and_hotplug_events_are_counted_by_cause(node: Node) -> None:
    """A known sequence: start, plug, SIGHUP, config change, unplug, removal grace."""
    mkdev(node.dev / "fuse", major=10, minor=229)  # before start: no event for it
    node.write_config(TTY)
    tty = "smarter-devices/ttyUSB0"

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        proc = node.start("--http-address", "127.0.0.1:0", "--removal-grace", "1s")
        port = await listener_port(proc)

        async def counted(expected: dict[str, float]) -> None:
            async def check() -> bool:
                return await rescans(port) == expected
            await eventually(check, f"counts {expected}; last {await rescans(port)}")

        await counted({"start": 1})
        mkdev(node.dev / "ttyUSB0", major=188)  # one inotify event
        await kubelet.wait_for(lambda: kubelet.healthy(tty) == 2)
        await counted({"start": 1, "hotplug": 1, "events": 1})

        before = len(kubelet.register_requests)
        proc.signal(signal.SIGHUP)
        await kubelet.wait_for(lambda: len(kubelet.register_requests) > before
                               and kubelet.healthy(tty) == 2)
        await counted({"start": 1, "hotplug": 1, "sighup": 1, "events": 1})

        new = node.config.with_name("new.yaml")
        new.write_text(TTY + "- devicematch: ^fuse$\n  nummaxdevices: 3\n")
        os.rename(new, node.config)  # an event in the config dir, not the dev dir
        await kubelet.wait_for(lambda: kubelet.healthy("smarter-devices/fuse") == 3)
        await counted({"start": 1, "hotplug": 1, "sighup": 1, "config": 1, "events": 1})

        (node.dev / "ttyUSB0").unlink()  # one inotify event; the grace timer one walk more
        await kubelet.wait_for(lambda: not kubelet.plugins[tty].streaming)
        await counted({"start": 1, "hotplug": 2, "sighup": 1, "config": 1, "grace": 1,
                       "events": 2})
        await kubelet.stop()

    run(scenario())
    assert "withdrew smarter-devices/ttyUSB0: gone for 1s" in node.procs[0].log


def test_a_socket_that_cannot_be_served_is_retried_and_shown(node: Node) -> None:
    """A stranger's file holds one resource's socket name, so serving it fails. Removing
    the file raises no event the daemon acts on: only its own retry can bring it."""
    mkdev(node.dev / "ttyUSB0", major=188)
    mkdev(node.dev / "ttyUSB1", major=188, minor=1)
    node.write_config(TTY)
    stranger = node.plugins / "smarter-ttyUSB1.sock"

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()  # it deletes every file, as the kubelet does: the stranger comes after
        stranger.write_text("not a socket")
        port = await listener_port(node.start("--http-address", "127.0.0.1:0"))
        await kubelet.wait_for(lambda: kubelet.healthy("smarter-devices/ttyUSB0") == 2)

        async def failing() -> bool:
            status, body = await aget(port, "/readyz")
            _, text = await aget(port, "/metrics")
            return (status == 503 and "changes not applied" in body
                    and "smarter-devices/ttyUSB1" not in kubelet.plugins
                    and metric(text, "rescan_failing") == 1
                    and metric(text, "rescan_failures_total", "", 0) >= 1)
        await eventually(failing, "/readyz and /metrics show the failure")
        _, body = await aget(port, "/readyz")
        assert "ttyUSB1: cannot serve on" in body and "retrying in" in body

        stranger.unlink()
        await kubelet.wait_for(lambda: kubelet.healthy("smarter-devices/ttyUSB1") == 2)

        async def recovered() -> bool:
            _, text = await aget(port, "/metrics")
            return (await aget(port, "/readyz"))[0] == 200 and metric(text, "rescan_failing") == 0
        await eventually(recovered, "/readyz and /metrics recover")
        await kubelet.stop()

    run(scenario())
    assert "changes not applied: ttyUSB1: cannot serve on" in node.procs[0].log

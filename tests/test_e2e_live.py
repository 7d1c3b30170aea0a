"""A live node: hotplug, unplug, directories, bursts, overflow and config reloads.

The daemon runs as a subprocess; devices are real nodes made with mknod; events
are real inotify events. Nothing here sleeps for a fixed time to "let it
settle" or asserts how long a step took: each step waits (conftest.DEADLINE)
for what the kubelet stand-in receives, and a check that something did *not*
happen waits for a later event first. Latency targets are in bench/run.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import DEADLINE, Node, mkdev, needs_root
from kubelet_standin import KubeletStandin
from test_e2e_http import listener_port, rescans

pytestmark = [needs_root, pytest.mark.e2e]

TTY = "- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 2\n"
P = "smarter-devices/"


def run(coro: Coroutine[Any, Any, None], timeout: float = 300) -> None:
    """Run a scenario; ``timeout`` only stops one that hangs (each wait has its own deadline)."""
    asyncio.run(asyncio.wait_for(coro, timeout))


async def start(node: Node, config: str, *extra: str) -> KubeletStandin:
    node.write_config(config)
    kubelet = KubeletStandin(str(node.plugins))
    await kubelet.start()
    node.start(*extra)
    node.procs[-1].wait_log("smarter-device-manager 2.2.0")
    return kubelet


def health(kubelet: KubeletStandin, resource: str) -> set[str]:
    state = kubelet.plugins.get(resource)
    return set(state.devices.values()) if state and state.streaming else set()


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE}s: {what}"
        await asyncio.sleep(0.02)


def test_plug_unplug_and_replug_keep_the_same_ids(node: Node) -> None:
    async def scenario() -> None:
        kubelet = await start(node, TTY)
        mkdev(node.dev / "ttyUSB0", major=188)
        await kubelet.wait_for(lambda: kubelet.healthy(P + "ttyUSB0") == 2)
        ids = sorted(kubelet.plugins[P + "ttyUSB0"].devices)

        (node.dev / "ttyUSB0").unlink()
        await kubelet.wait_for(lambda: health(kubelet, P + "ttyUSB0") == {"Unhealthy"})
        assert kubelet.capacity(P + "ttyUSB0") == 2, "capacity stays while it is gone"

        mkdev(node.dev / "ttyUSB0", major=188)
        await kubelet.wait_for(lambda: kubelet.healthy(P + "ttyUSB0") == 2)
        assert sorted(kubelet.plugins[P + "ttyUSB0"].devices) == ids
        await kubelet.stop()

    run(scenario())


def test_vanished_device_is_withdrawn_after_the_grace(node: Node) -> None:
    mkdev(node.dev / "ttyUSB0")
    mkdev(node.dev / "ttyUSB1")

    async def scenario() -> None:
        kubelet = await start(node, TTY, "--removal-grace", "0.5s")
        await kubelet.wait_for(lambda: kubelet.healthy(P + "ttyUSB1") == 2)
        stream = kubelet.plugins[P + "ttyUSB1"]
        (node.dev / "ttyUSB1").unlink()
        await kubelet.wait_for(lambda: not stream.streaming)
        # First kept for the grace, reported Unhealthy on the same stream; then withdrawn.
        assert [set(u.devices.values()) for u in stream.updates] == [{"Healthy"}, {"Unhealthy"}]
        assert stream.ended == "ok", "withdrawn: the stream ends cleanly"
        assert kubelet.plugins[P + "ttyUSB1"] is stream, "not registered again"
        socket = node.plugins / "smarter-ttyUSB1.sock"
        await until(lambda: not socket.exists(), "its socket is removed")
        assert kubelet.healthy(P + "ttyUSB0") == 2, "others untouched"
        await kubelet.stop()

    run(scenario())
    assert "withdrew smarter-devices/ttyUSB1: gone for 0.5s" in node.procs[0].log


def test_new_subdirectories_and_symlinks_are_followed(node: Node) -> None:
    config = ("- devicematch: ^serial/by-id/\n  nummaxdevices: 1\n"
              "- devicematch: ^bus/usb/\n  nummaxdevices: 1\n")

    async def scenario() -> None:
        kubelet = await start(node, config)
        mkdev(node.dev / "ttyUSB0", major=188)
        by_id = node.dev / "serial" / "by-id"
        by_id.mkdir(parents=True)  # a brand-new directory tree, as udev makes it
        (by_id / "usb-FTDI_A1").symlink_to("../../ttyUSB0")
        name = P + "serial_by-id_usb-FTDI_A1"
        await kubelet.wait_for(lambda: kubelet.healthy(name) == 1)
        spec = (await kubelet.allocate(name, ["0"])).container_responses[0].devices[0]
        assert (spec.container_path, spec.host_path) == (
            "/dev/serial/by-id/usb-FTDI_A1", f"{node.dev}/ttyUSB0")

        deep = node.dev / "bus" / "usb" / "003"
        deep.mkdir(parents=True)
        mkdev(deep / "007", major=189)  # created immediately after the directories
        await kubelet.wait_for(lambda: kubelet.healthy(P + "bus_usb_003_007") == 1)
        await kubelet.stop()

    run(scenario())


def test_directory_resource_follows_nodes_added_and_removed(node: Node) -> None:
    mkdev(node.dev / "snd" / "controlC0", major=116)

    async def scenario() -> None:
        kubelet = await start(node, "- devicematch: ^snd$\n  nummaxdevices: 4\n"
                                    "- devicematch: ^fuse$\n  nummaxdevices: 1\n")
        await kubelet.wait_for(lambda: kubelet.healthy(P + "snd") == 4)

        async def handed() -> list[str]:
            response = await kubelet.allocate(P + "snd", ["0"])
            return sorted(d.container_path for d in response.container_responses[0].devices)

        assert await handed() == ["/dev/snd/controlC0"]
        messages = len(kubelet.plugins[P + "snd"].updates)
        # Allocate lists the directory when it is called: the new node is there at once.
        mkdev(node.dev / "snd" / "pcmC0D0p", major=116, minor=16)
        assert await handed() == ["/dev/snd/controlC0", "/dev/snd/pcmC0D0p"]
        (node.dev / "snd" / "controlC0").unlink()
        assert await handed() == ["/dev/snd/pcmC0D0p"]
        # Barrier: a node elsewhere gets registered, so the rescans for the changes in snd
        # are done; they must not have sent snd's unchanged list again.
        mkdev(node.dev / "fuse", major=10, minor=229)
        await kubelet.wait_for(lambda: kubelet.healthy(P + "fuse") == 1)
        assert len(kubelet.plugins[P + "snd"].updates) == messages, \
            "the advertised list did not change, so no ListAndWatch message"
        await kubelet.stop()

    run(scenario())


def test_flapping_device_settles_on_the_final_state(node: Node) -> None:
    async def scenario() -> None:
        kubelet = await start(node, TTY)
        path = node.dev / "ttyUSB3"
        for _ in range(40):
            mkdev(path, major=188)
            path.unlink()
        mkdev(path, major=188)  # ends plugged in
        await kubelet.wait_for(lambda: kubelet.healthy(P + "ttyUSB3") == 2)
        for _ in range(40):
            path.unlink()
            mkdev(path, major=188)
        path.unlink()  # ends unplugged
        await kubelet.wait_for(lambda: health(kubelet, P + "ttyUSB3") == {"Unhealthy"})
        await kubelet.stop()

    run(scenario())


def test_burst_of_creates_and_deletes_ends_right_with_few_messages(node: Node) -> None:
    count = 300
    for i in range(count):
        mkdev(node.dev / f"ttyUSB{i}", major=188, minor=i % 256)

    async def scenario() -> None:
        kubelet = await start(node, TTY, "--removal-grace", "0")
        first = {P + f"ttyUSB{i}" for i in range(count)}
        await kubelet.wait_for(lambda: all(kubelet.healthy(n) == 2 for n in first), timeout=120)
        before = sum(len(s.updates) for s in kubelet.plugins.values())
        for i in range(count):
            mkdev(node.dev / f"ttyUSB{count + i}", major=188, minor=i % 256)
            (node.dev / f"ttyUSB{i}").unlink()
        want = {P + f"ttyUSB{count + i}" for i in range(count)}

        def settled() -> bool:
            live = {n for n, s in kubelet.plugins.items() if s.streaming}
            return live == want and all(kubelet.healthy(n) == 2 for n in want)

        await kubelet.wait_for(settled, timeout=120)  # the bench measures how fast (target 2 s)
        sent = sum(len(s.updates) for s in kubelet.plugins.values()) - before
        assert sent <= 2 * count, f"{sent} ListAndWatch messages for {count} new resources"
        sockets = {p.name for p in node.plugins.iterdir()} - {"kubelet.sock"}
        assert sockets == {f"smarter-ttyUSB{count + i}.sock" for i in range(count)}, "no ghosts"
        await kubelet.stop()

    run(scenario())


def test_inotify_overflow_triggers_a_full_rescan(node: Node) -> None:
    """Owns fs.inotify.max_queued_events for its duration (restored after)."""
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    old = knob.read_text()
    knob.write_text("16\n")
    try:
        async def scenario() -> None:
            # its inotify instance gets the small queue
            kubelet = await start(node, TTY, "--http-address", "127.0.0.1:0")
            proc = node.procs[0]
            port = await listener_port(proc)
            await eventually(lambda: rescans(port), {"start": 1})
            proc.signal(signal.SIGSTOP)  # it cannot drain its queue while stopped
            try:
                wait_stopped(proc.popen.pid)
                for i in range(60):
                    mkdev(node.dev / f"ttyUSB{i}", major=188, minor=i)
            finally:
                proc.signal(signal.SIGCONT)
            want = [P + f"ttyUSB{i}" for i in range(60)]
            await kubelet.wait_for(lambda: all(kubelet.healthy(n) == 2 for n in want))
            # The queued events and the overflow are read at once: one walk, counted once,
            # as an overflow (not also as hotplug).
            counts = await rescans(port)
            assert counts.pop("events") > 0
            assert counts == {"start": 1, "overflow": 1}
            await kubelet.stop()

        run(scenario())
    finally:
        knob.write_text(old)
    assert "inotify queue overflowed; doing a full rescan" in node.procs[0].log


def wait_stopped(pid: int, timeout: float = DEADLINE) -> None:
    """Until the kernel has really stopped ``pid`` (SIGSTOP is delivered asynchronously)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} not stopped"
        time.sleep(0.005)


async def eventually(value: Callable[[], Awaitable[object]], expected: object,
                     timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while (got := await value()) != expected:
        assert time.monotonic() < deadline, f"{got} is not {expected} within {timeout}s"
        await asyncio.sleep(0.02)


def configmap_swap(config_dir: Path, text: str, generation: int) -> None:
    """Write the config the way the kubelet updates a ConfigMap volume.

    Data lives in a timestamped directory; ``..data`` is a symlink to it,
    replaced atomically by renaming ``..data_tmp``; ``conf.yaml`` is a symlink
    to ``..data/conf.yaml``.
    """
    version = config_dir / f"..2026_11_24_{generation:02d}"
    version.mkdir()
    (version / "conf.yaml").write_text(text)
    tmp = config_dir / "..data_tmp"
    tmp.symlink_to(version.name)
    os.rename(tmp, config_dir / "..data")
    if not (config_dir / "conf.yaml").is_symlink():
        (config_dir / "conf.yaml").symlink_to("..data/conf.yaml")


def test_configmap_update_is_applied_and_untouched_resources_keep_their_stream(node: Node) -> None:
    mkdev(node.dev / "ttyUSB0", major=188)
    mkdev(node.dev / "fuse", major=10, minor=229)
    config_dir = node.config.parent
    configmap_swap(config_dir, TTY, 1)

    async def scenario() -> None:
        kubelet = KubeletStandin(str(node.plugins))
        await kubelet.start()
        node.start()
        await kubelet.wait_for(lambda: kubelet.healthy(P + "ttyUSB0") == 2)
        tty_state = kubelet.plugins[P + "ttyUSB0"]
        registrations = len(kubelet.register_requests)

        configmap_swap(config_dir, TTY + "- devicematch: ^fuse$\n  nummaxdevices: 3\n", 2)
        await kubelet.wait_for(lambda: kubelet.healthy(P + "fuse") == 3)
        assert kubelet.plugins[P + "ttyUSB0"] is tty_state and tty_state.streaming
        assert len(tty_state.updates) == 1, "unchanged resource: same stream, no new message"
        assert len(kubelet.register_requests) == registrations + 1

        # change a count: re-announced on the same stream, same IDs kept where they exist
        configmap_swap(config_dir, TTY.replace("2", "5") + "- devicematch: ^fuse$\n  nummaxdevices: 3\n", 3)
        await kubelet.wait_for(lambda: kubelet.healthy(P + "ttyUSB0") == 5)
        assert kubelet.plugins[P + "ttyUSB0"] is tty_state

        # drop the fuse rule: withdrawn at once, no grace (it did not vanish), and its
        # stream ended by the plugin with status OK, not reset or cut off
        configmap_swap(config_dir, TTY, 4)
        await kubelet.wait_for(lambda: not kubelet.plugins[P + "fuse"].streaming)
        assert kubelet.plugins[P + "fuse"].ended == "ok"
        assert not (node.plugins / "smarter-fuse.sock").exists()
        await kubelet.stop()

    run(scenario())
    assert "withdrew smarter-devices/fuse: no rule matches it any more" in node.procs[0].log


def test_editor_style_rename_and_in_place_write_are_applied(node: Node) -> None:
    mkdev(node.dev / "ttyUSB0", major=188)
    mkdev(node.dev / "fuse", major=10, minor=229)

    async def scenario() -> None:
        kubelet = await start(node, TTY)
        await kubelet.wait_for(lambda: kubelet.healthy(P + "ttyUSB0") == 2)
        swap = node.config.with_name(".conf.yaml.swp")
        swap.write_text(TTY + "- devicematch: ^fuse$\n  nummaxdevices: 1\n")
        os.rename(swap, node.config)
        await kubelet.wait_for(lambda: kubelet.healthy(P + "fuse") == 1)
        with open(node.config, "w") as handle:  # truncate + write in place
            handle.write(TTY + "- devicematch: ^fuse$\n  nummaxdevices: 7\n")
        await kubelet.wait_for(lambda: kubelet.healthy(P + "fuse") == 7)
        await kubelet.stop()

    run(scenario())


def test_invalid_config_is_rejected_and_the_last_good_one_kept(node: Node) -> None:
    mkdev(node.dev / "ttyUSB0", major=188)
    mkdev(node.dev / "fuse", major=10, minor=229)

    async def scenario() -> None:
        kubelet = await start(node, TTY)
        await kubelet.wait_for(lambda: kubelet.healthy(P + "ttyUSB0") == 2)
        stream = kubelet.plugins[P + "ttyUSB0"]
        tmp = node.config.with_name("tmp.yaml")
        tmp.write_text("- devicematch: ^fuse$\n  nummaxdevices: -4\n- devicematc: x\n")
        os.rename(tmp, node.config)
        proc = node.procs[0]
        await asyncio.get_running_loop().run_in_executor(None, proc.wait_log, "rejected")
        # Barrier: a device plugged in after the rejection is registered, so the daemon has
        # settled since; the rejected config must have changed nothing.
        mkdev(node.dev / "ttyUSB1", major=188, minor=1)
        await kubelet.wait_for(lambda: kubelet.healthy(P + "ttyUSB1") == 2)
        assert kubelet.plugins[P + "ttyUSB0"] is stream and stream.streaming
        assert kubelet.healthy(P + "ttyUSB0") == 2
        assert P + "fuse" not in kubelet.plugins
        node.config.write_text("")  # an editor between truncate and write
        await asyncio.get_running_loop().run_in_executor(None, proc.wait_log, "is empty")
        (node.dev / "ttyUSB1").unlink()  # barrier again: settled after the empty file
        await kubelet.wait_for(lambda: health(kubelet, P + "ttyUSB1") == {"Unhealthy"})
        assert kubelet.healthy(P + "ttyUSB0") == 2
        # fixing the file applies it
        tmp.write_text(TTY + "- devicematch: ^fuse$\n  nummaxdevices: 2\n")
        os.rename(tmp, node.config)
        await kubelet.wait_for(lambda: kubelet.healthy(P + "fuse") == 2)
        await kubelet.stop()

    run(scenario())
    log = node.procs[0].log
    assert "still serving the last good config" in log
    assert "conf.yaml:2: rule 1: 'nummaxdevices' is -4" in log
    assert "conf.yaml:3: rule 2: unknown key 'devicematc'; did you mean 'devicematch'?" in log

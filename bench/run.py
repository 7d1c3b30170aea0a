"""Benchmark: the figures the issues name, against the kubelet stand-in.

Not a test: it prints numbers next to their targets and exits 0. The latency
targets live here, not in the test suite, whose tests wait for conditions with
generous deadlines so they pass on a loaded VM or a Raspberry Pi. Needs root
(mknod). Run: ``.venv/bin/python bench/run.py`` (``--quick`` shortens the idle
windows and repetitions for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fakesysfs import FakeSysfs
from kubelet_standin import KubeletStandin

PREFIX = "smarter-devices/"
# The daemon runs as installed: from compiled bytecode (pip and the image compile it). With
# PYTHONDONTWRITEBYTECODE set (as in some shells and CI) every start would compile the
# sources again, and the compiler's transient memory shows in RSS (about 1 MiB here).
DAEMON_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
# 20 resources under the embedded default config, as on a busy Pi.
DEFAULT_DEVICES = [
    "video0", "video1", "video10", "video11", "gpiochip0", "gpiochip1", "gpiomem", "i2c-1",
    "i2c-2", "rtc0", "vchiq", "vcsm-cma", "ttyUSB0", "ttyACM0", "ttyS0", "net/tun", "fuse",
    "spidev0.0", "snd/controlC0", "snd/pcmC0D0p", "dri/card0",
]
DEFAULT_RESOURCES = 20  # snd and dri are one resource each, with nodes inside


def mknod(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o660, os.makedev(1, 3))


def proc_status(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = float(value.split()[0]) / (1024 if key != "Threads" else 1)
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat_file:
        fields = stat_file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def free_port() -> int:
    """A port nobody listens on now (benchmarks of other checkouts may run beside this one)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def report(name: str, value: str, target: str) -> None:
    print(f"  {name:<52} {value:<28} target {target}")


class Node:
    """A temp dev dir + plugin dir + config, a stand-in kubelet and the daemon."""

    def __init__(self, devices: list[str], config: str | None = None, *extra: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sdm-bench-"))
        self.dev = self.root / "dev"
        self.plugins = self.root / "p"
        self.dev.mkdir()
        for device in devices:
            mknod(self.dev / device)
        self.config = self.root / "conf.yaml"
        if config is not None:
            self.config.write_text(config)
        self.extra = list(extra)
        self.kubelet = KubeletStandin(str(self.plugins))
        self.proc: subprocess.Popen[bytes] | None = None
        self.cleanup: list[Path] = [self.root]

    async def start(self, expect: int) -> float:
        await self.kubelet.start()
        t0 = time.monotonic()
        self.spawn()
        await self.kubelet.wait_for(lambda: self.streaming() >= expect, timeout=60)
        return time.monotonic() - t0

    def spawn(self) -> None:
        argv = [sys.executable, "-m", "smarter_device_manager", "serve", "--dev-dir", str(self.dev),
                "--plugin-dir", str(self.plugins), "--log-level", "warning", *self.extra]
        if self.config.exists():
            argv += ["--config", str(self.config)]
        self.proc = subprocess.Popen(argv, env=DAEMON_ENV)

    def terminate(self) -> float:
        """SIGTERM the daemon; seconds until it exited (0)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        took = time.monotonic() - t0
        assert code == 0, code
        self.proc = None
        return took

    def streaming(self) -> int:
        return sum(1 for s in self.kubelet.plugins.values() if s.streaming and s.allocatable)

    async def close(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        await self.kubelet.stop()
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)


async def idle_cpu(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds * 100


async def core(args: argparse.Namespace) -> None:
    print("core daemon (issue 2): default config, 20 matching devices")
    starts = []
    for i in range(args.repeat):
        node = Node(DEFAULT_DEVICES)
        starts.append(await node.start(DEFAULT_RESOURCES))
        if i < args.repeat - 1:
            await node.close()
    report("start -> all 20 registered (median, min-max)",
           f"{statistics.median(starts):.3f}s ({min(starts):.3f}-{max(starts):.3f})",
           "<= 0.2 s (Go original 0.17 s)")
    assert node.proc is not None
    await asyncio.sleep(1.0)
    mem = proc_status(node.proc.pid)
    report("memory steady, 20 resources: VmRSS / VmHWM",
           f"{mem['VmRSS']:.1f} / {mem['VmHWM']:.1f} MiB", "<= 20 MiB (Go original 17.3)")
    report("OS threads", f"{mem['Threads']:.0f}", "(1 = no thread pools)")

    latencies = []
    resource = PREFIX + "video0"
    for i in range(100):  # both ends warm (first calls fill the HPACK tables)
        await node.kubelet.allocate(resource, [str(i % 20)])
    daemon_cpu, own_cpu = cpu_seconds(node.proc.pid), time.process_time()
    for i in range(args.allocations):
        t0 = time.perf_counter()
        await node.kubelet.allocate(resource, [str(i % 20)])
        latencies.append((time.perf_counter() - t0) * 1000)
    daemon_cpu = (cpu_seconds(node.proc.pid) - daemon_cpu) / args.allocations * 1000
    own_cpu = (time.process_time() - own_cpu) / args.allocations * 1000
    report(f"Allocate round trip over {args.allocations} (p50 / p99)",
           f"{pct(latencies, 50):.2f} / {pct(latencies, 99):.2f} ms",
           "p50 <= 0.6, p99 <= 1.2 ms (Go 0.57 / 0.98)")
    report("  CPU per Allocate: daemon / kubelet stand-in (client)",
           f"{daemon_cpu:.3f} / {own_cpu:.3f} ms", "(the round trip is both)")
    cpu = await idle_cpu(node.proc.pid, args.idle)
    report(f"idle CPU over {args.idle:g}s", f"{cpu:.3f} % of one core", "<= 0.1 %")
    mem = proc_status(node.proc.pid)
    report("memory after the allocations and idle: VmRSS / VmHWM",
           f"{mem['VmRSS']:.1f} / {mem['VmHWM']:.1f} MiB", "<= 20 MiB")
    t0 = time.monotonic()
    await node.kubelet.restart()
    await node.kubelet.wait_for(lambda: node.streaming() >= DEFAULT_RESOURCES, timeout=30)
    report("kubelet restart -> all 20 re-registered", f"{time.monotonic() - t0:.3f}s", "<= 1 s")
    took = node.terminate()
    left = sorted(p.name for p in node.plugins.iterdir() if p.name != "kubelet.sock")
    report("SIGTERM -> exited 0, sockets removed", f"{took:.3f}s, {len(left)} left", "<= 2 s, 0 left")
    await node.close()

    node = Node(DEFAULT_DEVICES)
    node.spawn()  # no kubelet yet: it serves and waits
    await asyncio.sleep(1.0)
    t0 = time.monotonic()
    await node.kubelet.start()  # deletes every socket first, as the kubelet does
    await node.kubelet.wait_for(lambda: node.streaming() >= DEFAULT_RESOURCES, timeout=30)
    report("kubelet arrives after the daemon -> all 20 registered",
           f"{time.monotonic() - t0:.3f}s", "<= 1.5 s")
    await node.close()

    port = free_port()
    node = Node(DEFAULT_DEVICES, None, "--http-address", f"127.0.0.1:{port}")
    await node.start(DEFAULT_RESOURCES)
    loop = asyncio.get_running_loop()
    for path in ("/metrics", "/readyz", "/healthz") * 20:
        await loop.run_in_executor(None, http_get, f"http://127.0.0.1:{port}{path}")
    await asyncio.sleep(0.5)
    mem = proc_status(node.proc.pid) if node.proc else {}
    report("with the HTTP listener on, 60 scrapes: VmRSS / VmHWM",
           f"{mem['VmRSS']:.1f} / {mem['VmHWM']:.1f} MiB", "<= 20 MiB")
    await node.close()

    node = Node([f"ttyUSB{i}" for i in range(6)], "- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 1\n")
    await node.start(6)
    restarts = []
    for _ in range(args.repeat):
        t0 = time.monotonic()
        await node.kubelet.restart()
        await node.kubelet.wait_for(lambda: node.streaming() >= 6, timeout=30)
        restarts.append(time.monotonic() - t0)
    report(f"kubelet restart -> 6 resources re-registered (median of {args.repeat})",
           f"{statistics.median(restarts):.3f}s", "(Go original 0.037 s)")
    await node.close()

    many = [f"ttyUSB{i}" for i in range(args.many)]
    node = Node(many, "- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 1\n")
    took = await node.start(args.many)
    assert node.proc is not None
    start_cpu = cpu_seconds(node.proc.pid)  # a new process: its CPU since spawn
    await asyncio.sleep(1.0)
    mem = proc_status(node.proc.pid)
    report(f"{args.many} devices: start -> all registered", f"{took:.2f}s", "<= 3 s")
    report(f"{args.many} devices: daemon CPU from start to all registered", f"{start_cpu:.2f}s",
           "<= 3.4 s (Go original 3.39 s)")
    report(f"{args.many} devices: VmRSS / VmHWM",
           f"{mem['VmRSS']:.1f} / {mem['VmHWM']:.1f} MiB", "<= 40 MiB")
    t0, cpu = time.monotonic(), cpu_seconds(node.proc.pid)
    await node.kubelet.restart()
    await node.kubelet.wait_for(lambda: node.streaming() >= args.many, timeout=60)
    report(f"{args.many} devices: kubelet restart -> all re-registered",
           f"{time.monotonic() - t0:.2f}s", "(Go original: 6.7 s)")
    report(f"{args.many} devices: daemon CPU for that restart",
           f"{cpu_seconds(node.proc.pid) - cpu:.2f}s", "<= 3.7 s (Go original 3.70 s)")
    await node.close()


async def timed_events(node: Node, count: int, act: Callable[[int], None],
                       done: Callable[[int], bool],
                       prepare: Callable[[int], None] | None = None) -> list[float]:
    out = []
    for i in range(count):
        if prepare is not None:
            prepare(i)  # not timed: what exists before the event (a device's sysfs entry)
        t0 = time.monotonic()
        act(i)
        await node.kubelet.wait_for(lambda i=i: done(i), timeout=10)  # type: ignore[misc]
        out.append((time.monotonic() - t0) * 1000)
    return out


async def live(args: argparse.Namespace) -> None:
    print("live node (issue 3): hotplug, config reload, bursts")
    config = "- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 1\n"
    node = Node(["ttyUSB0"], config, "--removal-grace", "3600")
    await node.start(1)

    def plug(i: int) -> None:
        mknod(node.dev / f"ttyUSB{1000 + i}")

    def unplug(i: int) -> None:
        (node.dev / f"ttyUSB{1000 + i}").unlink()

    def healthy(i: int) -> bool:
        return node.kubelet.healthy(f"{PREFIX}ttyUSB{1000 + i}") == 1

    def unhealthy(i: int) -> bool:
        state = node.kubelet.plugins.get(f"{PREFIX}ttyUSB{1000 + i}")
        return state is not None and state.devices.get("0") == "Unhealthy"

    new = await timed_events(node, args.events, plug, healthy)
    report(f"mknod (new device) -> registered + Healthy, {args.events} events",
           f"p50 {pct(new, 50):.1f} / p99 {pct(new, 99):.1f} ms", "p99 <= 100 ms")
    gone = await timed_events(node, args.events, unplug, unhealthy)
    report(f"unplug -> Unhealthy received, {args.events} events",
           f"p50 {pct(gone, 50):.1f} / p99 {pct(gone, 99):.1f} ms", "p99 <= 100 ms")
    back = await timed_events(node, args.events, plug, healthy)
    report(f"re-plug (known device) -> Healthy, {args.events} events",
           f"p50 {pct(back, 50):.1f} / p99 {pct(back, 99):.1f} ms", "p99 <= 100 ms")

    mknod(node.dev / "fuse")
    t0 = time.monotonic()
    tmp = node.config.with_suffix(".tmp")
    tmp.write_text(config + "- devicematch: ^fuse$\n  nummaxdevices: 5\n")
    tmp.rename(node.config)
    await node.kubelet.wait_for(lambda: node.kubelet.healthy(PREFIX + "fuse") == 5, timeout=10)
    report("config edited (rename) -> new resource registered",
           f"{(time.monotonic() - t0) * 1000:.0f} ms", "<= 1 s")
    assert node.proc is not None
    cpu = await idle_cpu(node.proc.pid, args.idle)
    mem = proc_status(node.proc.pid)
    report(f"idle CPU over {args.idle:g}s with all watches", f"{cpu:.3f} %", "<= 0.1 %")
    report(f"memory, {node.streaming()} resources: VmRSS / VmHWM",
           f"{mem['VmRSS']:.1f} / {mem['VmHWM']:.1f} MiB", "<= 24 MiB (20 resources)")
    await node.close()

    # Burst: 1,000 devices exist; within about a second 1,000 new ones appear and the old vanish.
    # Three bursts back and forth: memory after each shows whether anything accumulates.
    node = Node([f"ttyUSB{i}" for i in range(args.many)], config, "--removal-grace", "0")
    await node.start(args.many)
    assert node.proc is not None
    leaving, arriving = list(range(args.many)), list(range(args.many, 2 * args.many))
    for round_ in range(1, 4):
        messages_before = node.kubelet.messages_received
        cpu_before = cpu_seconds(node.proc.pid)
        t0 = time.monotonic()
        for a, b in zip(leaving, arriving, strict=True):
            mknod(node.dev / f"ttyUSB{b}")
            (node.dev / f"ttyUSB{a}").unlink()
        burst = time.monotonic() - t0
        want = {f"{PREFIX}ttyUSB{i}" for i in arriving}

        def settled(want: set[str] = want) -> bool:
            live = {n for n, s in node.kubelet.plugins.items() if s.streaming and s.allocatable}
            return live == want

        await node.kubelet.wait_for(settled, timeout=60)
        took = time.monotonic() - t0
        cpu = cpu_seconds(node.proc.pid) - cpu_before
        messages = node.kubelet.messages_received - messages_before
        sockets = sum(1 for p in node.plugins.iterdir() if p.name != "kubelet.sock")
        await asyncio.sleep(1.0)
        mem = proc_status(node.proc.pid)
        report(f"burst {round_}: {args.many} creates + {args.many} deletes ({burst:.2f}s) -> final",
               f"{took:.2f}s, daemon CPU {cpu:.2f}s", "<= 2 s")
        report("  ListAndWatch messages / sockets left", f"{messages} / {sockets}",
               f"{args.many} / {args.many}")
        report("  memory after it: VmRSS / VmHWM", f"{mem['VmRSS']:.1f} / {mem['VmHWM']:.1f} MiB",
               "flat across bursts")
        leaving, arriving = arriving, leaving
    await node.close()


ATTRIBUTE_RULE = """\
- name: serial-{serial}
  subsystem: tty
  attributes: {idVendor: "0403", idProduct: "6001"}
  nummaxdevices: 1
"""


def fake_sysfs(node: Node) -> FakeSysfs:
    """A fake sysfs tree for ``node``, in memory (/dev/shm) like the kernel's: on ext4 every
    long symlink costs a disk block and reading it back costs more than sysfs does."""
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="sdm-bench-sys-", dir=shm if os.access(shm, os.W_OK) else None))
    node.extra += ["--sys-dir", str(root)]
    node.cleanup.append(root)
    return FakeSysfs(str(root))


async def identity(args: argparse.Namespace) -> None:
    print("devices by what they are (issue 8): sysfs attributes, fake sysfs tree")
    # The same 1,000 adapters (nodes 188:n, a fake sysfs tree) served by a path rule and by an
    # attribute rule, one after the other: what the attributes cost, under the same conditions.
    took: dict[str, float] = {}
    for label, config in (("path rule", "- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 1\n"),
                          ("attribute rule", ATTRIBUTE_RULE)):
        node = Node([], config, "--removal-grace", "3600")
        sysfs = fake_sysfs(node)
        t0 = time.monotonic()
        adapters = sysfs.adapters(args.many)
        built = time.monotonic() - t0
        for device in adapters:
            os.mknod(node.dev / device.node, stat.S_IFCHR | 0o660, os.makedev(device.major, device.minor))
        took[label] = await node.start(args.many)
        await asyncio.sleep(1.0)
        assert node.proc is not None
        mem = proc_status(node.proc.pid)
        await node.close()
    report(f"{args.many} adapters, path rule: start -> all registered", f"{took['path rule']:.2f}s",
           "(the baseline, same tree)")
    report(f"{args.many} adapters, attribute rule: start -> all registered",
           f"{took['attribute rule']:.2f}s (+{(took['attribute rule'] / took['path rule'] - 1) * 100:.0f} %)",
           "<= path rule + 10 %")
    report(f"{args.many} attribute-matched devices: VmRSS / VmHWM",
           f"{mem['VmRSS']:.1f} / {mem['VmHWM']:.1f} MiB", "<= 47.7 MiB (43.4 + 10 %)")
    report("  (fake sysfs tree built in)", f"{built:.2f}s", "")

    node = Node([], ATTRIBUTE_RULE, "--removal-grace", "3600")
    sysfs = fake_sysfs(node)
    for device in sysfs.adapters(20):
        os.mknod(node.dev / device.node, stat.S_IFCHR | 0o660, os.makedev(device.major, device.minor))
    await node.start(20)
    assert node.proc is not None
    cpu = await idle_cpu(node.proc.pid, args.idle)
    mem = proc_status(node.proc.pid)
    report(f"20 attribute-matched devices: idle CPU over {args.idle:g}s", f"{cpu:.3f} %", "0 (<= 0.1 %)")
    report("20 attribute-matched devices: VmRSS / VmHWM", f"{mem['VmRSS']:.1f} / {mem['VmHWM']:.1f} MiB",
           "(default config: <= 22 MiB, core section)")
    def appear(i: int) -> None:  # the kernel adds the sysfs entry before devtmpfs makes the node
        sysfs.ftdi(port=f"1-2.{1 + i % 4}.{1 + i // 4}", node=f"ttyUSB{5000 + i}", minor=5000 + i,
                   serial=f"HP{i:05d}")

    def plug(i: int) -> None:
        os.mknod(node.dev / f"ttyUSB{5000 + i}", stat.S_IFCHR | 0o660, os.makedev(188, 5000 + i))

    def unplug(i: int) -> None:
        os.unlink(node.dev / f"ttyUSB{5000 + i}")

    def healthy(i: int) -> bool:
        return node.kubelet.healthy(f"{PREFIX}serial-HP{i:05d}") == 1

    def unhealthy(i: int) -> bool:
        state = node.kubelet.plugins.get(f"{PREFIX}serial-HP{i:05d}")
        return state is not None and state.devices.get("0") == "Unhealthy"

    new = await timed_events(node, args.events, plug, healthy, prepare=appear)
    report(f"hotplug of an attribute-matched device -> Healthy, {args.events}",
           f"p50 {pct(new, 50):.1f} / p99 {pct(new, 99):.1f} ms", "p99 <= 100 ms")
    report(f"  (attribute-matched devices on the node at the end: {20 + args.events})", "", "")
    gone = await timed_events(node, args.events, unplug, unhealthy)
    report(f"unplug of an attribute-matched device -> Unhealthy, {args.events}",
           f"p50 {pct(gone, 50):.1f} / p99 {pct(gone, 99):.1f} ms", "p99 <= 100 ms")
    await node.close()


async def cdi(args: argparse.Namespace) -> None:
    print("CDI (issue 9): --cdi on, spec in a temp dir")
    spec_dir = Path(tempfile.mkdtemp(prefix="sdm-bench-cdi-"))
    node = Node(DEFAULT_DEVICES, None, "--cdi", "on", "--cdi-dir", str(spec_dir))
    node.cleanup.append(spec_dir)
    await node.start(DEFAULT_RESOURCES)
    assert node.proc is not None
    await asyncio.sleep(1.0)
    mem = proc_status(node.proc.pid)
    report("memory, 20 resources, CDI on: VmRSS / VmHWM", f"{mem['VmRSS']:.1f} / {mem['VmHWM']:.1f} MiB",
           "<= 23 MiB")
    latencies = []
    for i in range(args.allocations):
        t0 = time.perf_counter()
        response = await node.kubelet.allocate(PREFIX + "video0", [str(i % 20)])
        latencies.append((time.perf_counter() - t0) * 1000)
    assert response.container_responses[0].cdi_devices, "CDI names expected"
    report(f"Allocate round trip with CDI names, {args.allocations} (p50 / p99)",
           f"{pct(latencies, 50):.2f} / {pct(latencies, 99):.2f} ms", "p99 <= 5 ms")
    await node.close()

    config = "- devicematch: ^ttyUSB[0-9]+$\n  nummaxdevices: 1\n"
    port = free_port()
    spec_dir = Path(tempfile.mkdtemp(prefix="sdm-bench-cdi-"))
    node = Node([f"ttyUSB{i}" for i in range(args.many)], config, "--removal-grace", "0", "--cdi", "on",
                "--cdi-dir", str(spec_dir), "--http-address", f"127.0.0.1:{port}")
    node.cleanup.append(spec_dir)
    await node.start(args.many)
    assert node.proc is not None
    loop = asyncio.get_running_loop()

    async def writes() -> int:
        text = await loop.run_in_executor(None, http_get, f"http://127.0.0.1:{port}/metrics")
        name = "smarter_device_manager_cdi_spec_writes_total"
        line = next(x for x in text.splitlines() if x.startswith(name))
        return int(float(line.split()[-1]))

    before = await writes()
    t0 = time.monotonic()
    for a, b in zip(range(args.many), range(args.many, 2 * args.many), strict=True):
        mknod(node.dev / f"ttyUSB{b}")
        (node.dev / f"ttyUSB{a}").unlink()
    want = {f"{PREFIX}ttyUSB{i}" for i in range(args.many, 2 * args.many)}

    def settled() -> bool:
        return {n for n, s in node.kubelet.plugins.items() if s.streaming and s.allocatable} == want

    await node.kubelet.wait_for(settled, timeout=60)
    took = time.monotonic() - t0
    report(f"burst {args.many} + {args.many} with CDI on -> final", f"{took:.2f}s", "<= 2 s")
    report("  spec rewrites for the burst", f"{await writes() - before}", "bounded (one per rescan)")
    await node.close()


def config_check(args: argparse.Namespace) -> None:
    """check-config of a large file, as a user runs it (a process), and the composer's share."""
    import yaml

    import smarter_device_manager.config as config_module

    rules = 10_000
    print(f"config (issue 16): check-config of {rules:,} rules")
    text = "".join(f"- {{devicematch: ^dev{i}$, nummaxdevices: 1}}\n" for i in range(rules))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "conf.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        took = []
        for _ in range(args.repeat):
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "smarter_device_manager", "check-config", path],
                           check=True, capture_output=True, env=DAEMON_ENV)
            took.append(time.monotonic() - t0)
    loader = getattr(config_module, "LOADER", yaml.SafeLoader).__name__
    report(f"check-config, {rules:,} rules ({loader}), median", f"{statistics.median(took):.2f}s", "<= 1 s")
    for cls in (yaml.SafeLoader, getattr(yaml, "CSafeLoader", None)):
        if cls is None:
            continue
        config_module.LOADER = cls
        t0 = time.monotonic()
        config_module.parse_config(text, "bench")
        fallback = " (the fallback, as in the image)" if cls is yaml.SafeLoader else ""
        report(f"  parse_config in-process, {cls.__name__}{fallback}", f"{time.monotonic() - t0:.2f}s",
               "<= 1 s" if cls is not yaml.SafeLoader else "-")
    config_module.LOADER = getattr(yaml, loader)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short idle windows, fewer repeats")
    parser.add_argument("--only", choices=["core", "config", "live", "identity", "cdi", "dra"])
    args = parser.parse_args()
    args.repeat = 3 if args.quick else 7
    args.idle = 5.0 if args.quick else 30.0
    args.allocations = 1000
    args.events = 50 if args.quick else 200
    args.many = 1000
    if os.geteuid() != 0:
        print("needs root (mknod)", file=sys.stderr)
        return 2
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    import compileall

    import smarter_device_manager

    compileall.compile_dir(os.path.dirname(smarter_device_manager.__file__), quiet=1)
    if args.only in (None, "core"):
        asyncio.run(core(args))
    if args.only in (None, "config"):
        config_check(args)
    if args.only in (None, "live"):
        asyncio.run(live(args))
    if args.only in (None, "identity"):
        asyncio.run(identity(args))
    if args.only in (None, "cdi"):
        asyncio.run(cdi(args))
    if args.only in (None, "dra"):
        import dra  # bench/dra.py: DRA mode against the API server and kubelet stand-ins

        dra.configure(args)
        asyncio.run(dra.dra(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
